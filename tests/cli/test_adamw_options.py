"""AdamW's --beta1, --beta2 and --eps: they reach the optimizer, checkpoints
carry them, a resume keeps them (and refuses others), and a checkpoint
written before they were saved resumes with the values it was trained with
(0.9, 0.95, 1e-8)."""
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from test_behaviour import TINY, fails, losses, ok

COMMON = ["--batch", "2", "--seq", "16", "--weight-decay", "0", "--grad-clip", "0",
          "--schedule", "constant"]


def meta_of(path):
    with safe_open(str(path), "np") as f:
        return dict(f.metadata())


def test_betas_and_eps_reach_the_update(run, shard, tmp_path):
    """One step from the same initial weights: m = (1 - b1) g, v = (1 - b2) g^2
    and the bias-corrected update lr g / (|g| + eps)."""
    b1, b2, eps, lr = 0.8, 0.99, 1e-3, 1e-2
    ok(run("train", *TINY, "--data", shard, *COMMON, "--steps", "1", "--lr", "0",
           "--out", tmp_path / "p0"))
    ok(run("train", *TINY, "--data", shard, *COMMON, "--steps", "1", "--lr", lr,
           "--beta1", b1, "--beta2", b2, "--eps", eps, "--out", tmp_path / "p1"))
    p0 = load_file(str(tmp_path / "p0" / "step_000001.safetensors"))
    p1 = load_file(str(tmp_path / "p1" / "step_000001.safetensors"))
    meta = meta_of(tmp_path / "p1" / "step_000001.safetensors")
    assert (float(meta["beta1"]), float(meta["beta2"]), float(meta["eps"])) == (b1, b2, eps)
    checked = 0
    for name in p0:
        if name.startswith("adamw."):
            continue
        m = p1["adamw.m." + name].astype(np.float64)
        v = p1["adamw.v." + name].astype(np.float64)
        g = m / (1 - b1)
        big = np.abs(g) > 1e-4
        if not big.any():
            continue
        assert np.allclose(v[big], (1 - b2) * g[big] ** 2, rtol=1e-4), name
        step = p0[name].astype(np.float64) - p1[name].astype(np.float64)
        want = lr * g / (np.abs(g) + eps)
        assert np.allclose(step[big], want[big], rtol=2e-3, atol=2e-7), name
        checked += int(big.sum())
    assert checked > 100


def test_resume_keeps_the_checkpoints_adamw_settings(run, shard, tmp_path):
    args = [*TINY, "--data", shard, *COMMON, "--lr", "3e-3", "--beta1", "0.85", "--beta2",
            "0.999", "--eps", "1e-6"]
    full = ok(run("train", *args, "--steps", "6", "--ckpt-every", "3", "--out", tmp_path / "f"))
    ck = tmp_path / "f" / "step_000003.safetensors"
    # the options left out: the checkpoint's values, bit for bit
    res = ok(run("train", "--resume", ck, "--data", shard, *COMMON, "--lr", "3e-3",
                 "--steps", "6"))
    assert losses(res) == losses(full)[3:]
    # the same values given again are fine
    res = ok(run("train", "--resume", ck, "--data", shard, *COMMON, "--lr", "3e-3",
                 "--beta2", "0.999", "--steps", "6"))
    assert losses(res) == losses(full)[3:]
    # other values are refused
    for opt, val in (("--beta1", "0.9"), ("--beta2", "0.95"), ("--eps", "1e-8")):
        fails(run("train", "--resume", ck, "--data", shard, *COMMON, opt, val, "--steps", "6"),
              "--resume", opt, "checkpoint")


def test_old_checkpoint_resumes_with_the_old_values(run, shard, tmp_path):
    args = [*TINY, "--data", shard, *COMMON, "--lr", "3e-3"]
    full = ok(run("train", *args, "--steps", "6", "--ckpt-every", "3", "--out", tmp_path / "f"))
    ck = tmp_path / "f" / "step_000003.safetensors"
    meta = meta_of(ck)
    assert (meta["beta1"], meta["beta2"], meta["eps"]) == ("0.90000000000000002",
                                                            "0.94999999999999996", "1e-08")
    for k in ("beta1", "beta2", "eps"):
        del meta[k]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(ck)), str(old), metadata=meta)
    res = ok(run("train", "--resume", old, "--data", shard, *COMMON, "--lr", "3e-3",
                 "--steps", "6"))
    assert losses(res) == losses(full)[3:]
    fails(run("train", "--resume", old, "--data", shard, *COMMON, "--beta2", "0.999",
              "--steps", "6"), "--beta2", "0.95")


def test_bad_adamw_options(run, shard):
    for opt, val in (("--beta1", "1"), ("--beta2", "-0.1"), ("--eps", "0"), ("--beta1", "x")):
        fails(run("train", *TINY, "--data", shard, opt, val), opt)
