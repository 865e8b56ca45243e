"""Bad image files on the command line: `anatomy train` and `anatomy eval`
with --model vit print one line `anatomy: error: <file>: <problem>` and exit
non-zero, for every way an IDX or CIFAR-10 file can be wrong. Good files of
the same shape train, so the errors are about the files and nothing else.

Files are fresh random bytes each run (numpy's default seeding)."""
import numpy as np
import pytest

# 28 x 28 grey, 7 x 7 patches, L2 C32: the cheapest ViT preset
GREY = ["--model", "vit", "--preset", "vit-mnist-tiny"]
# the same for CIFAR-10's 32 x 32 RGB
RGB = ["--model", "vit", "--preset", "vit-mnist-tiny", "--image-size", "32", "--channels", "3",
       "--patch", "8"]
TRAIN = ["--batch", "4", "--steps", "1", "--device", "cpu"]


def idx_images(path, n=12, rows=28, cols=28, magic=0x803, chop=0, extra=0):
    body = np.random.default_rng().integers(0, 256, n * rows * cols + extra, dtype=np.uint8)
    data = np.array([magic, n, rows, cols], ">u4").tobytes() + body.tobytes()
    path.write_bytes(data[:len(data) - chop])
    return path


def idx_labels(path, n=12, classes=10, magic=0x801, chop=0, labels=None):
    lab = np.random.default_rng().integers(0, classes, n).astype(np.uint8)
    if labels is not None:
        lab = np.asarray(labels, np.uint8)
    data = np.array([magic, n], ">u4").tobytes() + lab.tobytes()
    path.write_bytes(data[:len(data) - chop])
    return path


def cifar(path, n=6, classes=10, chop=0, bad_label_at=None):
    rng = np.random.default_rng()
    rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
    rec[:, 0] = rng.integers(0, classes, n)
    if bad_label_at is not None:
        rec[bad_label_at, 0] = classes
    data = rec.tobytes()
    path.write_bytes(data[:len(data) - chop])
    return path


def pair(tmp_path, prefix="train", **kw):
    """An IDX images/labels pair with the standard names."""
    img_kw = {k: v for k, v in kw.items() if k in ("n", "rows", "cols", "magic", "chop", "extra")}
    img = idx_images(tmp_path / f"{prefix}-images-idx3-ubyte", **img_kw)
    idx_labels(tmp_path / f"{prefix}-labels-idx1-ubyte", n=kw.get("n", 12))
    return img


def expect_error(run, args, file, what):
    rc, out, err = run(*args)
    lines = err.strip().splitlines()
    assert rc != 0, f"exit 0 for {args}\n{out}"
    assert lines and lines[-1].startswith(f"anatomy: error: {file}"), err
    assert what in lines[-1], f"'{what}' not in: {lines[-1]}"


def test_good_files_train(run, tmp_path):
    img = pair(tmp_path)
    rc, out, err = run("train", *GREY, *TRAIN, "--data", img, "--out", tmp_path / "run")
    assert rc == 0, err
    rc, out, err = run("train", *RGB, *TRAIN, "--data", cifar(tmp_path / "c.bin"),
                       "--out", tmp_path / "run2")
    assert rc == 0, err


@pytest.mark.parametrize("case", ["magic", "truncated", "header", "trailing", "labels_magic",
                                  "labels_truncated", "label_range", "count", "no_labels"])
def test_bad_idx_train(run, tmp_path, case):
    lab = tmp_path / "train-labels-idx1-ubyte"
    img = tmp_path / "train-images-idx3-ubyte"
    bad, what = img, None
    if case == "magic":
        pair(tmp_path, magic=0x801)
        what = "not an IDX images file"
    elif case == "truncated":
        pair(tmp_path, chop=int(np.random.default_rng().integers(1, 784)))
        what = "truncated"
    elif case == "header":
        img.write_bytes(b"\0\0\x08\x03\0\0\0")
        idx_labels(lab)
        what = "truncated"
    elif case == "trailing":
        pair(tmp_path, extra=5)
        what = "bytes after"
    elif case == "labels_magic":
        pair(tmp_path)
        idx_labels(lab, magic=0x803)
        bad, what = lab, "not an IDX labels file"
    elif case == "labels_truncated":
        pair(tmp_path)
        idx_labels(lab, chop=3)
        bad, what = lab, "truncated"
    elif case == "label_range":
        pair(tmp_path)
        idx_labels(lab, labels=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])
        bad, what = lab, "label 10 of image 10 is out of range for 10 classes"
    elif case == "count":
        pair(tmp_path)
        idx_labels(lab, n=11)
        bad, what = lab, "11 labels, but its images file"
    elif case == "no_labels":
        pair(tmp_path)
        lab.unlink()
        what = "does not exist"
    expect_error(run, ["train", *GREY, *TRAIN, "--data", img, "--out", tmp_path / "run"], bad,
                 what)


