"""Reference parity of the time-series families (patchts, tsgpt) against an
independent float64 PyTorch implementation written here from the equations.

anatomy trains one step at learning rate 0 (so its checkpoint holds its own
initial weights), then `anatomy eval --split test --batches 1 --grads FILE`
prints the loss and metrics of the first test micro-batch and writes the
gradient of its loss by parameter name. This file re-reads the CSV itself
(numpy), normalises it with the training split's statistics, cuts the same
windows, runs the same model in float64 on the checkpoint's weights and
compares: loss and mse/mae to 1e-5 relative, gradients to 1e-5 relative L2
over all parameters (and 1e-4 for each tensor). patchts is compared under
each training loss (--loss mse, mae, huber): the reference scores the
de-normalised forecast with torch.nn.functional's mse_loss, l1_loss and
huber_loss, and checks that this equals the loss op's form (each row's
error in its RevIN units, weighted by sd^2) that anatomy computes.

The CSV is fresh random data on every run, from a seed printed in every
failure message; ANATOMY_TEST_SEED=N replays one.
"""
import math
import os
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

torch.set_num_threads(2)

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
ROWS, CH = 400, 3            # a "custom" CSV: 70% / 10% / 20% splits
B = 4                        # windows per micro-batch
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5             # all parameters together
TENSOR_RTOL = 1e-4           # each tensor


def seedmsg():
    return f"(ANATOMY_TEST_SEED={SEED})"


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def rel_l2(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return ((a - b).norm() / max(b.norm().item(), 1e-30)).item()


def write_csv(path, rng):
    """Channels with level, daily cycle and noise, like sensor series."""
    t = np.arange(ROWS)
    with open(path, "w") as f:
        f.write("date," + ",".join(f"c{c}" for c in range(CH)) + "\n")
        cols = [rng.normal() * 5
                + rng.uniform(0.5, 3) * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6))
                + rng.normal(0, 0.5, ROWS) for _ in range(CH)]
        for r in range(ROWS):
            f.write(f"2020-01-{1 + r // 24:02d} {r % 24:02d}:00:00,"
                    + ",".join(f"{cols[c][r]:.7f}" for c in range(CH)) + "\n")


def windows(path, lookback, horizon, split, first_n):
    """The first first_n windows of a split as anatomy cuts them: x [n, CH, lookback],
    y [n, CH, horizon], float32 values normalised by training statistics."""
    raw = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, CH + 1)).astype(np.float32)
    n = raw.shape[0]
    b1, b3 = int(n * 0.7), n - int(n * 0.2)
    borders = [0, b1, b3, n]
    train = raw[:b1].astype(np.float64)
    mean, sd = train.mean(0), train.std(0)
    norm = ((raw.astype(np.float64) - mean) / sd).astype(np.float32)
    start = max(borders[split] - lookback, 0)
    xs, ys = [], []
    for w in range(first_n):
        s = start + w
        xs.append(norm[s:s + lookback].T)
        ys.append(norm[s + lookback:s + lookback + horizon].T)
    return np.stack(xs), np.stack(ys)


# ---- the reference models (float64, functional, parameters by name) ----

def layernorm(x, g, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * g + b


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def linear(x, p, name, bias=True):
    y = x @ p[name + ".weight"].T
    return y + p[name + ".bias"] if bias else y


def block(x, p, pre, NH, causal, post_ln=False):
    """Pre-LN: x + f(LN(x)) per sublayer; post-LN (PatchTST's order): LN(x + f(x))."""
    N, T, C = x.shape
    hs = C // NH

    def attn(h):
        qkv = linear(h, p, pre + "attn.c_attn")
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(N, T, NH, hs).transpose(1, 2)
                   for i in range(3))
        s = q @ k.transpose(-1, -2) / math.sqrt(hs)
        if causal:
            s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(N, T, C)
        return linear(a, p, pre + "attn.c_proj")

    def mlp(h):
        return linear(gelu(linear(h, p, pre + "mlp.c_fc")), p, pre + "mlp.c_proj")

    def ln(h, i):
        return layernorm(h, p[pre + f"ln_{i}.weight"], p[pre + f"ln_{i}.bias"])

    if post_ln:
        x = ln(x + attn(x), 1)
        return ln(x + mlp(x), 2)
    x = x + attn(ln(x, 1))
    return x + mlp(ln(x, 2))


def stack(x, p, L, NH, causal, post_ln=False):
    for l in range(L):
        x = block(x, p, f"h.{l}.", NH, causal, post_ln)
    return x if post_ln else layernorm(x, p["ln_f.weight"], p["ln_f.bias"])


def regression_loss(forecast, y, loss, delta):
    """PyTorch's own loss functions, mean over every element."""
    if loss == "mae":
        return F.l1_loss(forecast, y)
    if loss == "huber":
        return F.huber_loss(forecast, y, delta=delta)
    return F.mse_loss(forecast, y)


