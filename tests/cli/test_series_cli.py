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
    assert "dropout 0.1 ->" in out[0], out[0]
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


@pytest.mark.parametrize("horizon,env_lr,want", [("96", None, "1e-3"), ("192", None, "2e-4"),
                                                 ("720", None, "2e-4"), ("336", "5e-4", "5e-4")])
def test_etth1_recipe_learning_rate(tmp_path, horizon, env_lr, want):
    """The recipe's default learning rate is validation's pick per horizon:
    1e-3 up to 96, 2e-4 beyond (1e-3 overfits there); LR overrides it. A
    stand-in binary records the trainer's arguments and fails, which stops
    the recipe right after it reports its settings."""
    import os
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    stub, args = tmp_path / "stub.sh", tmp_path / "args.txt"
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {args}\nexit 3\n")
    stub.chmod(0o755)
    csv = tmp_path / "ETTh1.csv"
    csv.write_text("date,a\n")
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
    assert lines[0] == "batch,row,step,median,q10,q90,target", lines[0]
    assert len(lines) - 1 == (2880 - 8 + 1) * 7 * 8, len(lines)
    pt = [re.fullmatch(r"test \(first (\d+) windows, as PatchTST evaluates\) mse (\S+) mae (\S+)", l)
          for l in out]
    pt = [x for x in pt if x]
    assert len(pt) == 1 and int(pt[0].group(1)) == (2880 - 8 + 1) // 128 * 128, out
    m = re.fullmatch(r"test mse (\S+) mae (\S+)", out[-2])
    assert m and 0 < float(m.group(1)) < 10 and 0 < float(m.group(2)) < 10, out
    assert out[-1].startswith("time: training "), out[-1]
    q = subprocess.run(["sh", "bench/tsgpt_etth1.sh"], cwd=repo, env=dict(env, STEPS="many"),
                       capture_output=True, text=True, timeout=60)
    assert q.returncode == 2 and "STEPS" in q.stderr and "many" in q.stderr, q.stderr
