"""Reference parity of anatomy's recurrent and feed-forward LMs against PyTorch.

Same weights, same tokens: build/anatomy (fp32) against torch.nn.LSTM and
torch.nn.RNN (the ecosystem's own cells) and a PyTorch FFNN written here, all
in float64. Checks the first micro-batch's loss and every parameter's gradient
(`anatomy eval --grads`), and the mean loss over two micro-batches, where the
recurrent models carry their state from the first into the second (the
stream batching: row b of micro-batch 2 continues row b of micro-batch 1).

Weights are random (not the init: larger, so that every path matters) and
tokens random, fresh on every run from a seed printed in every failure;
ANATOMY_TEST_SEED=N replays one.
"""
import os
import random
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import parse_eval_loss
from gpt2_ref import write_shard

torch.set_num_threads(2)

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
V, VP = 300, 384          # vocabulary, and as anatomy stores the output rows
B, T, NTOK = 3, 7, 4000   # micro-batch and stream length
LOSS_RTOL = 1e-5          # fp32 anatomy against float64 torch
GRAD_RTOL = 1e-5          # per tensor, relative L2
GRADS_RE = re.compile(r"^grads \S+ loss (\S+)", re.M)


def seedmsg():
    return f"(ANATOMY_TEST_SEED={SEED})"


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / max(b.norm().item(), 1e-30)).item()


def random_checkpoint(anatomy, tmp, model_args, data, rng):
    """Our layout and metadata from a one-step run at lr 0, weights replaced by
    random ones (padded output rows stay zero). Returns (path, weights)."""
    out = os.path.join(tmp, "run")
    anatomy("train", *model_args, "--data", data, "--batch", B, "--seq", T, "--steps", 1,
            "--lr", 0, "--out", out, "--threads", 1)
    src = os.path.join(out, "step_000001.safetensors")
    with safe_open(src, "pt") as f:  # the weights change: their checksums are left out
        meta = {k: v for k, v in f.metadata().items() if k != "crc32c"}
    tensors = load_file(src)
    w = {}
    for name, t in tensors.items():
        if name.startswith(("adamw.", "train.")):
            continue
        r = torch.as_tensor(rng.normal(0, 0.4, tuple(t.shape)), dtype=torch.float32)
        if t.shape[0] == VP and name.split(".")[0] in ("decoder", "out", "direct"):
            r[V:] = 0
        w[name] = r
    path = os.path.join(tmp, "random.safetensors")
    save_file(w, path, metadata=meta)
    return path, {k: v.double() for k, v in w.items()}


def anatomy_eval(anatomy, ckpt, data, tmp):
    """Loss and gradients of micro-batch 1, mean loss of micro-batches 1 and 2."""
    g = os.path.join(tmp, "grads.safetensors")
    out = anatomy("eval", "--init", ckpt, "--data", data, "--batch", B, "--seq", T,
                  "--batches", 2, "--grads", g, "--threads", 1)
    first = float(GRADS_RE.search(out).group(1))
    return first, parse_eval_loss(out), {k: v.double() for k, v in load_file(g).items()}


def stream_batches(tokens):
    """Our recurrent models' batches: B streams of K chunks of T tokens; row b
    of micro-batch k is chunk k of stream b (targets one ahead)."""
    K = (len(tokens) - 1) // T // B
    out = []
    for k in range(2):
        rows = [tokens[(b * K + k) * T:(b * K + k) * T + T + 1] for b in range(B)]
        x = torch.as_tensor(np.stack(rows).astype("int64"))
        out.append((x[:, :-1], x[:, 1:]))
    return out


def plain_batches(tokens):
    """The plain token-shard batches (FFNN, GPT-2): B*T consecutive tokens."""
    out = []
    for k in range(2):
        s = k * B * T
        x = torch.as_tensor(tokens[s:s + B * T + 1].astype("int64"))
        out.append((x[:-1].view(B, T), x[1:].view(B, T)))
    return out


def ce(logits, y):
    return F.cross_entropy(logits[..., :V].reshape(-1, V), y.reshape(-1))


def check(family, ours, ref_first, ref_two, params):
    first, two, grads = ours
    assert abs(first - ref_first) <= LOSS_RTOL * abs(ref_first), \
        f"{family} loss {first} vs torch {ref_first} {seedmsg()}"
    assert abs(two - ref_two) <= max(LOSS_RTOL * abs(ref_two), 1e-6), \
        f"{family} two-batch loss {two} vs torch {ref_two} {seedmsg()}"
    assert set(grads) == set(params), f"{sorted(grads)} vs {sorted(params)}"
    for name, p in params.items():
        e = rel_l2(grads[name], p.grad)
        assert e < GRAD_RTOL, f"{family} d{name}: rel L2 {e:.3g} {seedmsg()}"


