"""The time-series families on the CUDA code path without a GPU: anatomy-emu
(the CUDA backend on the device emulator) trains patchts and tsgpt for a few
steps on a small CSV and must match the CPU backend within design.md's
tolerances (fp32 losses 1e-5 relative, bf16 1e-2); the checkpoint the CUDA
run wrote evaluates alike (loss, mse, mae) on both; patchts also with
--loss huber and --loss mae, and with --norm batch.

ANATOMY_BIN and ANATOMY_EMU_BIN pick the binaries (default build/anatomy and
build/anatomy-emu)."""
import math
import os
import re
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP = re.compile(r"^step\s+\d+/\d+ \| loss (\S+)", re.M)
FIG = re.compile(r"^(loss|mse|mae) (\S+)$", re.M)
PATCHTS = ["--model", "patchts", "--preset", "patchts-tiny", "--channels", 2]
PATCHTS_POST = PATCHTS + ["--post-ln", 1]      # PatchTST's block order
# the other regression losses (the loss op's kinds, in each row's RevIN units)
PATCHTS_HUBER = PATCHTS_POST + ["--loss", "huber", "--huber-delta", "0.5"]
PATCHTS_MAE = PATCHTS + ["--loss", "mae"]
# PatchTST's BatchNorm in the post-LN blocks (batchnorm.cu; evaluation with
# the running statistics the CUDA run saved)
PATCHTS_BN = PATCHTS_POST + ["--norm", "batch", "--dropout", "0.1"]
TSGPT = ["--model", "tsgpt", "--preset", "tsgpt-tiny", "--channels", 2, "--samples", 3]


def binary(emu):
    var, name = ("ANATOMY_EMU_BIN", "anatomy-emu") if emu else ("ANATOMY_BIN", "anatomy")
    path = os.environ.get(var) or os.path.join(REPO, "build", name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make {'emu' if emu else 'all'}` or set {var}",
                    pytrace=False)
    return path


def run(emu, *args):
    env = dict(os.environ, OMP_NUM_THREADS="2",
               ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0")
    cmd = [binary(emu)] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr}"
    return p.stdout


@pytest.fixture
def csv(tmp_path):
    rng = np.random.default_rng()
    path = tmp_path / "series.csv"
    with open(path, "w") as f:
        f.write("date,a,b\n")
        ph = rng.uniform(0, 6, 2)
        for r in range(300):
            f.write(f"t{r},{math.sin(0.3 * r + ph[0]) + 0.2 * rng.normal():.6f},"
                    f"{2 * math.cos(0.1 * r + ph[1]) + 0.2 * rng.normal():.6f}\n")
    return path


@pytest.mark.parametrize("model,precision,tol", [(PATCHTS, "fp32", 1e-5), (PATCHTS, "bf16", 1e-2),
                                                 (PATCHTS_POST, "fp32", 1e-5),
                                                 (PATCHTS_HUBER, "fp32", 1e-5),
                                                 (PATCHTS_MAE, "bf16", 1e-2),
                                                 (PATCHTS_BN, "fp32", 1e-5),
                                                 (PATCHTS_BN, "bf16", 1e-2),
                                                 (TSGPT, "fp32", 1e-5)])
def test_train_matches_cpu(csv, tmp_path, model, precision, tol):
    args = ["train", *model, "--data", csv, "--batch", 4, "--steps", 4, "--lr", "3e-3",
            "--warmup", 1, "--seed", 3, "--shuffle"]
    cpu = [float(x) for x in STEP.findall(run(False, *args, "--device", "cpu"))]
    gpu = [float(x) for x in STEP.findall(run(True, *args, "--device", "cuda", "--precision",
                                              precision, "--out", tmp_path / "run"))]
    assert len(cpu) == len(gpu) == 4
    rel = np.abs(np.array(gpu) - np.array(cpu)) / np.abs(np.array(cpu))
    assert rel.max() < tol, f"{precision}: cuda {gpu} vs cpu {cpu} (max rel {rel.max():.2e})"
    ck = sorted((tmp_path / "run").glob("step_*.safetensors"))[-1]
    # tsgpt's metrics sample horizon x samples decoder passes: one micro-batch
    nb = 1 if model is TSGPT else 2
    ev = ["eval", "--init", ck, "--data", csv, "--split", "val", "--batch", 4, "--batches", nb]
    a = dict(FIG.findall(run(False, *ev)))
    b = dict(FIG.findall(run(True, *ev, "--device", "cuda", "--precision", precision)))
    assert set(a) == set(b) == {"loss", "mse", "mae"}, (a, b)
    # tsgpt's mse/mae come from sampled paths: equal only where the logits
    # are, so only its loss is compared
    keys = ["loss"] if model is TSGPT else ["loss", "mse", "mae"]
    for k in keys:
        x, y = float(a[k]), float(b[k])
        assert abs(x - y) / abs(x) < tol, f"eval {k}: cpu {x} cuda {y}"
