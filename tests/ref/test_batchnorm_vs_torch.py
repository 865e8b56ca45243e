"""patchts --norm batch against PyTorch's own torch.nn.BatchNorm1d, placed as
PatchTST places it: Transpose(1, 2), BatchNorm1d(d_model), Transpose(1, 2)
after each residual add of the post-LN blocks, so that its statistics run
over every token row of the batch (windows x channels x patches).

anatomy trains two steps at learning rate 0 without shuffling (its weights
stay the initial ones; the two micro-batches are the first 2B training
windows in order) and prints each step's training loss; its checkpoint holds
the running statistics after those two training forwards. The float64
reference (the rest of the model is tests/ref/test_patchts_parity.py's)
runs the same two batches through BatchNorm1d modules in training mode and
must give the same two losses and the same running mean and variance. Then
`anatomy eval --grads` (an evaluation forward: running statistics) on the
first test micro-batch must give the reference's loss and gradients with
the modules in eval mode, every BatchNorm1d weight and bias included.

The CSV is fresh random data on every run (ANATOMY_TEST_SEED=N replays
one, as the parity file it borrows from)."""
import re

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import test_patchts_parity as pp

CFG = dict(lookback=24, horizon=8, patch=6, stride=3, pad=1, L=2, NH=2, C=16)
OPTS = ["--preset", "patchts-tiny", "--channels", pp.CH, "--lookback", 24, "--horizon", 8,
        "--patch", 6, "--stride", 3, "--layers", 2, "--heads", 2, "--width", 16,
        "--post-ln", 1, "--norm", "batch"]
STEP = re.compile(r"^step\s+(\d+)/2 \| loss (\S+)", re.M)
STAT_RTOL = 1e-5


def modules(p):
    """One BatchNorm1d per norm of each block, its weight and bias from p."""
    bns = {}
    for l in range(CFG["L"]):
        for k in (1, 2):
            m = torch.nn.BatchNorm1d(CFG["C"], eps=1e-5, momentum=0.1, dtype=torch.float64)
            with torch.no_grad():
                m.weight.copy_(p[f"h.{l}.bn_{k}.weight"])
                m.bias.copy_(p[f"h.{l}.bn_{k}.bias"])
            bns[f"h.{l}.bn_{k}"] = m
    return bns


def block(x, p, pre, bns):
    """PatchTST's post-norm block: norm(x + attn(x)), then norm(x + mlp(x))."""
    N, T, C = x.shape
    NH, hs = CFG["NH"], C // CFG["NH"]

    def attn(h):
        qkv = pp.linear(h, p, pre + "attn.c_attn")
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(N, T, NH, hs).transpose(1, 2)
                   for i in range(3))
        a = torch.softmax(q @ k.transpose(-1, -2) / hs ** 0.5, -1) @ v
        return pp.linear(a.transpose(1, 2).reshape(N, T, C), p, pre + "attn.c_proj")

    def mlp(h):
        return pp.linear(pp.gelu(pp.linear(h, p, pre + "mlp.c_fc")), p, pre + "mlp.c_proj")

    def norm(h, k):  # [rows, patches, C] -> BatchNorm1d over C, as PatchTST's Transpose
        return bns[pre + f"bn_{k}"](h.transpose(1, 2)).transpose(1, 2)

    x = norm(x + attn(x), 1)
    return norm(x + mlp(x), 2)


def forward(p, bns, x, y):
    """mse of the de-normalised forecast: RevIN, patches, embedding, blocks, head."""
    n, ch, _ = x.shape
    y = torch.from_numpy(y).double()
    mu, sd, patches = pp.revin_patches(x, CFG)
    z = pp.linear(patches, p, "patch_embed") + p["pos_embed"]
    for l in range(CFG["L"]):
        z = block(z, p, f"h.{l}.", bns)
    f = pp.linear(z.reshape(n * ch, -1), p, "head")
    return F.mse_loss((f * sd + mu).reshape(n, ch, -1), y)


