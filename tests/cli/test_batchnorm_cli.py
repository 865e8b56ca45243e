"""patchts with --norm batch (PatchTST's BatchNorm1d in the post-LN blocks)
from the command line: the running statistics are saved in checkpoints under
PyTorch's names beside the parameters, read back by eval, --init, export and
--resume (which continues bit for bit); validation in training and `eval`
both normalise with them; bad values get one clear error line."""
import re

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from test_series_cli import good_csv, one_error

BN = ["--model", "patchts", "--preset", "patchts-tiny", "--channels", 2, "--post-ln", 1,
      "--norm", "batch"]
STATS = [f"h.0.bn_{k}.running_{s}" for k in (1, 2) for s in ("mean", "var")]


def test_running_statistics_saved_and_resumed_bit_for_bit(run, tmp_path):
    path = good_csv(tmp_path / "good.csv", rows=400, seed=1)
    common = ["--data", path, "--batch", 8, "--lr", "3e-3", "--shuffle", "--seed", 5,
              "--dropout", "0.1"]
    steps = re.compile(r"^step\s+(\d+)/6 \| loss (\S+)", re.M)
    rc, full, err = run("train", *BN, *common, "--steps", 6, "--out", tmp_path / "a")
    assert rc == 0, err
    rc, _, err = run("train", *BN, *common, "--steps", 6, "--ckpt-every", 3,
                     "--out", tmp_path / "b")
    assert rc == 0, err
    ck3 = tmp_path / "b" / "step_000003.safetensors"
    t3 = load_file(str(ck3))
    for name in STATS:  # [C], moved from torch's initial (0, 1) by three steps of training
        assert t3[name].shape == (8,) and f"adamw.m.{name}" not in t3, name
        start = 0.0 if name.endswith("mean") else 1.0
        assert np.all(np.isfinite(t3[name])) and np.any(t3[name] != start), (name, t3[name])
    assert "h.0.bn_1.weight" in t3 and "h.0.ln_1.weight" not in t3, sorted(t3)
    with safe_open(str(ck3), "np") as f:
        assert f.metadata()["norm"] == "batch", f.metadata()
    rc, out, err = run("train", "--resume", ck3, *common, "--steps", 6, "--out", tmp_path / "c")
    assert rc == 0, err
    assert steps.findall(out) == steps.findall(full)[3:], (out, full)
    a = load_file(str(tmp_path / "a" / "step_000006.safetensors"))
    c = load_file(str(tmp_path / "c" / "step_000006.safetensors"))
    assert sorted(a) == sorted(c)
    for k in a:  # parameters, moments and running statistics, bit for bit
        assert np.array_equal(a[k], c[k]), k


def test_eval_and_validation_use_the_running_statistics(run, tmp_path):
    path = good_csv(tmp_path / "good.csv", rows=400, seed=2)
    rc, out, err = run("train", *BN, "--data", path, "--val-data", path, "--batch", 8,
                       "--steps", 4, "--val-every", 4, "--out", tmp_path / "r")
    assert rc == 0, err
    val = re.findall(r"^val\s+4/4 \| loss (\S+)", out, re.M)
    assert val, out
    ck = tmp_path / "r" / "step_000004.safetensors"

    def evaluate(f, split="val", batch=8):
        rc, out, err = run("eval", "--init", f, "--data", path, "--split", split,
                           "--batch", batch)
        assert rc == 0, err
        return float(re.search(r"^loss (\S+)", out, re.M).group(1))

    # the trainer's validation is an evaluation forward, like eval's
    got = evaluate(ck)
    assert abs(got - float(val[-1])) <= 1e-5 * got, (got, val)
    # the statistics are the running ones, not the batch's: the loss does not
    # depend on how the windows are grouped into batches (up to rounding)...
    assert abs(evaluate(ck, "test", 19) - evaluate(ck, "test", 3)) < 1e-5
    # ...and does depend on the saved running statistics
    t = load_file(str(ck))
    with safe_open(str(ck), "np") as f:
        meta = f.metadata()
    t["h.0.bn_2.running_var"] = t["h.0.bn_2.running_var"] * 4
    moved = tmp_path / "moved.safetensors"
    save_file(t, str(moved), metadata={k: v for k, v in meta.items() if k != "crc32c"})
    assert abs(evaluate(moved) - got) > 1e-4, got
    # --init and export read them too: the exported file holds the same tensors
    out_ck = tmp_path / "exported.safetensors"
    rc, _, err = run("export", "--init", ck, "--format", "ckpt", "--out", out_ck)
    assert rc == 0, err
    e = load_file(str(out_ck))
    for name in STATS:
        assert np.array_equal(e[name], t[name] if name != "h.0.bn_2.running_var"
                              else load_file(str(ck))[name]), name
    assert evaluate(out_ck) == got
    # a checkpoint missing them is refused by name, not read with made-up ones
    del t["h.0.bn_1.running_mean"]
    save_file(t, str(moved), metadata={k: v for k, v in meta.items() if k != "crc32c"})
    rc, _, err = run("eval", "--init", moved, "--data", path, "--split", "val")
    line = one_error(rc, err)
    assert "h.0.bn_1.running_mean" in line and "missing" in line, line


