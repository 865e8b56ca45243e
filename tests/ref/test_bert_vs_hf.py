"""bench/bert_vs_hf.py at a small scale: anatomy's BERT and Hugging Face's
BertForMaskedLM, given the same weights, masked batches and AdamW steps,
train alike (every step's loss within 1e-4 relative: fp32 on both sides) and
score the same validation batches alike. That holds only if bench/mlm_ref.py
rebuilds data/mlm.c's sequences and masks exactly, for the run's seed and the
validation seed. The figures' arithmetic (masked mean cross-entropy, argmax
accuracy) is checked against numpy on random logits. Fresh data every run
(seed in the failure message)."""
import os
import random
import re
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench"))
import mlm_ref  # noqa: E402
from conftest import anatomy_bin  # noqa: E402

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))


def write_shard(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [mlm_ref.SHARD_MAGIC, mlm_ref.SHARD_VERSION, len(tokens)]
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes())


def test_figures_against_numpy():
    rng = np.random.default_rng(SEED)
    logits = rng.standard_normal((3, 7, 11))
    targets = np.where(rng.random((3, 7)) < 0.4, rng.integers(0, 11, (3, 7)), -1)
    targets[0, 0] = 5
    lse = np.log(np.exp(logits).sum(-1))
    nll = lse - np.take_along_axis(logits, np.maximum(targets, 0)[..., None], -1)[..., 0]
    keep = targets >= 0
    got = float(mlm_ref.masked_loss_sum(torch.from_numpy(logits), targets))
    assert abs(got - nll[keep].sum()) < 1e-9 * nll[keep].sum(), (got, nll[keep].sum(), SEED)
    c, n = mlm_ref.masked_correct(torch.from_numpy(logits), targets)
    assert n == keep.sum() and c == (logits.argmax(-1)[keep] == targets[keep]).sum(), SEED


def test_masks_follow_berts_rules():
    """15% of each row's tokenizer ids chosen (stochastic rounding), of those
    about 80% [MASK]; specials never; the batch a pure function of (seed, g)."""
    voc = mlm_ref.Vocab(60)
    rng = np.random.default_rng(SEED)
    stream = rng.integers(0, 56, 5000)
    chosen = masked = 0
    for g in range(40):
        tokens, targets = mlm_ref.make_batch(stream, voc, SEED, g, 8, 34)
        again, t2 = mlm_ref.make_batch(stream, voc, SEED, g, 8, 34)
        assert (tokens == again).all() and (targets == t2).all()
        assert (targets[:, 0] < 0).all() and (targets[:, -1] < 0).all()
        chosen += int((targets >= 0).sum())
        masked += int((tokens == voc.mask).sum())
    assert abs(chosen / (40 * 8 * 32) - 0.15) < 0.01, (chosen, SEED)
    assert abs(masked / chosen - 0.8) < 0.05, (masked, chosen, SEED)


def test_side_by_side_trains_alike(anatomy, tmp_path):
    """The script end to end (the anatomy fixture fails it when the binary is
    missing); a bad --steps stops it with a message naming the option."""
    rng = np.random.default_rng(SEED)
    V = 64
    # a stream with structure (a repeating motif plus noise) so the loss moves
    motif = rng.integers(0, V - 4, 37)
    stream = np.where(rng.random(6000) < 0.3, rng.integers(0, V - 4, 6000), np.resize(motif, 6000))
    write_shard(tmp_path / "t_train_000000.bin", stream[:5000])
    write_shard(tmp_path / "t_val_000000.bin", stream[5000:])
    cmd = [sys.executable, os.path.join(REPO, "bench", "bert_vs_hf.py"), "--anatomy", anatomy_bin(),
           "--train", str(tmp_path / "t_train_*.bin"), "--val", str(tmp_path / "t_val_*.bin"),
           "--vocab", str(V), "--out", str(tmp_path / "out"), "--layers", "1", "--heads", "2",
           "--width", "32", "--seq", "18", "--batch", "6", "--steps", "12", "--warmup", "2",
           "--lr", "3e-3", "--seed", str(SEED), "--val-batch", "5", "--threads", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    gap = float(re.search(r"largest relative difference (\S+) over 12 steps", out).group(1))
    assert gap < 1e-4, f"training losses differ by {gap} (seed {SEED})\n{out}"
    figs = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in
            re.finditer(r"^(anatomy|hf)\s+mlm_loss (\S+) mlm_accuracy (\S+)", out, re.M)}
    (lo, ao), (lh, ah) = figs["anatomy"], figs["hf"]
    assert abs(lo - lh) < 1e-3 * lh and abs(ao - ah) < 0.01, f"{figs} (seed {SEED})\n{out}"
    bad_cmd = list(cmd)
    bad_cmd[bad_cmd.index("--steps") + 1] = "0"
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--steps" in bad.stderr, bad.stderr
