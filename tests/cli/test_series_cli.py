"""The time-series families from the command line: a bad CSV gets one clear
error line naming the file and the line at fault (train and eval alike); a
good one trains, evaluates (loss, mse, mae) and is described by `info`."""
import math
import re

import numpy as np
import pytest

TINY = ["--model", "patchts", "--preset", "patchts-tiny", "--channels", 2]


def one_error(rc, err):
    """Status 1 and exactly one line 'anatomy: error: ...'; returns the line."""
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 1, f"exit status {rc}, stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("anatomy: error: "), f"stderr: {err!r}"
    return lines[0]


def good_csv(path, rows=300, ch=2, seed=None):
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    with open(path, "w") as f:
        f.write("date," + ",".join(f"v{c}" for c in range(ch)) + "\n")
        for r in range(rows):
            vals = [math.sin(0.3 * r + c) + 0.1 * rng.normal() for c in range(ch)]
            f.write(f"d{r}," + ",".join(f"{v:.6f}" for v in vals) + "\n")
    return str(path)


BAD = {
    "ragged.csv": ("date,a,b\nx,1,2\ny,3\n", r"ragged\.csv: line 3: 2 fields, the header has 3"),
    "word.csv": ("date,a,b\nx,1,2\nx,1,2\ny,3,oops\n",
                 r"word\.csv: line 4: column 3 \(b\): 'oops' is not a finite number"),
    "empty.csv": ("", r"empty\.csv: empty file"),
    "nan.csv": ("date,a,b\nx,NaN,2\n", r"nan\.csv: line 2: column 2 \(a\)"),
    "header.csv": ("date,a,b\n", r"header\.csv: no data rows"),
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("cmd", ["train", "eval"])
def test_bad_csv(run, tmp_path, name, cmd):
    text, want = BAD[name]
    path = tmp_path / name
    path.write_text(text)
    if cmd == "train":
        rc, out, err = run("train", *TINY, "--data", path, "--steps", 1, "--out", tmp_path / "o")
    else:
        rc, out, err = run("eval", *TINY, "--data", path, "--split", "test")
    line = one_error(rc, err)
    assert re.search(want, line), f"{line!r} does not match {want!r}"
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.safetensors"))


def test_too_few_rows(run, tmp_path):
    path = good_csv(tmp_path / "short.csv", rows=60)
    rc, out, err = run("train", *TINY, "--data", path, "--steps", 1)
    line = one_error(rc, err)
    want = r"short\.csv: the train split .* too short for one window of 48 \+ 24"
    assert re.search(want, line), line


def test_wrong_channel_count(run, tmp_path):
    path = good_csv(tmp_path / "three.csv", ch=3)
    rc, out, err = run("train", *TINY, "--data", path, "--steps", 1)
    line = one_error(rc, err)
    assert "three.csv: 3 numeric columns, the model has 2 channels" in line, line


def test_train_eval_info(run, tmp_path):
    path = good_csv(tmp_path / "good.csv", rows=400)
    rc, out, err = run("train", *TINY, "--data", path, "--val-data", path, "--steps", 4,
                       "--batch", 8, "--out", tmp_path / "run", "--val-every", 2)
    assert rc == 0, err
    ckpts = sorted((tmp_path / "run").glob("step_*.safetensors"))
    assert ckpts, out
    # 57 test windows: batches of 19 leave no padded rows, whatever the averaging
    rc, out, err = run("eval", "--init", ckpts[-1], "--data", path, "--split", "test",
                       "--batch", 19)
    assert rc == 0, err
    figs = dict(l.split()[:2] for l in out.splitlines() if re.match(r"^(loss|mse|mae) ", l))
    assert set(figs) == {"loss", "mse", "mae"}, out
    # the loss is the mean squared error itself (all test windows counted once)
    assert abs(float(figs["loss"]) - float(figs["mse"])) < 1e-3 * float(figs["mse"]) + 1e-6, out
    rc, out, err = run("info", "--model", "patchts", "--preset", "patchts-etth1")
    assert rc == 0, err
    assert "42 patches of 16" in out, out
    assert "encoder: 3 post-LN blocks, 4 heads, width 16" in out, out


def test_checkpoint_without_post_ln_reads_pre_ln(run, tmp_path):
    """post_ln came after the first patchts checkpoints: a file without the key
    is a pre-LN model and evaluates exactly as written; a post-LN model whose
    key is stripped is refused by name (its layout lacks ln_f), not misread."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
    path = good_csv(tmp_path / "good.csv", rows=400)
    figs = {}
    for post_ln in (0, 1):
        out = tmp_path / f"run{post_ln}"
        rc, _, err = run("train", *TINY, "--post-ln", post_ln, "--data", path, "--steps", 2,
                         "--batch", 8, "--out", out)
        assert rc == 0, err
        ck = sorted(out.glob("step_*.safetensors"))[-1]
        with safe_open(str(ck), "np") as f:
            meta = f.metadata()
        assert meta["post_ln"] == str(post_ln), meta
        old = tmp_path / f"old{post_ln}.safetensors"
        save_file(load_file(str(ck)), str(old), metadata={k: v for k, v in meta.items()
                                                            if k != "post_ln"})
        for name, f in (("new", ck), ("old", old)):
            figs[post_ln, name] = run("eval", "--init", f, "--data", path, "--split", "test")
    rc, out, err = figs[0, "new"]
    assert rc == 0 and figs[0, "old"] == figs[0, "new"], (figs[0, "old"], figs[0, "new"])
    rc, out, err = figs[1, "old"]
    line = one_error(rc, err)
    assert "old1.safetensors" in line and "ln_f" in line, line


def test_eval_forecast_csv(run, tmp_path):
    """eval --forecast: one CSV line per test window, channel row and step,
    whose forecast/target columns give back the printed mse and mae."""
    path = good_csv(tmp_path / "good.csv", rows=400)
    rc, out, err = run("train", *TINY, "--data", path, "--steps", 2, "--batch", 8,
                       "--out", tmp_path / "run")
    assert rc == 0, err
    ck = sorted((tmp_path / "run").glob("step_*.safetensors"))[-1]
    fc = tmp_path / "fc.csv"
    rc, out, err = run("eval", "--init", ck, "--data", path, "--split", "test", "--batch", 19,
                       "--forecast", fc)
    assert rc == 0, err
    figs = dict(l.split()[:2] for l in out.splitlines() if re.match(r"^(mse|mae) ", l))
    lines = fc.read_text().splitlines()
    assert lines[0] == "batch,row,step,forecast,target", lines[0]
    rows = np.array([[float(x) for x in l.split(",")] for l in lines[1:]])
    err2 = (rows[:, 3] - rows[:, 4]) ** 2
    assert len(rows) > 0 and abs(err2.mean() - float(figs["mse"])) < 1e-4 * float(figs["mse"]), \
        (err2.mean(), figs)
    assert abs(np.abs(rows[:, 3] - rows[:, 4]).mean() - float(figs["mae"])) < 1e-4 * float(figs["mae"])
    rc, out, err = run("eval", "--init", ck, "--data", path, "--forecast", tmp_path / "no" / "x.csv")
    assert rc == 1 and "--forecast" in err, err


def huber(e, delta):
    a = np.abs(e)
    return np.where(a < delta, 0.5 * e * e, delta * (a - 0.5 * delta))


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_loss_option(run, tmp_path, loss):
    """--loss: the checkpoint records it, training and validation report it,
    and eval's loss is it over the test forecasts (recomputed here from eval
    --forecast's CSV, as PyTorch's mse_loss, l1_loss and huber_loss score the
    forecast against the target), while its mse and mae lines stay those
    errors. Without --loss: mse, the loss equal to the mse line."""
    from safetensors import safe_open
    path = good_csv(tmp_path / "good.csv", rows=400)
    delta = 0.3
    opts = [] if loss == "mse" else ["--loss", loss] + (["--huber-delta", delta]
                                                        if loss == "huber" else [])
    rc, out, err = run("train", *TINY, *opts, "--data", path, "--val-data", path, "--steps", 3,
                       "--batch", 8, "--lr", "3e-3", "--out", tmp_path / "run")
    assert rc == 0, err
    val = re.search(r"^val\s+3/3 \| loss (\S+) \| mse (\S+) \| mae (\S+) \| (\d+) batches",
                    out, re.M)
    assert val, out
    assert (f"loss: {loss}" in out) == (loss != "mse"), out
    ck = sorted((tmp_path / "run").glob("step_*.safetensors"))[-1]
    with safe_open(str(ck), "np") as f:
        meta = f.metadata()
    assert meta["regression_loss"] == loss, meta
    if loss == "huber":
        assert float(meta["huber_delta"]) == delta, meta
    fc = tmp_path / "fc.csv"
    rc, out, err = run("eval", "--init", ck, "--data", path, "--split", "test", "--batch", 19,
                       "--forecast", fc)
    assert rc == 0, err
    figs = {k: float(v) for k, v in re.findall(r"^(loss|mse|mae) (\S+)$", out, re.M)}
    rows = np.array([[float(x) for x in l.split(",")] for l in fc.read_text().splitlines()[1:]])
    e = rows[:, 3] - rows[:, 4]
    want = {"mse": (e ** 2).mean(), "mae": np.abs(e).mean(), "huber": huber(e, delta).mean()}
    for k in ("mse", "mae"):
        assert abs(figs[k] - want[k]) < 1e-4 * want[k], (k, figs, want)
    assert abs(figs["loss"] - want[loss]) < 1e-4 * want[loss], (loss, figs, want)
    if loss == "huber": # errors on both sides of delta, so both branches were scored
        assert (np.abs(e) < delta).any() and (np.abs(e) > delta).any()
    # the validation split evaluates to the trainer's last validation line
    rc, out, err = run("eval", "--init", ck, "--data", path, "--split", "val", "--batch", 8,
                       "--batches", val.group(4))
    assert rc == 0, err
    ev = {k: v for k, v in re.findall(r"^(loss|mse|mae) (\S+)$", out, re.M)}
    assert (ev["loss"], ev["mse"], ev["mae"]) == val.groups()[:3], (ev, val.groups())


def test_loss_bad_values(run, tmp_path):
    """Bad --loss and --huber-delta values: one error line naming the option,
    status 1, nothing written."""
    path = good_csv(tmp_path / "good.csv", rows=400)
    cases = [
        (["--loss", "l2"], "--loss: unknown loss 'l2' (expected mse, mae or huber)"),
        (["--loss", "Huber"], "--loss: unknown loss 'Huber'"),
        (["--loss", "huber", "--huber-delta", "0"], "--huber-delta: 0 is not > 0"),
        (["--loss", "huber", "--huber-delta", "-0.5"], "--huber-delta: -0.5 is not > 0"),
        (["--loss", "huber", "--huber-delta", "abc"], "--huber-delta: 'abc' is not a number"),
        (["--loss", "huber", "--huber-delta", "nan"], "--huber-delta: 'nan' is not a number"),
        (["--huber-delta", "2"], "--huber-delta: only with --loss huber (the loss is mse)"),
        (["--loss", "mae", "--huber-delta", "2"], "--huber-delta: only with --loss huber"),
    ]
    for opts, want in cases:
        out = tmp_path / "o"
        rc, _, err = run("train", *TINY, *opts, "--data", path, "--steps", 1, "--out", out)
        line = one_error(rc, err)
        assert want in line, (opts, line)
        assert not out.exists() or not list(out.glob("*.safetensors")), opts
    # a family whose loss is its own
    rc, _, err = run("train", "--model", "tsgpt", "--preset", "tsgpt-tiny", "--channels", 2,
                     "--loss", "mae", "--data", path, "--steps", 1)
    line = one_error(rc, err)
    assert "--loss mae: the tsgpt model's loss is its own" in line, line


def test_loss_resume(run, tmp_path):
    """--resume keeps the checkpoint's loss: left out, the run goes on with it
    and matches an uninterrupted one step for step; a different --loss or
    --huber-delta is refused by name. A checkpoint from before the loss was
    saved resumes as mse."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    path = good_csv(tmp_path / "good.csv", rows=400)
    common = ["--data", path, "--batch", 8, "--lr", "3e-3", "--shuffle", "--seed", 5]
    steps = re.compile(r"^step\s+(\d+)/4 \| loss (\S+)", re.M)
    hub = ["--loss", "huber", "--huber-delta", "0.25"]
    rc, full, err = run("train", *TINY, *hub, *common, "--steps", 4, "--out", tmp_path / "a")
    assert rc == 0, err
    rc, _, err = run("train", *TINY, *hub, *common, "--steps", 4, "--ckpt-every", 2,
                     "--out", tmp_path / "b")
    assert rc == 0, err
    ck2 = tmp_path / "b" / "step_000002.safetensors"
    rc, out, err = run("train", "--resume", ck2, *common, "--steps", 4, "--out", tmp_path / "c")
    assert rc == 0, err
    assert "loss: huber, delta 0.25" in out, out
    assert steps.findall(out) == steps.findall(full)[2:], (out, full)
    with safe_open(str(tmp_path / "c" / "step_000004.safetensors"), "np") as f:
        meta = f.metadata()
    assert (meta["regression_loss"], float(meta["huber_delta"])) == ("huber", 0.25), meta
    for opts, want in [(["--loss", "mse"], "--loss is mse but the checkpoint was trained with "
                                           "huber; resuming keeps the loss"),
                       (["--huber-delta", "0.5"], "--huber-delta is 0.5 but the checkpoint was "
                                                  "trained with 0.25")]:
        rc, _, err = run("train", "--resume", ck2, *common, *opts, "--steps", 4,
                         "--out", tmp_path / "d")
        line = one_error(rc, err)
        assert want in line, (opts, line)
    # the same options as the checkpoint's are accepted
    rc, _, err = run("train", "--resume", ck2, *common, *hub, "--steps", 3, "--out", tmp_path / "e")
    assert rc == 0, err
    # without the keys (an older checkpoint): mse, and --loss huber is refused
    with safe_open(str(ck2), "np") as f:
        meta = f.metadata()
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(ck2)), str(old), metadata={k: v for k, v in meta.items()
                                                       if k not in ("regression_loss",
                                                                    "huber_delta")})
    rc, out, err = run("train", "--resume", old, *common, "--steps", 3, "--out", tmp_path / "f")
    assert rc == 0 and "loss: " not in out, (out, err)
    rc, _, err = run("train", "--resume", old, *common, "--loss", "huber", "--steps", 3,
                     "--out", tmp_path / "g")
    line = one_error(rc, err)
    assert "--loss is huber but the checkpoint was trained with mse" in line, line