@pytest.mark.parametrize("case", ["truncated", "label_range", "empty", "geometry"])
def test_bad_cifar_train(run, tmp_path, case):
    path = tmp_path / "data_batch_1.bin"
    args = RGB
    if case == "truncated":
        cifar(path, chop=int(np.random.default_rng().integers(1, 3073)))
        what = "truncated"
    elif case == "label_range":
        cifar(path, bad_label_at=3)
        what = "label 10 of image 3 is out of range"
    elif case == "empty":
        path.write_bytes(b"")
        what = "empty"
    else:  # CIFAR's 3 x 32 x 32 given to a 28 x 28 grey model
        cifar(path)
        args, what = GREY, "images are 3 x 32 x 32"
    expect_error(run, ["train", *args, *TRAIN, "--data", path, "--out", tmp_path / "run"], path,
                 what)


def test_bad_val_data_and_directory(run, tmp_path):
    img = pair(tmp_path)
    (tmp_path / "val").mkdir()
    bad = pair(tmp_path / "val", prefix="t10k", magic=0x999)
    expect_error(run, ["train", *GREY, *TRAIN, "--data", img, "--val-data", bad,
                       "--out", tmp_path / "run"], bad, "not an IDX images file")
    (tmp_path / "empty").mkdir()
    expect_error(run, ["train", *GREY, *TRAIN, "--data", tmp_path / "empty",
                       "--out", tmp_path / "run"], tmp_path / "empty", "no training images")


def test_bad_files_eval(run, tmp_path):
    img = pair(tmp_path)
    rc, out, err = run("train", *GREY, *TRAIN, "--data", img, "--out", tmp_path / "run")
    assert rc == 0, err
    # eval reads the test split: t10k-* in a directory
    d = tmp_path / "d"
    d.mkdir()
    bad = pair(d, prefix="t10k", chop=10)
    expect_error(run, ["eval", "--init", tmp_path / "run", "--data", d, "--batch", "4",
                       "--split", "test"], bad, "truncated")
    pair(d, prefix="t10k")
    lab = idx_labels(d / "t10k-labels-idx1-ubyte", labels=[0] * 11 + [12])
    expect_error(run, ["eval", "--init", tmp_path / "run", "--data", d, "--batch", "4",
                       "--split", "test"], lab, "out of range")
    pair(d, prefix="t10k")
    rc, out, err = run("eval", "--init", tmp_path / "run", "--data", d, "--batch", "4",
                       "--split", "test")
    assert rc == 0, err
    assert any(l.startswith("accuracy ") for l in out.splitlines()), out


def test_augmentation_options(run, tmp_path):
    """--crop-pad, --flip, --erase and --label-smoothing train a ViT on grey
    images; out-of-range values get one line naming the option."""
    img = pair(tmp_path)
    rc, out, err = run("train", *GREY, *TRAIN, "--data", img, "--crop-pad", 2, "--flip", 1,
                       "--erase", 0.25, "--label-smoothing", 0.1, "--out", tmp_path / "run")
    assert rc == 0, err
    for opt, bad in (("--crop-pad", 17), ("--crop-pad", -1), ("--flip", 2), ("--erase", 1.5), ("--erase", -0.1),
                     ("--label-smoothing", 1), ("--label-smoothing", -0.1)):
        expect_error(run, ["train", *GREY, *TRAIN, "--data", img, opt, bad], opt, "out of range")


