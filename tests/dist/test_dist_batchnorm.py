"""Batchnorm's running statistics (patchts --norm batch) over several ranks:
each rank updates them from its own micro-batches, and after every step
they are replaced by their mean over the ranks, so that every rank
validates, saves and resumes with the same statistics. Checked against the
single-process updates of the same micro-batches (learning rate 0: every
norm's input, and so each micro-batch's statistics, stays the same), and
by a bit-exact two-rank resume."""
import math

import numpy as np
from safetensors.numpy import load_file

from test_dist import losses, ok, seed

RUN = ["train", "--batch", "8", "--threads", "1"]
MODEL = ["--model", "patchts", "--preset", "patchts-tiny", "--channels", "2", "--post-ln", "1",
         "--norm", "batch"]
BN = RUN + MODEL


def csv(tmp_path):
    rng = np.random.default_rng()
    path = tmp_path / "series.csv"
    with open(path, "w") as f:
        f.write("date,a,b\n")
        for r in range(400):
            f.write(f"t{r},{math.sin(0.3 * r) + 0.3 * rng.normal():.6f},"
                    f"{2 * math.cos(0.1 * r) + 0.3 * rng.normal():.6f}\n")
    return str(path)


def test_running_statistics_are_the_ranks_mean(launch, tmp_path):
    data = csv(tmp_path)
    common = BN + ["--data", data, "--lr", "0", "--seed", seed()]
    # one process, two steps: micro-batch 0, then 1
    ok(launch(0, *common, "--steps", "2", "--ckpt-every", "1", "--out", tmp_path / "one"))
    # two ranks, one step: rank 0 reads micro-batch 0, rank 1 micro-batch 1
    ok(launch(2, *common, "--steps", "1", "--out", tmp_path / "two"))
    s1 = load_file(str(tmp_path / "one" / "step_000001.safetensors"))
    s2 = load_file(str(tmp_path / "one" / "step_000002.safetensors"))
    two = load_file(str(tmp_path / "two" / "step_000001.safetensors"))
    names = [k for k in two if k.endswith(("running_mean", "running_var"))]
    assert len(names) == 4, sorted(two)
    for k in names:
        start = 1.0 if k.endswith("var") else 0.0
        a, b = s1[k].astype(np.float64), s2[k].astype(np.float64)
        # each micro-batch's own update from the start: 0.1 (stat - start)
        d0, d1 = a - start, b - 0.9 * a - 0.1 * start
        want = start + (d0 + d1) / 2
        err = np.abs(two[k] - want).max() / max(np.abs(want).max(), 1e-3)
        assert err < 1e-5, (k, two[k], want)


def test_resume_two_ranks_is_exact(launch, tmp_path):
    data = csv(tmp_path)
    common = RUN + ["--data", data, "--lr", "3e-3", "--shuffle", "--dropout", "0.1",
                    "--seed", seed(), "--steps", "6"]
    ok(launch(2, *common, *MODEL, "--ckpt-every", "3", "--out", tmp_path / "full"))
    ok(launch(2, *common, "--resume", tmp_path / "full" / "step_000003.safetensors",
              "--out", tmp_path / "res"))
    full, res = losses(tmp_path / "full"), losses(tmp_path / "res")
    assert sorted(res) == [4, 5, 6] and all(full[s] == res[s] for s in res), (full, res)
    a = load_file(str(tmp_path / "full" / "step_000006.safetensors"))
    b = load_file(str(tmp_path / "res" / "step_000006.safetensors"))
    assert sorted(a) == sorted(b) and "h.0.bn_1.running_var" in a
    for k in a:
        assert np.array_equal(a[k], b[k]), k