def test_etth1_recipe_end_to_end(binary, tmp_path):
    """scripts/etth1.sh on the real ETTh1 (../shared/data/ett), shrunk to the
    tiny preset and 2 epochs with dropout: trains, validates every epoch's
    checkpoint, picks the best and ends with `test mse X mae Y`; a bad
    horizon or look-back stops it at once with status 2."""
    import os
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    csv = os.path.join(repo, "..", "shared", "data", "ett", "ETTh1.csv")
    assert os.path.isfile(csv), f"{csv} is missing (shared/data/ett)"
    env = dict(os.environ, ANATOMY_BIN=binary, ETTH1=csv, PRESET="patchts-tiny",
               LOOKBACK="48", EPOCHS="2", BATCH="512", OUT=str(tmp_path / "run"),
               DROPOUT="0.1", EXTRA="--threads 2")
    p = subprocess.run(["sh", "scripts/etth1.sh", "24"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + p.stdout[-2000:]
    out = p.stdout.splitlines()
    assert out[0].startswith("etth1: horizon 24, look-back 48, patchts-tiny, 2 epochs"), out[0]
    assert "dropout 0.1, loss mse ->" in out[0], out[0]
    vals = [l for l in out if l.startswith("val mse ")]
    assert len(vals) == 2, out
    best = [l for l in out if l.startswith("best: ")]
    assert len(best) == 1 and min(float(v.split()[2]) for v in vals) == float(
        best[0].split()[-1].rstrip(")")), out
    # PatchTST's test windows: its loader drops the last incomplete batch of 128
    pt = [re.fullmatch(r"test \(first (\d+) windows, as PatchTST evaluates\) mse (\S+) mae (\S+)", l)
          for l in out]
    pt = [x for x in pt if x]
    assert len(pt) == 1 and int(pt[0].group(1)) == (2880 - 24 + 1) // 128 * 128, out
    assert 0 < float(pt[0].group(2)) < 1.0, out
    m = re.fullmatch(r"test mse (\S+) mae (\S+)", out[-1])
    assert m, out[-1]
    mse, mae = float(m.group(1)), float(m.group(2))
    # normalised units: predicting the look-back's mean scores about 1; the
    # tiny model after 2 epochs is already well below
    assert 0 < mse < 1.0 and 0 < mae < 1.0, (mse, mae)
    for horizon, lookback, var, bad in (("ninety", "48", "HORIZON", "ninety"),
                                        ("24", "long", "LOOKBACK", "long")):
        q = subprocess.run(["sh", "scripts/etth1.sh", horizon], cwd=repo,
                           env=dict(env, LOOKBACK=lookback), capture_output=True, text=True,
                           timeout=60)
        assert q.returncode == 2 and var in q.stderr and bad in q.stderr, q.stderr


def test_etth1_recipe_average(binary, tmp_path):
    """AVERAGE=2: the recipe still validates every epoch and names the best,
    then tests the mean of the last two epoch checkpoints (--norm batch: the
    running statistics are averaged too): the file it writes
    is the one `anatomy export` makes of them, and both test lines are
    `anatomy eval` of that mean."""
    import os
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    csv = os.path.join(repo, "..", "shared", "data", "ett", "ETTh1.csv")
    assert os.path.isfile(csv), f"{csv} is missing (shared/data/ett)"
    run_dir = tmp_path / "run"
    env = dict(os.environ, ANATOMY_BIN=binary, ETTH1=csv, PRESET="patchts-tiny",
               LOOKBACK="48", EPOCHS="2", BATCH="512", OUT=str(run_dir), DROPOUT="0.1",
               NORM="batch", AVERAGE="2", EXTRA="--threads 2 --post-ln 1")
    p = subprocess.run(["sh", "scripts/etth1.sh", "24"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + p.stdout[-2000:]
    out = p.stdout.splitlines()
    cks = sorted(run_dir.glob("step_*.safetensors"))
    assert len(cks) == 2, cks
    vals = [l for l in out if l.startswith("val mse ")]
    assert len(vals) == 2 and len([l for l in out if l.startswith("best: ")]) == 1, out
    avg = [re.fullmatch(r"average of the last 2: (\S+) to (\S+) \(val mse (\S+)\) -> "
                        r"average_last_2\.safetensors", l) for l in out]
    avg = [m for m in avg if m]
    assert len(avg) == 1 and avg[0].group(1, 2) == (cks[0].name, cks[1].name), out

    def env_run(*args):
        q = subprocess.run([binary, *map(str, args)], capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="2"), timeout=300)
        assert q.returncode == 0, q.stderr
        return q.stdout

    def figures(report):
        got = dict(l.split()[:2] for l in report.splitlines() if l.split()[:1] in (["mse"], ["mae"]))
        return got["mse"], got["mae"]

    mine = tmp_path / "mine.safetensors"
    env_run("export", "--format", "ckpt", "--out", mine, "--init", cks[0], "--init", cks[1])
    assert mine.read_bytes() == (run_dir / "average_last_2.safetensors").read_bytes()
    val = figures(env_run("eval", "--init", mine, "--data", csv, "--split", "val", "--batch", 512))
    assert avg[0].group(3) == val[0], (avg[0].group(3), val)
    test = figures(env_run("eval", "--init", mine, "--data", csv, "--split", "test",
                           "--batch", 512))
    assert out[-1] == f"test mse {test[0]} mae {test[1]}", (out[-1], test)
    ntest = 2880 - 24 + 1
    drop = figures(env_run("eval", "--init", mine, "--data", csv, "--split", "test",
                           "--batch", 128, "--batches", ntest // 128))
    assert (f"test (first {ntest // 128 * 128} windows, as PatchTST evaluates) mse {drop[0]} "
            f"mae {drop[1]}") in out, out
    # the best epoch alone scores differently: the line is the average's
    best = figures(env_run("eval", "--init", cks[[float(v.split()[2]) for v in vals].index(
        min(float(v.split()[2]) for v in vals))], "--data", csv, "--split", "test",
        "--batch", 512))
    assert best != test, (best, test)


@pytest.mark.parametrize("average,status,words", [
    ("two", 2, ["AVERAGE", "'two'"]), ("-1", 2, ["AVERAGE", "'-1'"]),
    ("3", 2, ["AVERAGE=3", "2 epochs"]), ("08", 2, ["AVERAGE=8 ", "2 epochs"]), ("2", 1, ["AVERAGE=2", "has 0 epoch checkpoints"])])
def test_etth1_recipe_average_errors(tmp_path, average, status, words):
    """A bad AVERAGE, or more than EPOCHS, stops the recipe before training
    (status 2); fewer epoch checkpoints than AVERAGE after training (here a
    stand-in trainer that writes none) is status 1. One line each."""
    import os
    import subprocess
    repo, _, args, csv = _recipe_stub(tmp_path)
    stub = tmp_path / "trains.sh"  # succeeds without writing a checkpoint
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {args}\n")
    stub.chmod(0o755)
    env = dict(os.environ, ANATOMY_BIN=str(stub), ETTH1=str(csv), OUT=str(tmp_path / "run"),
               EPOCHS="2", AVERAGE=average)
    q = subprocess.run(["sh", "scripts/etth1.sh", "96"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    lines = q.stderr.splitlines()
    assert q.returncode == status and len(lines) == 1, q.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert args.exists() == (status == 1)
    assert not (tmp_path / "run" / f"average_last_{average}.safetensors").exists()


def _recipe_stub(tmp_path):
    """The repository, a stand-in trainer that writes its arguments to
    args.txt and fails with status 3, that file, and a one-column CSV."""
    import os
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    stub, args = tmp_path / "stub.sh", tmp_path / "args.txt"
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {args}\nexit 3\n")
    stub.chmod(0o755)
    csv = tmp_path / "ETTh1.csv"
    csv.write_text("date,a\n")
    return repo, stub, args, csv


@pytest.mark.parametrize("horizon,env_lr,want", [("96", None, "1e-3"), ("192", None, "2e-4"),
                                                 ("720", None, "2e-4"), ("336", "5e-4", "5e-4")])
def test_etth1_recipe_learning_rate(tmp_path, horizon, env_lr, want):
    """The recipe's default learning rate is validation's pick per horizon:
    1e-3 up to 96, 2e-4 beyond (1e-3 overfits there); LR overrides it. A
    stand-in binary records the trainer's arguments and fails, which stops
    the recipe right after it reports its settings."""
    import os
    import subprocess
    repo, stub, args, csv = _recipe_stub(tmp_path)
    env = dict(os.environ, ANATOMY_BIN=str(stub), ETTH1=str(csv), OUT=str(tmp_path / "run"))
    env.pop("LR", None)
    if env_lr:
        env["LR"] = env_lr
    q = subprocess.run(["sh", "scripts/etth1.sh", horizon], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    assert q.returncode != 0, q.stdout
    head = q.stdout.splitlines()[0]
    assert head.startswith(f"etth1: horizon {horizon},") and f", lr {want}," in head, head
    got = args.read_text().split()
    assert got[got.index("--lr") + 1] == want, got


@pytest.mark.parametrize("env_loss,want", [
    ({}, []), ({"LOSS": "mae"}, ["--loss", "mae"]),
    ({"LOSS": "huber", "HUBER_DELTA": "0.5"}, ["--loss", "huber", "--huber-delta", "0.5"]),
    ({"LOSS": "l2"}, None)])
def test_etth1_recipe_loss(tmp_path, env_loss, want):
    """LOSS and HUBER_DELTA reach the trainer as --loss and --huber-delta, and
    only when given (a resumed run keeps its checkpoint's); the first line
    names the loss; an unknown LOSS stops the recipe with status 2. A
    stand-in binary records the trainer's arguments and fails."""
    import os
    import subprocess
    repo, stub, args, csv = _recipe_stub(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("LOSS", "HUBER_DELTA")}
    env.update(env_loss, ANATOMY_BIN=str(stub), ETTH1=str(csv), OUT=str(tmp_path / "run"))
    q = subprocess.run(["sh", "scripts/etth1.sh", "96"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    if want is None:
        assert q.returncode == 2 and "LOSS" in q.stderr and "l2" in q.stderr, q.stderr
        assert not args.exists()
        return
    assert q.returncode != 0, q.stdout
    head = q.stdout.splitlines()[0]
    assert f", loss {env_loss.get('LOSS', 'mse')}" in head, head
    got = args.read_text().split()
    seen = [a for i, a in enumerate(got) if a in ("--loss", "--huber-delta") or
            (i and got[i - 1] in ("--loss", "--huber-delta"))]
    assert seen == want, got


def test_tsgpt_recipe_end_to_end(binary, tmp_path):
    """bench/tsgpt_etth1.sh on the real ETTh1, shrunk to the tiny preset and
    a few steps: trains, forecasts the whole test split with the batched,
    cached decoder and ends with `test mse X mae Y`, computed from the
    forecast CSV (one line per window, channel and step: every test window)
    and checked there against eval's own mse line; the PatchTST windows'
    line before it. A bad number stops it with status 2."""
    import os
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    csv = os.path.join(repo, "..", "shared", "data", "ett", "ETTh1.csv")
    assert os.path.isfile(csv), f"{csv} is missing (shared/data/ett)"
    env = dict(os.environ, ANATOMY_BIN=binary, ETTH1=csv, PRESET="tsgpt-tiny", HORIZON="8",
               LOOKBACK="24", STEPS="4", BATCH="64", EVAL_BATCH="200", THREADS="2",
               OUT=str(tmp_path / "run"))
    p = subprocess.run(["sh", "bench/tsgpt_etth1.sh"], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr + p.stdout[-2000:]
    out = p.stdout.splitlines()
    assert out[0].startswith("tsgpt-etth1: tsgpt-tiny, look-back 24, horizon 8, 4 steps"), out[0]
    lines = (tmp_path / "run" / "test_forecast.csv").read_text().splitlines()
    assert lines[0] == "batch,row,step,median,q10,q90,mean,target", lines[0]
    assert len(lines) - 1 == (2880 - 8 + 1) * 7 * 8, len(lines)
    pt = [re.fullmatch(r"test \(first (\d+) windows, as PatchTST evaluates\) mse (\S+) mae (\S+)", l)
          for l in out]
    pt = [x for x in pt if x]
    assert len(pt) == 1 and int(pt[0].group(1)) == (2880 - 8 + 1) // 128 * 128, out
    m = re.fullmatch(r"test mse (\S+) mae (\S+)", out[-2])
    assert m and 0 < float(m.group(1)) < 10 and 0 < float(m.group(2)) < 10, out
    d = np.genfromtxt(tmp_path / "run" / "test_forecast.csv", delimiter=",", names=True)
    mm = re.fullmatch(r"test, the paths' mean as the forecast: mse (\S+) mae (\S+)", out[-3])
    assert mm, out
    e = d["mean"] - d["target"]
    assert math.isclose(float(mm.group(1)), np.mean(e ** 2), rel_tol=1e-5), (mm.group(1), np.mean(e ** 2))
    assert math.isclose(float(mm.group(2)), np.mean(np.abs(e)), rel_tol=1e-5)
    assert out[-1].startswith("time: training "), out[-1]
    q = subprocess.run(["sh", "bench/tsgpt_etth1.sh"], cwd=repo, env=dict(env, STEPS="many"),
                       capture_output=True, text=True, timeout=60)
    assert q.returncode == 2 and "STEPS" in q.stderr and "many" in q.stderr, q.stderr


def test_etth1_recipe_resume(tmp_path):
    """RESUME=1 goes on from the latest checkpoint in OUT (--resume OUT in place
    of the model's options) and appends to OUT/train.log; with no checkpoint
    there yet it starts the run, its log new. A stand-in binary records the
    trainer's arguments and prints one line, then fails."""
    import os
    import subprocess
    repo, stub, args, csv = _recipe_stub(tmp_path)
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {args}\necho 'step from the stand-in'\nexit 3\n")
    out = tmp_path / "run"
    env = dict(os.environ, ANATOMY_BIN=str(stub), ETTH1=str(csv), OUT=str(out), RESUME="1")

    def recipe():
        q = subprocess.run(["sh", "scripts/etth1.sh", "96"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=60)
        assert q.returncode != 0, q.stdout
        return args.read_text().split(), (out / "train.log").read_text()

    got, log = recipe()
    assert "--model" in got and "--resume" not in got, got
    assert log == "step from the stand-in\n", log
    (out / "step_000100.safetensors").write_bytes(b"")
    got, log = recipe()
    assert got[got.index("--resume") + 1] == str(out) and "--model" not in got and "--preset" not in got, got
    assert log == "step from the stand-in\n" * 2, log
    env["RESUME"] = "0"
    got, log = recipe()
    assert "--model" in got and log == "step from the stand-in\n", (got, log)