def test_pool_option(run, tmp_path):
    """--pool mean trains, is saved in the checkpoint and shown by info and
    the settings line; a checkpoint without the key (from before --pool)
    reads as cls; a bad value gets one line naming --pool."""
    import json
    import struct
    from safetensors.torch import load_file, save_file
    img = pair(tmp_path)
    rc, out, err = run("train", *GREY, *TRAIN, "--data", img, "--pool", "mean",
                       "--out", tmp_path / "run")
    assert rc == 0, err
    ck = tmp_path / "run" / "step_000001.safetensors"
    with open(ck, "rb") as f:
        meta = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]
    assert meta["pool"] == "mean", meta
    rc, out, err = run("info", "--init", ck)
    assert rc == 0, err
    assert "--pool mean" in out and "mean of the 16 patch positions" in out, out
    del meta["pool"]  # as written before --pool
    save_file(load_file(str(ck)), str(tmp_path / "old.safetensors"), metadata=meta)
    rc, out, err = run("info", "--init", tmp_path / "old.safetensors")
    assert rc == 0, err
    assert "--pool cls" in out and "from the [CLS] position" in out, out
    rc, out, err = run("train", "--help")
    assert any(l.split()[:3] == ["--pool", "cls|mean", "vit:"]
               for l in (out + err).splitlines()), out + err
    assert any(l.split()[:3] == ["--width", "N", "gpt2,"] and "vit," in l
               for l in (out + err).splitlines()), out + err
    expect_error(run, ["train", *GREY, *TRAIN, "--data", img, "--pool", "max"], "--pool",
                 "'max' is not one of cls|mean")
    meta["pool"] = "max"
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(ck)), str(bad), metadata=meta)
    expect_error(run, ["info", "--init", bad], str(bad),
                 "metadata 'pool' = 'max' is not one of cls|mean")
    expect_error(run, ["train", "--model", "gpt2", *TRAIN, "--data", img, "--pool", "mean"],
                 "--pool", "no such setting")


