"""The ViT's CUDA code path end to end without a GPU: the emulated CUDA build
(anatomy-emu, the CUDA backend on the device emulator) trains a small ViT on
a random IDX image set and must match the CPU build within design.md's
tolerances (fp32 losses 1e-5 relative, bf16 1e-2); the checkpoint it writes
evaluates alike on both (loss and top-1 accuracy).

ANATOMY_BIN and ANATOMY_EMU_BIN name the binaries (default build/anatomy and
build/anatomy-emu). Images are fresh random bytes each run."""
import os
import re
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP = re.compile(r"^step\s+\d+/\d+ \| loss (\S+)", re.M)
# 28 x 28 grey in 16 patches of 7 x 7, L2 C32: the cheapest ViT preset
MODEL = ["--model", "vit", "--preset", "vit-mnist-tiny"]


def binary(env, default):
    path = os.environ.get(env) or os.path.join(REPO, "build", default)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make {'emu' if 'emu' in default else 'all'}` "
                    f"or set {env}", pytrace=False)
    return path


def run(env, default, *args):
    path = binary(env, default)
    e = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="passive",
             ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0")
    p = subprocess.run([path] + [str(a) for a in args], capture_output=True, text=True, env=e,
                       timeout=600)
    assert p.returncode == 0, f"{path} {' '.join(map(str, args))}: exit {p.returncode}\n{p.stderr}"
    return p.stdout


def cpu(*args):
    return run("ANATOMY_BIN", "anatomy", *args)


def emu(*args):
    return run("ANATOMY_EMU_BIN", "anatomy-emu", *args)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng()
    n = 40
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(np.array([0x803, n, 28, 28], ">u4").tobytes()
                    + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        np.array([0x801, n], ">u4").tobytes() + rng.integers(0, 10, n).astype(np.uint8).tobytes())
    return img


def parse_metric(out, name):
    vals = [float(l.split()[1]) for l in out.splitlines() if l.startswith(name + " ")]
    assert len(vals) == 1, f"no single '{name}' line in:\n{out}"
    return vals[0]


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_vit_train_matches_cpu(images, tmp_path, precision, tol):
    args = ["train", *MODEL, "--data", images, "--batch", "4", "--steps", "3", "--lr", "3e-3",
            "--warmup", "1", "--seed", "7"]
    c = [float(x) for x in STEP.findall(cpu(*args, "--device", "cpu", "--out", tmp_path / "c"))]
    g = [float(x) for x in STEP.findall(emu(*args, "--device", "cuda", "--precision", precision,
                                            "--out", tmp_path / "g"))]
    assert len(c) == len(g) == 3
    r = np.abs(np.array(g) - np.array(c)) / np.abs(np.array(c))
    assert r.max() < tol, f"{precision}: cuda {g} vs cpu {c} (max rel {r.max():.2e})"
    ev = ["eval", "--init", tmp_path / "g", "--data", images, "--batch", "8", "--batches", "2",
          "--split", "test"]
    a = cpu(*ev, "--device", "cpu")
    b = emu(*ev, "--device", "cuda", "--precision", precision)
    la, lb = parse_metric(a, "loss"), parse_metric(b, "loss")
    assert abs(la - lb) / abs(la) < tol, f"eval loss: cpu {la} cuda {lb}"
    if precision == "fp32":  # bf16 logits may swap a near tie
        assert parse_metric(a, "accuracy") == parse_metric(b, "accuracy"), (a, b)
