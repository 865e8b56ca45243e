"""BERT through the CUDA code path without a GPU: build/anatomy-emu (the CUDA
backend on the device emulator) trains a tiny BERT (masked LM, with and
without next-sentence prediction) and must match the CPU backend
(build/anatomy) within design.md's tolerances: fp32 losses to 1e-5
relative, bf16 losses to 1e-2. The checkpoint the CUDA run wrote evaluates
the same on the CPU. ANATOMY_BIN / ANATOMY_EMU_BIN override the binaries."""
import os
import re
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP = re.compile(r"^step\s+\d+/\d+ \| loss (\S+)", re.M)
TINY = ["--preset", "bert-tiny", "--vocab-size", "260", "--max-seq", "16"]
SEED = int(os.environ.get("ANATOMY_TEST_SEED") or np.random.SeedSequence().entropy % (1 << 31))


def binary(name):
    env = {"anatomy": "ANATOMY_BIN", "anatomy-emu": "ANATOMY_EMU_BIN"}[name]
    path = os.environ.get(env) or os.path.join(REPO, "build", name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make {'emu' if 'emu' in name else 'all'}`",
                    pytrace=False)
    return path


def run(name, *args):
    env = dict(os.environ, OMP_NUM_THREADS="2",
               ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0")
    p = subprocess.run([binary(name)] + [str(a) for a in args], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, f"{name} {' '.join(map(str, args))}: exit {p.returncode}\n{p.stderr}"
    return p.stdout


@pytest.fixture
def shard(tmp_path):
    tokens = np.random.default_rng(SEED).integers(0, 256, 3000).astype(np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    path = tmp_path / "tokens.bin"
    path.write_bytes(header.tobytes() + tokens.tobytes())
    return path


@pytest.mark.parametrize("precision,tol,nsp", [("fp32", 1e-5, ["--nsp"]), ("bf16", 1e-2, [])])
def test_train_matches_cpu(shard, tmp_path, precision, tol, nsp):
    args = ["train", *TINY, *nsp, "--data", shard, "--batch", "2", "--seq", "16", "--steps", "3",
            "--lr", "3e-3", "--warmup", "1", "--seed", SEED % 1000]
    cpu = [float(x) for x in STEP.findall(run("anatomy", *args, "--device", "cpu"))]
    gpu = [float(x) for x in STEP.findall(run("anatomy-emu", *args, "--device", "cuda",
                                              "--precision", precision,
                                              "--out", tmp_path / "run"))]
    assert len(cpu) == len(gpu) == 3
    rel = np.abs(np.array(gpu) - np.array(cpu)) / np.abs(np.array(cpu))
    assert rel.max() < tol, (f"{precision} (seed {SEED}): cuda {gpu} vs cpu {cpu} "
                             f"(max rel {rel.max():.2e})")
    ck = tmp_path / "run" / "step_000003.safetensors"
    ev = ["eval", "--init", ck, "--data", shard, "--split", "val", "--batch", "2", "--seq", "16",
          "--batches", "1"]
    a = dict(l.split() for l in run("anatomy", *ev).splitlines() if len(l.split()) == 2)
    b = dict(l.split() for l in run("anatomy-emu", *ev, "--device", "cuda", "--precision",
                                    precision).splitlines() if len(l.split()) == 2)
    assert "mlm_accuracy" in a and ("nsp_accuracy" in a) == bool(nsp), a
    la, lb = float(a["loss"]), float(b["loss"])
    assert abs(la - lb) / abs(la) < tol, f"eval (seed {SEED}): cpu {la} cuda {lb}"
