"""`eval` and the training loop's validation loss are means over every scored
item (here: forecast elements), not means of per-batch means: a last partial
batch counts for its rows only. (tests/ref/test_vit_parity.py checks the same
against transformers' cross-entropy over a whole image set.)"""
import re

import numpy as np

from test_series_cli import TINY, good_csv


def figures(out):
    return {k: float(v) for k, v in re.findall(r"^(loss|mse|mae) (\S+)$", out, re.M)}


def test_partial_last_batch_counts_its_rows_only(run, tmp_path):
    path = good_csv(tmp_path / "good.csv", rows=400, seed=11)
    rc, out, err = run("train", *TINY, "--data", path, "--steps", 3, "--batch", 8,
                       "--out", tmp_path / "run")
    assert rc == 0, err
    ck = tmp_path / "run" / "step_000003.safetensors"
    # 57 test windows: one batch of 57, or 28 + 28 + 1
    rc, out, err = run("eval", "--init", ck, "--data", path, "--split", "test", "--batch", 57)
    assert rc == 0, err
    whole = figures(out)
    fc = tmp_path / "fc.csv"
    rc, out, err = run("eval", "--init", ck, "--data", path, "--split", "test", "--batch", 28,
                       "--forecast", fc)
    assert rc == 0, err
    parts = figures(out)
    rows = np.loadtxt(fc, delimiter=",", skiprows=1)
    assert len(np.unique(rows[:, 0])) == 3  # three batches, the last of one window
    mse = ((rows[:, 3] - rows[:, 4]) ** 2).mean()  # every element once
    assert abs(parts["loss"] - mse) <= 1e-5 * mse, (parts, mse)
    assert abs(parts["loss"] - whole["loss"]) <= 1e-5 * whole["loss"], (parts, whole)


def test_validation_loss_counts_its_rows_only(run, tmp_path):
    path = good_csv(tmp_path / "good.csv", rows=400, seed=12)
    # 17 validation windows: 3 micro-batches of 8 (8 + 8 + 1)
    rc, out, err = run("train", *TINY, "--data", path, "--val-data", path, "--steps", 3,
                       "--batch", 8, "--val-batches", 3, "--out", tmp_path / "run")
    assert rc == 0, err
    val = re.search(r"^val\s+3/3 \| loss (\S+) \| mse (\S+)", out, re.M)
    assert val, out
    rc, out, err = run("eval", "--init", tmp_path / "run", "--data", path, "--split", "val",
                       "--batch", 17)
    assert rc == 0, err
    whole = figures(out)
    assert abs(float(val[1]) - whole["loss"]) <= 1e-5 * whole["loss"], (val[0], whole)
    assert abs(float(val[1]) - float(val[2])) <= 1e-5 * whole["loss"], val[0]