def test_vit_recipe_options(tmp_path):
    """bench/vit_fmnist_recipe.sh hands its recipe to the trainer: the patch-4
    preset, flips (crops and dropout off), warmup of one epoch then cosine to zero; the
    environment overrides it; a bad number stops it with status 2. A
    stand-in binary records the arguments and fails, which stops the recipe
    right after the trainer. WIDTH, LAYERS and HEADS reshape the preset."""
    import os
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    stub, args = tmp_path / "stub.sh", tmp_path / "args.txt"
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {args}\nexit 3\n")
    stub.chmod(0o755)
    import gzip
    import struct

    def idx_dir(name, ntrain, ntest):
        """A directory of IDX image files holding only their headers: the recipe
        reads the counts there, the stand-in trainer reads nothing."""
        d = tmp_path / name
        d.mkdir()
        with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, ntrain, 28, 28))
        (d / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, ntest, 28, 28))
        return str(d)
    env = dict(os.environ, FMNIST_DIR=idx_dir("fmnist", 60000, 10000))
    for k in ("SEED", "LR", "CROP_PAD", "FLIP", "ERASE", "SMOOTH", "BATCH", "PRESET", "DROPOUT", "POOL",
              "WIDTH", "LAYERS", "HEADS", "PRECISION"):
        env.pop(k, None)
    def recipe(epochs="3", **extra):
        """The script's status and stderr, and the arguments it gave the trainer."""
        args.write_text("")
        q = subprocess.run(["sh", "bench/vit_fmnist_recipe.sh", str(stub), epochs,
                            str(tmp_path / "o")], cwd=repo, env=dict(env, **extra),
                           capture_output=True, text=True, timeout=60)
        return q.returncode, q.stderr, args.read_text().split()

    rc, _, got = recipe()
    assert rc != 0
    opt = {got[i]: got[i + 1] for i in range(len(got) - 1) if got[i].startswith("--")}
    assert opt["--preset"] == "vit-mnist-p4" and opt["--crop-pad"] == "0" and opt["--flip"] == "1"
    assert opt["--dropout"] == "0" and opt["--pool"] == "cls" and opt["--erase"] == "0"
    assert opt["--schedule"] == "cosine" and opt["--lr-min-frac"] == "0"
    assert opt["--label-smoothing"] == "0.1"
    assert opt["--warmup"] == str(60000 // 128) and opt["--steps"] == str(3 * (60000 // 128))
    assert opt["--val-batches"] == str(-(-10000 // 128))  # every test image each epoch
    assert "--width" not in got and "--layers" not in got and "--heads" not in got
    assert opt["--precision"] == "fp32"
    for extra, want in (({"CROP_PAD": "4", "SEED": "7"}, {"--crop-pad": "4", "--seed": "7"}),
                        ({"POOL": "mean"}, {"--pool": "mean"}),
                        ({"ERASE": "0.25"}, {"--erase": "0.25"}),
                        ({"WIDTH": "128", "HEADS": "8"}, {"--width": "128", "--heads": "8"}),
                        ({"PRECISION": "bf16"}, {"--precision": "bf16"})):
        rc, _, got = recipe(**extra)
        for k, v in want.items():
            assert got[got.index(k) + 1] == v, (extra, got)
        assert "--layers" not in got, (extra, got)
    # RESUME=1 goes on from the run in OUT: --resume instead of the model's options, the log
    # appended to; with no checkpoint there it starts the run
    rc, err, got = recipe(RESUME="1")
    assert "--model" in got and "--resume" not in got, got
    (tmp_path / "o").mkdir(exist_ok=True)
    (tmp_path / "o" / "step_000468.safetensors").write_bytes(b"")
    (tmp_path / "o" / "train.log").write_text("step 1/1404 before the stop\n")
    rc, _, got = recipe(RESUME="1")
    assert rc == 3 and got[got.index("--resume") + 1] == str(tmp_path / "o"), got
    assert "--model" not in got and "--preset" not in got and "--pool" not in got, got
    assert "--seed" in got and got[got.index("--steps") + 1] == str(3 * (60000 // 128)), got
    assert (tmp_path / "o" / "train.log").read_text().startswith("step 1/1404 before the stop"), "log overwritten"
    rc, err, got = recipe(RESUME="yes")
    assert rc == 2 and "RESUME" in err and not got, err
    # the steps per epoch and the test batches follow the counts in the files' headers
    rc, _, got = recipe("2", FMNIST_DIR=idx_dir("small", 1000, 40), BATCH="64")
    opt = {got[i]: got[i + 1] for i in range(len(got) - 1) if got[i].startswith("--")}
    assert opt["--warmup"] == opt["--val-every"] == str(1000 // 64) and opt["--steps"] == str(2 * (1000 // 64))
    assert opt["--val-batches"] == "1", opt  # 40 test images in one batch of 64
    rc, _, got = recipe("2", BATCH="64")
    assert got[got.index("--val-batches") + 1] == str(-(-10000 // 64)), got
    for data, name in ((idx_dir("none", 0, 0), "train-images-idx3-ubyte"), (str(tmp_path / "empty"), "not found"),
                       (idx_dir("few", 100, 10), "BATCH 128 is more than the 100 training images")):
        os.makedirs(data, exist_ok=True)
        rc, err, got = recipe("1", FMNIST_DIR=data)
        assert rc == 2 and name in err and len(err.strip().splitlines()) == 1 and not got, (data, err)
    for epochs, extra, name in (("3", {"PRECISION": "fp16"}, "PRECISION"),
                                ("3", {"LAYERS": "six"}, "LAYERS"),
                                ("3", {"POOL": "max"}, "POOL"),
                                ("many", {}, "EPOCHS")):
        rc, err, got = recipe(epochs, **extra)
        assert rc == 2 and name in err and not got, (extra, err)


def test_vit_recipe_summary(tmp_path):
    """bench/vit_fmnist_summary.sh over recipe runs: each run's test top-1 and
    loss, the median and the sum of its step times, its validation curve;
    then the mean and sample standard deviation of the evaluated runs,
    checked against Python's statistics on fresh random figures. A run with
    no eval yet is listed with '?' and left out of the mean; a directory
    that is no run stops it with one line and status 2."""
    import os
    import re
    import statistics
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rng = np.random.default_rng()

    def fake_run(name, nsteps, epochs, evaluated=True):
        """A run directory as the recipe leaves it: the trainer's step and val
        lines (two parts, as a resumed run's log) and `anatomy eval`'s test.txt."""
        d = tmp_path / name
        d.mkdir()
        ms = np.round(rng.uniform(150, 450, nsteps), 1)
        val = np.round(rng.uniform(0.6, 0.95, epochs), 6)
        per = nsteps // epochs
        lines = ["blas: OpenBLAS, 1 thread", "training vit: 1199882 parameters"]
        for k in range(nsteps):
            if k == nsteps // 2:
                lines += [f"stopped by SIGTERM at step {k}; resume with --resume {d}", "training vit: resumed"]
            lines.append(f"step {k + 1:5d}/{nsteps} | loss 0.5 | norm 1.0 | lr 1e-03 | {ms[k]:.1f} ms | 20000 tok/s | eta 1m")
            if (k + 1) % per == 0:
                lines.append(f"val   {k + 1:5d}/{nsteps} | loss 0.3 | accuracy {val[(k + 1) // per - 1]:.6f} "
                             "| 79 batches, 505600 tokens")
        (d / "train.log").write_text("\n".join(lines) + "\n")
        acc = float(np.round(rng.uniform(0.88, 0.94), 6))
        if evaluated:
            (d / "test.txt").write_text(f"loss 0.2852\naveraged over 100 batches\naccuracy {acc:.6f}\nevaluated vit\n")
        return str(d), ms, val, acc

    def summary(*dirs):
        q = subprocess.run(["sh", "bench/vit_fmnist_summary.sh", *dirs], cwd=repo, capture_output=True,
                           text=True, timeout=60)
        return q.returncode, q.stdout, q.stderr

    runs = [fake_run("s1", 40, 4), fake_run("s2", 41, 4), fake_run("s3", 30, 3), fake_run("s4", 20, 2, False)]
    rc, out, err = summary(*(d for d, *_ in runs))
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 5, out
    for (d, ms, val, acc), line in zip(runs, lines):
        m = re.fullmatch(r"  (\S+): test top-1 (.+); median step ([0-9.]+) ms, (\d+) s in (\d+) steps; "
                         r"validation by epoch: (.+)", line)
        assert m and m.group(1) == os.path.basename(d), line
        assert float(m.group(3)) == pytest.approx(statistics.median(ms), abs=0.051), (line, statistics.median(ms))
        assert int(m.group(4)) == round(ms.sum() / 1000) and int(m.group(5)) == len(ms), line
        assert [float(v) for v in m.group(6).split()] == pytest.approx(100 * val, abs=0.0051), line
        want = "? (no eval)" if d.endswith("s4") else f"{100 * acc:.2f}%, loss 0.2852"
        assert m.group(2) == want, line
    accs = [100 * acc for *_, acc in runs[:3]]
    m = re.fullmatch(r"  mean test top-1 ([0-9.]+)%, sample standard deviation ([0-9.]+), over 3 runs", lines[4])
    assert m, lines[4]
    assert float(m.group(1)) == pytest.approx(statistics.mean(accs), abs=0.0051)
    assert float(m.group(2)) == pytest.approx(statistics.stdev(accs), abs=0.0051)
    # one evaluated run: its line, no mean
    rc, out, _ = summary(runs[0][0], runs[3][0])
    assert rc == 0 and len(out.splitlines()) == 2 and "mean" not in out, out
    for args, words in (([runs[0][0], str(tmp_path / "nowhere")], str(tmp_path / "nowhere") + ": no train.log"),
                        ([], "usage")):
        rc, out, err = summary(*args)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1 and not out, (args, err)


def test_vit_step_bench(run, binary, tmp_path):
    """bench/vit_step_cpu.sh times anatomy's ViT step beside
    bench/torch_vit_step.py's PyTorch model, which must be the same model:
    its parameter count equals the trainer's for the same shapes. A tiny run
    prints a row of numbers and a ratio; a bad option stops the script with
    one line naming it and status 2."""
    import os
    import re
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    d = tmp_path / "fmnist"
    d.mkdir()
    pair(d, "train", n=16)
    pair(d, "t10k", n=16)
    for width, layers, heads in ((16, 1, 2), (24, 2, 3)):
        rc, out, err = run("train", "--model", "vit", "--preset", "vit-mnist-p4", "--width", width,
                           "--layers", layers, "--heads", heads, "--data", d, "--batch", "4",
                           "--steps", "1", "--device", "cpu", "--out", tmp_path / f"o{width}")
        assert rc == 0, err
        ours = int(re.search(r"training vit: (\d+) parameters", out + err).group(1))
        q = subprocess.run([sys.executable, "bench/torch_vit_step.py", "--count-params", "--width",
                            str(width), "--layers", str(layers), "--heads", str(heads)],
                           cwd=repo, capture_output=True, text=True, timeout=120)
        assert q.returncode == 0 and int(q.stdout) == ours, (width, ours, q.stdout, q.stderr)
    env = dict(os.environ, FMNIST_DIR=str(d), WIDTH="16", LAYERS="1", HEADS="2", BATCH="8",
               STEPS="3", ROUNDS="1", THREADS="1", PRECISIONS="fp32", PYTHON=sys.executable)

    def bench(**extra):
        q = subprocess.run(["sh", "bench/vit_step_cpu.sh", binary], cwd=repo,
                           env=dict(env, **extra), capture_output=True, text=True, timeout=300)
        return q.returncode, q.stdout, q.stderr
    rc, out, err = bench()
    assert rc == 0, err
    assert re.search(r"^fp32 +[0-9.]+ +[0-9.]+ +[0-9.]+x$", out, re.M), out
    for extra, name in (({"THREADS": "two"}, "THREADS"), ({"PRECISIONS": "fp16"}, "PRECISIONS"),
                        ({"STEPS": "0"}, "STEPS"), ({"FMNIST_DIR": str(tmp_path / "none")}, "not found")):
        rc, out, err = bench(**extra)
        assert rc != 0 and name in err and len(err.strip().splitlines()) == 1, (extra, err)
