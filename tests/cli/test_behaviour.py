"""Behaviour of the command line: resume is exact, options and config files
work, and every kind of bad input ends with one clear line and status 1."""
import glob
import os
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from clihelpers import write_shard

STEP = re.compile(r"^step\s+(\d+)/(\d+) \| loss (\S+)", re.M)
TINY = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]


def ok(res):
    rc, out, err = res
    assert rc == 0, f"exit {rc}\nstderr: {err}\nstdout: {out[-2000:]}"
    return out


def fails(res, *needles):
    """The command failed cleanly: status 1 (not a signal), one 'anatomy: error:'
    line on stderr containing every needle."""
    rc, out, err = res
    assert rc == 1, f"expected exit 1, got {rc}\nstderr: {err}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("anatomy: error: "), f"stderr: {err!r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def losses(out):
    return [m[2] for m in STEP.findall(out)]


def test_info_gpt2_small(run):
    out = ok(run("info", "--preset", "gpt2-124m"))
    assert re.search(r"^parameters\s+124,439,808$", out, re.M), out


def test_info_tells_where_a_run_stands(run, shard, tmp_path):
    """`info --init` of a training checkpoint prints its step of the planned
    total, the batch layout, the seed, and the last training and validation
    losses as the run printed them; a resumed run's checkpoint saved before
    its next validation keeps the last one; a checkpoint without the losses
    (written before they were saved) says so; a malformed figure is one line."""
    common = ["--data", shard, "--batch", "2", "--seq", "32", "--seed", "11"]
    out = ok(run("train", *TINY, *common, "--val-data", shard, "--val-every", "4",
                 "--val-batches", "2", "--steps", "6", "--ckpt-every", "5",
                 "--out", tmp_path / "r"))
    step = {int(m[0]): m[2] for m in STEP.findall(out)}
    val = dict(re.findall(r"^val\s+(\d+)/\d+ \| loss (\S+)", out, re.M))
    info = ok(run("info", "--init", tmp_path / "r"))
    assert re.search(r"^trained\s+step 6 of 6, 64 tokens a step \(batch 2 x seq 32 x 1 rank\), "
                     r"seed 11$", info, re.M), info
    assert re.search(rf"^losses\s+training {step[6]} at step 6, validation {val['6']} at step 6$",
                     info, re.M), info
    ck5 = tmp_path / "r" / "step_000005.safetensors"
    info = ok(run("info", "--init", ck5))
    assert re.search(rf"^losses\s+training {step[5]} at step 5, validation {val['4']} at step 4$",
                     info, re.M), info
    ok(run("train", "--resume", ck5, *common, "--steps", "6", "--out", tmp_path / "res"))
    info = ok(run("info", "--init", tmp_path / "res"))
    assert re.search(rf"^losses\s+training {step[6]} at step 6, validation {val['4']} at step 4$",
                     info, re.M), info
    t = load_file(str(ck5))
    from safetensors import safe_open
    with safe_open(str(ck5), "np") as f:
        meta = f.metadata()
    old = {k: v for k, v in meta.items() if k not in ("loss", "val_loss", "val_step", "steps",
                                                       "crc32c")}
    save_file(t, str(tmp_path / "old.safetensors"), metadata=old)
    info = ok(run("info", "--init", tmp_path / "old.safetensors"))
    assert re.search(r"^trained\s+step 5, 64 tokens", info, re.M), info
    assert re.search(r"^losses\s+not recorded", info, re.M), info
    save_file(t, str(tmp_path / "bad.safetensors"), metadata=dict(old, loss="nan?"))
    fails(run("info", "--init", tmp_path / "bad.safetensors"), "bad.safetensors", "'loss'")
    # a resume reads the last validation back: a malformed one stops it in one line
    save_file(t, str(tmp_path / "badval.safetensors"),
              metadata=dict(meta, val_step="four"))
    fails(run("train", "--resume", tmp_path / "badval.safetensors", *common, "--steps", "6"),
          "badval.safetensors", "'val_step'")


def test_latest_checkpoint_is_the_largest_step(run, shard, tmp_path):
    """A run directory means its checkpoint of the largest step, by number:
    from step 1,000,000 on the names have seven digits and sort before
    step_999999 as text. A name that is not rundir's (a leading zero on more
    than six digits, a missing digit) is no checkpoint."""
    import shutil
    d = tmp_path / "r"
    ok(run("train", *TINY, "--data", shard, "--batch", "2", "--seq", "16", "--steps", "3",
           "--ckpt-every", "1", "--out", d))
    (d / "step_000001.safetensors").rename(d / "step_1000000.safetensors")
    (d / "step_000002.safetensors").rename(d / "step_999999.safetensors")
    shutil.copy(d / "step_000003.safetensors", d / "step_01000001.safetensors")
    (d / "step_000003.safetensors").rename(d / "step_00003.safetensors")
    info = ok(run("info", "--init", d))
    assert re.search(r"^trained\s+step 1 of 3,", info, re.M), info


def _same_checkpoints(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"tensor {k} differs after resume"


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_is_bit_exact(run, shard, tmp_path, schedule):
    """20 steps equal 10 steps, save, resume, 10 more: losses and every tensor
    (weights and AdamW moments) bit for bit. With a constant rate the first leg
    is a separate 10-step run; with the cosine schedule (which depends on the
    total) it is the step-10 checkpoint of a 20-step run."""
    common = ["--data", shard, "--batch", "4", "--seq", "32", "--lr", "3e-3", "--warmup", "3",
              "--shuffle", "--seed", "5", "--schedule", schedule]
    full = ok(run("train", *TINY, *common, "--steps", "20", "--out", tmp_path / "full",
                  "--ckpt-every", "10"))
    if schedule == "constant":
        ok(run("train", *TINY, *common, "--steps", "10", "--out", tmp_path / "half"))
        ck = tmp_path / "half"  # a run directory: its latest checkpoint
    else:
        ck = tmp_path / "full" / "step_000010.safetensors"
    resumed = ok(run("train", "--resume", ck, *common, "--steps", "20",
                     "--out", tmp_path / "resumed"))
    full_l, res_l = losses(full), losses(resumed)
    assert len(full_l) == 20 and len(res_l) == 10
    assert res_l == full_l[10:], f"resumed {res_l} vs uninterrupted {full_l[10:]}"
    _same_checkpoints(tmp_path / "full" / "step_000020.safetensors",
                      tmp_path / "resumed" / "step_000020.safetensors")


def test_dropout_trains_resumes_and_never_evaluates(run, shard, tmp_path):
    """--dropout changes the training losses (the first step's too: same
    weights, other activations); a resumed run draws the same masks as the
    uninterrupted one (losses and tensors bit for bit); validation does not
    drop (its loss equals eval's on the checkpoint); bad values are refused."""
    common = ["--data", shard, "--val-data", shard, "--batch", "4", "--seq", "32",
              "--lr", "3e-3", "--warmup", "2", "--shuffle", "--seed", "5",
              "--val-every", "4", "--val-batches", "3", "--ckpt-every", "4"]
    plain = ok(run("train", *TINY, *common, "--steps", "8", "--out", tmp_path / "plain"))
    full = ok(run("train", *TINY, *common, "--steps", "8", "--dropout", "0.2",
                  "--out", tmp_path / "full"))
    assert re.search(r"^dropout 0\.2: .*residual", full, re.M), full
    assert not re.search(r"^dropout", plain, re.M), plain
    drop_l, plain_l = losses(full), losses(plain)
    assert len(drop_l) == 8 and drop_l[0] != plain_l[0], (drop_l, plain_l)
    ck4 = tmp_path / "full" / "step_000004.safetensors"
    resumed = ok(run("train", "--resume", ck4, *common, "--steps", "8", "--dropout", "0.2",
                     "--out", tmp_path / "resumed"))
    assert losses(resumed) == drop_l[4:], (losses(resumed), drop_l[4:])
    _same_checkpoints(tmp_path / "full" / "step_000008.safetensors",
                      tmp_path / "resumed" / "step_000008.safetensors")
    val4 = re.search(r"^val\s+4/8 \| loss (\S+)", full, re.M).group(1)
    ev = ok(run("eval", "--init", ck4, "--data", shard, "--batch", "4", "--seq", "32",
                "--batches", "3"))
    assert ev.split()[1] == val4, (ev, val4)
    fails(run("train", *TINY, *common, "--steps", "1", "--dropout", "0.95"), "--dropout")
    fails(run("train", *TINY, *common, "--steps", "1", "--dropout", "-0.1"), "--dropout")
    fails(run("train", *TINY, *common, "--steps", "1", "--dropout", "some"), "--dropout",
          "some")


def test_config_file_and_command_line_wins(run, shard, tmp_path):
    cfg = tmp_path / "run.conf"
    cfg.write_text("# a comment\npreset = d2\nvocab-size = 256\nmax-seq = 64\n"
                   f"data = {shard}\nbatch = 2\nseq = 16\nsteps = 3\nlr = 1e-3\n")
    out = ok(run("train", "--config", cfg, "--steps", "2"))
    assert len(losses(out)) == 2 and "step     2/2" in out
    cfg.write_text("batchsize = 2\n")
    fails(run("train", "--config", cfg), "batchsize")
    cfg.write_text("just words\n")
    fails(run("train", "--config", cfg), str(cfg), "key = value")
    fails(run("train", "--config", tmp_path / "missing.conf"), "missing.conf")


def test_bad_options(run, shard):
    fails(run("train", *TINY, "--data", shard, "--batch", "0"), "--batch")
    fails(run("train", *TINY, "--data", shard, "--lr", "fast"), "--lr", "fast")
    fails(run("train", *TINY, "--data", shard, "--seq", "65"), "--seq", "65")
    fails(run("train", *TINY, "--data", shard, "--schedule", "linear"), "--schedule")
    fails(run("train", *TINY, "--data", shard, "--device", "cuda"), "--device cuda")
    fails(run("train", *TINY, "--data", shard, "--device", "tpu"), "--device")
    fails(run("train", *TINY, "--data", shard, "--total-batch", "100", "--batch", "2",
              "--seq", "16"), "--total-batch")
    fails(run("train", "--preset", "d5", "--data", shard), "d5")
    fails(run("train", *TINY), "--data")
    fails(run("train", "--data", shard), "--preset")
    fails(run("frobnicate"), "frobnicate")


def test_bad_shards(run, tmp_path):
    good = np.random.default_rng().integers(0, 256, 5000)
    trunc = write_shard(tmp_path / "trunc.bin", good)
    with open(trunc, "r+b") as f:
        f.truncate(1024 + 2 * 4000)
    fails(run("train", *TINY, "--data", trunc, "--steps", "1"), "trunc.bin")
    foreign = write_shard(tmp_path / "foreign.bin", good, magic=12345)
    fails(run("train", *TINY, "--data", foreign, "--steps", "1"), "foreign.bin")
    big = write_shard(tmp_path / "bigid.bin", np.full(5000, 300))
    fails(run("train", *TINY, "--data", big, "--steps", "1"), "bigid.bin", "300")
    fails(run("train", *TINY, "--data", str(tmp_path / "none_*.bin"), "--steps", "1"),
          "none_*.bin")
    empty = tmp_path / "text.bin"
    empty.write_text("hello, not a shard")
    fails(run("eval", "--preset", "d2", "--data", empty), "text.bin")


def test_bad_models(run, shard, tmp_path):
    # a Hugging Face config whose heads do not divide the width
    out = tmp_path / "hf"
    ok(run("export", "--init", _ckpt(run, shard, tmp_path), "--out", out))
    cfg = (out / "config.json").read_text()
    (out / "config.json").write_text(cfg.replace('"n_head": 2', '"n_head": 3'))
    fails(run("eval", "--init", out, "--data", shard, "--seq", "16"), "config.json", "3")
    # a checkpoint whose metadata claims another model than its tensors hold
    ck = _ckpt(run, shard, tmp_path)
    t = load_file(str(ck))
    from safetensors import safe_open
    with safe_open(str(ck), "np") as f:
        meta = dict(f.metadata())
    meta["C"] = "64"
    meta["NH"] = "4"
    other = tmp_path / "other.safetensors"
    save_file(t, str(other), metadata=meta)
    fails(run("eval", "--init", other, "--data", shard, "--seq", "16"), "other.safetensors")
    # truncated checkpoint
    data = open(ck, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    fails(run("eval", "--init", cut, "--data", shard, "--seq", "16"), "cut.safetensors")
    fails(run("eval", "--init", tmp_path / "nothing", "--data", shard), "nothing")
    # resuming with another batch layout
    fails(run("train", "--resume", ck, "--data", shard, "--batch", "3", "--seq", "16",
              "--steps", "5"), "--batch")


def _ckpt(run, shard, tmp_path):
    d = tmp_path / "ck"
    ok(run("train", *TINY, "--data", shard, "--batch", "2", "--seq", "16", "--steps", "2",
           "--out", d, "--overwrite"))  # called twice by a test: the same run again
    return d / "step_000002.safetensors"


def test_failed_save_keeps_good_checkpoint(run, shard, tmp_path):
    d = tmp_path / "run"
    ok(run("train", *TINY, "--data", shard, "--batch", "2", "--seq", "16", "--steps", "2",
           "--out", d))
    good = (d / "step_000002.safetensors").read_bytes()
    # the resumed run's final checkpoint cannot be written: its name is taken by a folder
    os.mkdir(d / "step_000004.safetensors")
    (d / "step_000004.safetensors" / "keep").write_text("x")
    rc, out, err = run("train", "--resume", d / "step_000002.safetensors", "--data", shard,
                       "--batch", "2", "--seq", "16", "--steps", "4", "--out", d)
    assert rc == 1 and "step_000004" in err, err
    assert (d / "step_000002.safetensors").read_bytes() == good
    assert not [p for p in os.listdir(d) if "tmp" in p], os.listdir(d)


def test_sample_and_eval_run(run, shard, tmp_path):
    ck = _ckpt(run, shard, tmp_path)
    out = ok(run("eval", "--init", ck, "--data", shard, "--batch", "2", "--seq", "16",
                 "--batches", "3"))
    assert re.fullmatch(r"loss \d+\.\d{6}\naveraged over 3 batches, 96 tokens \(2 x 16 each\)\n"
                        r"evaluated gpt2 \(\d+ parameters\) on cpu, fp32 activations, split test\n",
                        out), out
    assert abs(float(out.split()[1]) - np.log(256)) < 0.5
    # bytes as tokens: the sample is raw bytes, not necessarily UTF-8
    args = ("sample", "--init", ck, "--tokens", "20", "--prompt", "ab", "--seed", "3")
    out = ok(run(*args, text=False))
    assert out.startswith(b"ab") and len(out) == 2 + 20 + 1, out
    assert ok(run(*args, text=False)) == out, "same seed, same sample"
    assert ok(run(*args[:-1], "4", text=False)) != out, "another seed, another sample"