def row_unit_loss(f, t, sd, loss, delta):
    """The same loss as anatomy's regression_loss op computes it: each row's
    error e = f - t in RevIN units (t = (y - mu) / sd), scored as l(sd e) /
    sd^2 (MAE: |e| / sd; Huber: with delta / sd), then weighted by sd^2 and
    averaged (reduction='none', then the per-row weights)."""
    if loss == "mae":
        per = F.l1_loss(f, t, reduction="none") / sd
    elif loss == "huber":
        per = torch.stack([F.huber_loss(f[r], t[r], reduction="none", delta=(delta / sd[r]).item())
                           for r in range(f.shape[0])])
    else:
        per = F.mse_loss(f, t, reduction="none")
    return (per * sd ** 2).mean()


def revin_patches(x, cfg):
    """RevIN and patching of a batch x [n, ch, lookback] (numpy): the rows'
    mean and deviation [n*ch, 1] and their normalised patches [n*ch, NP, P]
    (end padded by `stride` copies of the last value when cfg["pad"])."""
    Lb, P, S = cfg["lookback"], cfg["patch"], cfg["stride"]
    x = torch.from_numpy(x).double()
    n, ch, _ = x.shape
    xr = x.reshape(n * ch, Lb)
    mu = xr.mean(-1, keepdim=True)
    sd = torch.sqrt(((xr - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
    xn = (xr - mu) / sd
    if cfg["pad"]:
        xn = torch.cat([xn, xn[:, -1:].expand(-1, S)], 1)
    return mu, sd, xn.unfold(1, P, S)


def patchts_ref(p, x, y, cfg, loss="mse", delta=1.0):
    """Loss, forecast: RevIN, patches (end padded by `stride` copies of the last
    value), patch embedding + positions, encoder, flatten + head, de-normalise,
    then the training loss of the forecast."""
    L, NH = cfg["L"], cfg["NH"]
    n, ch, _ = x.shape
    y = torch.from_numpy(y).double()
    mu, sd, patches = revin_patches(x, cfg)            # patches [rows, NP, P]
    e = linear(patches, p, "patch_embed") + p["pos_embed"]
    z = stack(e, p, L, NH, causal=False, post_ln=cfg["post_ln"])
    f = linear(z.reshape(n * ch, -1), p, "head")       # [rows, H]
    forecast = (f * sd + mu).reshape(n, ch, -1)
    ref = regression_loss(forecast, y, loss, delta)
    op_form = row_unit_loss(f, (y.reshape(n * ch, -1) - mu) / sd, sd, loss, delta)
    assert rel(op_form.item(), ref.item()) < 1e-12, (loss, op_form.item(), ref.item())
    return ref, forecast


def tsgpt_tokens(v, scale, bins):
    u = (v / scale + 8.0) / 16.0 * bins
    return np.clip(np.floor(u), 0, bins - 1).astype(np.int64)


def tsgpt_ref(p, x, y, cfg):
    Lb, H, bins, L, NH = cfg["lookback"], cfg["horizon"], cfg["bins"], cfg["L"], cfg["NH"]
    n, ch, _ = x.shape
    xr = x.reshape(n * ch, Lb).astype(np.float64)
    yr = y.reshape(n * ch, H).astype(np.float64)
    scale = np.abs(xr).mean(1, keepdims=True)
    scale = np.where(scale > 1e-6, scale, 1.0)
    tok = np.concatenate([tsgpt_tokens(xr, scale, bins), tsgpt_tokens(yr, scale, bins)], 1)
    inp, tgt = torch.from_numpy(tok[:, :-1]), torch.from_numpy(tok[:, 1:])
    T = inp.shape[1]
    wte = p["wte.weight"]
    h = wte[inp] + p["wpe.weight"][:T]
    z = stack(h, p, L, NH, causal=True)
    logits = (z @ wte.T)[..., :bins]
    return F.cross_entropy(logits.reshape(-1, bins), tgt.reshape(-1)), None


# ---- running anatomy ----

METRIC_RE = re.compile(r"^(loss|mse|mae)\s+(\S+)\s*$")


def eval_figures(out):
    vals = {m.group(1): float(m.group(2)) for m in map(METRIC_RE.match, out.splitlines()) if m}
    assert "loss" in vals, f"no 'loss' line in eval output:\n{out}"
    return vals


def run_family(anatomy, tmp_path, model, opts):
    rng = np.random.default_rng(SEED)
    csv = str(tmp_path / "series.csv")
    write_csv(csv, rng)
    out = tmp_path / "run"
    args = ["--model", model, "--data", csv, "--batch", B, "--seed", SEED % 100000] + opts
    anatomy("train", *args, "--steps", 1, "--lr", 0, "--out", out)
    ckpts = sorted(out.glob("step_*.safetensors"))
    assert ckpts, f"no checkpoint in {out} {seedmsg()}"
    grads = tmp_path / "grads.safetensors"
    text = anatomy("eval", "--init", ckpts[-1], "--data", csv, "--split", "test",
                   "--batch", B, "--batches", 1, "--grads", grads, "--device", "cpu")
    with safe_open(str(ckpts[-1]), "pt") as f:
        meta = f.metadata()
    assert meta.get("family") == model, f"checkpoint family {meta.get('family')} {seedmsg()}"
    params = {k: v.double().requires_grad_(True) for k, v in load_file(str(ckpts[-1])).items()
              if k in load_file(str(grads))}
    return csv, eval_figures(text), params, load_file(str(grads)), meta


def compare(params, loss_ref, figures, grads, what):
    got = figures["loss"]
    assert rel(got, loss_ref.item()) < LOSS_RTOL, \
        f"{what} loss {got} vs reference {loss_ref.item()} {seedmsg()}"
    loss_ref.backward()
    names = sorted(grads)
    ours = torch.cat([grads[k].double().flatten() for k in names])
    ref = torch.cat([params[k].grad.flatten() for k in names])
    e = rel_l2(ours, ref)
    assert e < GRAD_RTOL, f"{what} gradients: rel L2 {e:.3g} {seedmsg()}"
    for k in names:
        if params[k].grad.norm() > 1e-6 * ref.norm():
            ek = rel_l2(grads[k], params[k].grad)
            assert ek < TENSOR_RTOL, f"{what} gradient of {k}: rel L2 {ek:.3g} {seedmsg()}"


@pytest.mark.parametrize("post_ln,loss", [(0, "mse"), (1, "mse"), (1, "mae"), (0, "huber"),
                                          (1, "huber")])
def test_patchts_parity(anatomy, tmp_path, post_ln, loss):
    cfg = dict(lookback=24, horizon=8, patch=6, stride=3, pad=1, L=2, NH=2, C=16,
               post_ln=post_ln)
    # Huber's delta from the seed, in the errors' range: both branches occur
    delta = round(0.3 + 0.7 * random.Random(SEED).random(), 6)
    opts = ["--preset", "patchts-tiny", "--channels", CH, "--lookback", 24, "--horizon", 8,
            "--patch", 6, "--stride", 3, "--layers", 2, "--heads", 2, "--width", 16,
            "--post-ln", post_ln, "--loss", loss] + (["--huber-delta", delta]
                                                     if loss == "huber" else [])
    csv, fig, params, grads, meta = run_family(anatomy, tmp_path, "patchts", opts)
    assert int(meta["pad"]) == cfg["pad"], f"pad {meta['pad']}"
    assert int(meta["post_ln"]) == post_ln, f"post_ln {meta['post_ln']}"
    assert meta["regression_loss"] == loss, f"regression_loss {meta.get('regression_loss')}"
    assert set(grads) == {"patch_embed.weight", "patch_embed.bias", "pos_embed", "head.weight",
                          "head.bias"} | ({"ln_f.weight", "ln_f.bias"} if not post_ln else set()) | {
        f"h.{l}.{leaf}" for l in range(2) for leaf in (
            "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
            "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
            "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")}
    x, y = windows(csv, 24, 8, 2, B)
    loss_ref, forecast = patchts_ref(params, x, y, cfg, loss, delta)
    yt = torch.from_numpy(y).double()
    if loss == "huber":
        err = (forecast - yt).abs()
        assert (err < delta).any() and (err > delta).any(), \
            f"errors all on one side of delta {delta} {seedmsg()}"
    mse = ((forecast - yt) ** 2).mean().item()
    mae = (forecast - yt).abs().mean().item()
    assert rel(fig["mse"], mse) < LOSS_RTOL, f"mse {fig['mse']} vs {mse} {seedmsg()}"
    assert rel(fig["mae"], mae) < LOSS_RTOL, f"mae {fig['mae']} vs {mae} {seedmsg()}"
    compare(params, loss_ref, fig, grads, f"patchts {loss}" + (" post-LN" if post_ln else ""))


def test_tsgpt_parity(anatomy, tmp_path):
    cfg = dict(lookback=16, horizon=6, bins=32, L=2, NH=2, C=16)
    opts = ["--preset", "tsgpt-tiny", "--channels", CH, "--lookback", 16, "--horizon", 6,
            "--bins", 32, "--samples", 3, "--layers", 2, "--heads", 2, "--width", 16]
    csv, fig, params, grads, meta = run_family(anatomy, tmp_path, "tsgpt", opts)
    x, y = windows(csv, 16, 6, 2, B)
    loss, _ = tsgpt_ref(params, x, y, cfg)
    assert "mse" in fig and "mae" in fig and math.isfinite(fig["mse"]), fig
    compare(params, loss, fig, grads, "tsgpt")