def test_batchnorm_matches_torch(anatomy, tmp_path):
    rng = np.random.default_rng(pp.SEED)
    csv = str(tmp_path / "series.csv")
    pp.write_csv(csv, rng)
    out = tmp_path / "run"
    B = pp.B
    text = anatomy("train", "--model", "patchts", *OPTS, "--data", csv, "--batch", B,
                   "--steps", 2, "--lr", 0, "--seed", pp.SEED % 100000, "--out", out)
    losses = [float(v) for _, v in STEP.findall(text)]
    assert len(losses) == 2, text
    ck = out / "step_000002.safetensors"
    saved = load_file(str(ck))
    p = {k: v.double().requires_grad_(True) for k, v in saved.items()
         if not k.startswith("adamw.") and "running_" not in k}
    bns = modules(p)
    # training mode: the batch's statistics, the running ones updated per forward
    x, y = pp.windows(csv, CFG["lookback"], CFG["horizon"], 0, 2 * B)
    for step in range(2):
        ref = forward(p, bns, x[step * B:(step + 1) * B], y[step * B:(step + 1) * B]).item()
        # the log prints 6 decimals
        assert abs(losses[step] - ref) <= 1e-5 * ref + 1e-6, \
            f"step {step + 1} loss {losses[step]} vs torch {ref} {pp.seedmsg()}"
    for name, m in bns.items():
        mean, var = saved[f"{name}.running_mean"].double(), saved[f"{name}.running_var"].double()
        if name == "h.0.bn_1":  # the embeddings' statistics are far from torch's start
            assert (m.running_mean.abs().max() > 1e-3 and
                    (m.running_var - 1).abs().max() > 1e-3), (name, m.running_mean, m.running_var)
        e = pp.rel_l2(var, m.running_var)
        assert e < STAT_RTOL, f"{name}.running_var: rel L2 {e:.3g} {pp.seedmsg()}"
        # the mean's error in units of the feature's spread (bn_2's mean is near 0:
        # the input's rounding would dominate a relative error)
        e = ((mean - m.running_mean).norm() / m.running_var.sqrt().norm()).item()
        assert e < STAT_RTOL, f"{name}.running_mean: error {e:.3g} of the std {pp.seedmsg()}"
    # evaluation: the running statistics saved, loss and every gradient
    grads_path = tmp_path / "grads.safetensors"
    fig = pp.eval_figures(anatomy("eval", "--init", ck, "--data", csv, "--split", "test",
                                  "--batch", B, "--batches", 1, "--grads", grads_path,
                                  "--device", "cpu"))
    grads = load_file(str(grads_path))
    for name, m in bns.items():
        with torch.no_grad():
            m.running_mean.copy_(saved[f"{name}.running_mean"].double())
            m.running_var.copy_(saved[f"{name}.running_var"].double())
        m.eval()
    x, y = pp.windows(csv, CFG["lookback"], CFG["horizon"], 2, B)
    loss = forward(p, bns, x, y)
    assert pp.rel(fig["loss"], loss.item()) < pp.LOSS_RTOL, \
        f"eval loss {fig['loss']} vs torch {loss.item()} {pp.seedmsg()}"
    loss.backward()
    ref = {k: v.grad for k, v in p.items() if k in grads}
    for name, m in bns.items():
        ref[f"{name}.weight"], ref[f"{name}.bias"] = m.weight.grad, m.bias.grad
    assert set(ref) == set(grads), sorted(set(ref) ^ set(grads))
    names = sorted(grads)
    e = pp.rel_l2(torch.cat([grads[k].double().flatten() for k in names]),
                  torch.cat([ref[k].flatten() for k in names]))
    assert e < pp.GRAD_RTOL, f"eval gradients: rel L2 {e:.3g} {pp.seedmsg()}"
    for k in names:
        ek = pp.rel_l2(grads[k], ref[k])
        assert ek < pp.TENSOR_RTOL, f"gradient of {k}: rel L2 {ek:.3g} {pp.seedmsg()}"