@pytest.mark.parametrize("family", ["lstm", "rnn"])
def test_recurrent_matches_torch(anatomy, tmp_path, family):
    rng = np.random.default_rng(SEED + (family == "rnn"))
    tokens = rng.integers(0, V, NTOK)
    data = str(tmp_path / "tokens.bin")
    write_shard(data, tokens)
    H, L = 24, 2
    ckpt, w = random_checkpoint(anatomy, str(tmp_path),
                                ["--preset", f"{family}-tiny", "--vocab-size", V, "--hidden", H,
                                 "--layers", L, "--eot", -1], data, rng)
    ours = anatomy_eval(anatomy, ckpt, data, str(tmp_path))

    C = w["encoder.weight"].shape[1]
    if family == "lstm":
        cell = nn.LSTM(C, H, L, batch_first=True).double()
    else:
        cell = nn.RNN(C, H, L, nonlinearity="tanh", batch_first=True).double()
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(w["rnn." + name])
    emb = w["encoder.weight"].clone().requires_grad_()
    dw = w["decoder.weight"].clone().requires_grad_()
    db = w["decoder.bias"].clone().requires_grad_()

    def run(x, state):
        y, state = cell(F.embedding(x, emb), state)
        return y @ dw.T + db, state

    (x1, y1), (x2, y2) = stream_batches(tokens)
    logits, state = run(x1, None)
    loss1 = ce(logits, y1)
    loss1.backward()
    with torch.no_grad():  # the state enters micro-batch 2 as a constant
        logits2, _ = run(x2, state)
        loss2 = ce(logits2, y2)
    params = {"encoder.weight": emb, "decoder.weight": dw, "decoder.bias": db}
    params.update({"rnn." + n: p for n, p in cell.named_parameters()})
    check(family, ours, loss1.item(), (loss1.item() + loss2.item()) / 2, params)


@pytest.mark.parametrize("direct", [0, 1])
def test_ffnn_matches_torch(anatomy, tmp_path, direct):
    rng = np.random.default_rng(SEED + 2 + direct)
    tokens = rng.integers(0, V, NTOK)
    data = str(tmp_path / "tokens.bin")
    write_shard(data, tokens)
    n, H = 3, 20
    args = ["--preset", "ffnn-tiny", "--vocab-size", V, "--window", n, "--hidden", H]
    ckpt, w = random_checkpoint(anatomy, str(tmp_path), args + (["--direct"] if direct else []),
                                data, rng)
    ours = anatomy_eval(anatomy, ckpt, data, str(tmp_path))

    params = {k: v.clone().requires_grad_() for k, v in w.items()}
    C = w["embed.weight"].shape[1]

    def run(x):
        # window of position t: tokens t-n+1 .. t, zero vectors before the row's start
        e = F.embedding(x, params["embed.weight"])                  # [B,T,C]
        e = F.pad(e, (0, 0, n - 1, 0))                              # [B,T+n-1,C]
        win = torch.cat([e[:, k:k + T] for k in range(n)], dim=-1)  # [B,T,nC]
        assert win.shape[-1] == n * C
        h = torch.tanh(win @ params["hidden.weight"].T + params["hidden.bias"])
        logits = h @ params["out.weight"].T + params["out.bias"]
        if direct:
            logits = logits + win @ params["direct.weight"].T
        return logits

    (x1, y1), (x2, y2) = plain_batches(tokens)
    loss1 = ce(run(x1), y1)
    loss1.backward()
    with torch.no_grad():
        loss2 = ce(run(x2), y2)
    check("ffnn", ours, loss1.item(), (loss1.item() + loss2.item()) / 2, params)


@pytest.mark.parametrize("args,want", [
    (["--preset", "ffnn-small", "--window", 5], r"^context: a fixed window of the previous 5 tokens"),
    (["--preset", "lstm-small"], r"^context: unbounded: .*gradients are truncated at the BPTT "
                                 r"length, --seq tokens"),
    (["--preset", "rnn-tiny", "--layers", 3], r"^context: unbounded: the state \(3 x 32\)"),
])
def test_info_states_the_context(anatomy, args, want):
    """`anatomy info` says what context each model sees (the paper's point)."""
    out = anatomy("info", *args)
    assert re.search(want, out, re.M), out