def test_checkpoint_without_norm_key_is_layernorm(run, tmp_path):
    """norm came after the first patchts checkpoints: a file without the key is
    a layernorm model and evaluates exactly as written."""
    path = good_csv(tmp_path / "good.csv", rows=400, seed=3)
    rc, _, err = run("train", "--model", "patchts", "--preset", "patchts-tiny", "--channels", 2,
                     "--post-ln", 1, "--data", path, "--steps", 2, "--batch", 8,
                     "--out", tmp_path / "r")
    assert rc == 0, err
    ck = sorted((tmp_path / "r").glob("step_*.safetensors"))[-1]
    with safe_open(str(ck), "np") as f:
        meta = f.metadata()
    assert meta["norm"] == "layer", meta
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(ck)), str(old), metadata={k: v for k, v in meta.items()
                                                        if k != "norm"})
    a = run("eval", "--init", ck, "--data", path, "--split", "test")
    b = run("eval", "--init", old, "--data", path, "--split", "test")
    assert a[0] == 0 and a == b, (a, b)
    rc, out, err = run("info", "--init", old)
    assert rc == 0 and "--post-ln 1 --norm layer" in out, out
    bad = tmp_path / "bad.safetensors"  # the metadata holds the name; anything else is refused
    save_file(load_file(str(ck)), str(bad), metadata=dict(meta, norm="group"))
    rc, _, err = run("eval", "--init", bad, "--data", path, "--split", "test")
    line = one_error(rc, err)
    assert str(bad) in line and "metadata 'norm' = 'group' is not one of layer|batch" in line, line


@pytest.mark.parametrize("opts, want", [
    (["--norm", "group"], "--norm: 'group' is not one of layer|batch"),
    (["--norm", "batch", "--post-ln", 0], "--norm batch: only with post-LN blocks (--post-ln 1)"),
])
def test_norm_bad_values(run, tmp_path, opts, want):
    path = good_csv(tmp_path / "good.csv", rows=400)
    args = ["--model", "patchts", "--preset", "patchts-tiny", "--channels", 2]
    rc, _, err = run("train", *args, *opts, "--data", path, "--steps", 1, "--batch", 8,
                     "--out", tmp_path / "r")
    line = one_error(rc, err)
    assert want in line, line
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("step_*"))


@pytest.mark.parametrize("env_norm,want", [(None, "layer"), ("batch", "batch"), ("group", None)])
def test_etth1_recipe_norm(tmp_path, env_norm, want):
    """NORM reaches the trainer as --norm (layer by default) and is named on
    the recipe's first line; an unknown one stops the recipe with status 2. A
    stand-in binary records the trainer's arguments and fails."""
    import os
    import subprocess
    from test_series_cli import _recipe_stub
    repo, stub, args, csv = _recipe_stub(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NORM"}
    env.update(ANATOMY_BIN=str(stub), ETTH1=str(csv), OUT=str(tmp_path / "run"))
    if env_norm:
        env["NORM"] = env_norm
    q = subprocess.run(["sh", "scripts/etth1.sh", "96"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    if want is None:
        assert q.returncode == 2 and "NORM" in q.stderr and "group" in q.stderr, q.stderr
        assert not args.exists()
        return
    assert q.returncode != 0, q.stdout
    assert f", norm {want}," in q.stdout.splitlines()[0], q.stdout
    got = args.read_text().split()
    assert got[got.index("--norm") + 1] == want, got


def test_nan_running_statistics_refused(run, tmp_path):
    """As NaN weights are: the first tensor holding one, named, before anything runs."""
    path = good_csv(tmp_path / "good.csv", rows=400, seed=4)
    rc, _, err = run("train", *BN, "--data", path, "--steps", 1, "--batch", 8,
                     "--out", tmp_path / "r")
    assert rc == 0, err
    ck = tmp_path / "r" / "step_000001.safetensors"
    t = load_file(str(ck))
    with safe_open(str(ck), "np") as f:
        meta = f.metadata()
    t["h.0.bn_2.running_var"][3] = np.nan
    bad = tmp_path / "nan.safetensors"
    save_file(t, str(bad), metadata={k: v for k, v in meta.items() if k != "crc32c"})
    rc, _, err = run("eval", "--init", bad, "--data", path, "--split", "val")
    line = one_error(rc, err)
    assert "nan.safetensors" in line and "h.0.bn_2.running_var" in line, line


def test_norm_in_help(run):
    rc, out, err = run("train", "--help")
    assert any(l.split()[:3] == ["--norm", "layer|batch", "patchts:"]
               for l in (out + err).splitlines()), out + err


def test_info_lists_the_state(run):
    rc, out, err = run("info", *BN, "--views")
    assert rc == 0, err
    assert "post-norm (batchnorm) blocks" in out and "--post-ln 1 --norm batch" in out, out
    state = out.split("state (not trained)")[1].split()
    assert "h.0.bn_1.running_mean" in state and "h.0.bn_2.running_var" in state, out
    assert "h.0.bn_1.weight" in out and "h.0.ln_1.weight" not in out, out
    rc, out, err = run("info", "--model", "patchts", "--preset", "patchts-tiny", "--views")
    assert rc == 0 and "state (not trained)" not in out and "--norm layer" in out, out
