"""The recurrent and feed-forward LMs through the CUDA code path without a GPU:
build/anatomy-emu (the CUDA backend on the device emulator; its cuDNN RNN
wrapper serves the recurrence from the CPU op, everything around it, the fp32
staging, conversions and the model, runs as on a GPU) trains an LSTM, an
Elman RNN and an FFNN a few steps and must match the CPU backend
(build/anatomy) within design.md's tolerances: fp32 losses to 1e-5 relative,
bf16 losses to 1e-2. The token stream holds end-of-text tokens, so the state
resets inside micro-batches, and the state is carried across them. The
checkpoint the CUDA run wrote evaluates the same on the CPU.
ANATOMY_BIN / ANATOMY_EMU_BIN override the binaries; ANATOMY_TEST_SEED
replays the tokens."""
import os
import re
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP = re.compile(r"^step\s+\d+/\d+ \| loss (\S+)", re.M)
SEED = int(os.environ.get("ANATOMY_TEST_SEED") or np.random.SeedSequence().entropy % (1 << 31))
V, EOT = 260, 259
MODELS = {
    "lstm": ["--preset", "lstm-tiny", "--vocab-size", V, "--hidden", 24, "--layers", 2,
             "--eot", EOT],
    "rnn": ["--preset", "rnn-tiny", "--vocab-size", V, "--hidden", 16, "--eot", EOT],
    "ffnn": ["--preset", "ffnn-tiny", "--vocab-size", V, "--window", 3, "--direct"],
}


def binary(name):
    env = {"anatomy": "ANATOMY_BIN", "anatomy-emu": "ANATOMY_EMU_BIN",
           "anatomy-cuda": "ANATOMY_CUDA_BIN"}[name]
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
    rng = np.random.default_rng(SEED)
    tokens = rng.integers(0, V - 1, 3000).astype(np.uint16)
    tokens[rng.integers(0, len(tokens), 12)] = EOT  # documents end inside micro-batches
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    path = tmp_path / "tokens.bin"
    path.write_bytes(header.tobytes() + tokens.tobytes())
    return path


@pytest.mark.parametrize("family,precision,tol,drop", [
    ("lstm", "fp32", 1e-5, 0), ("lstm", "bf16", 1e-2, 0), ("rnn", "fp32", 1e-5, 0),
    ("ffnn", "fp32", 1e-5, 0), ("ffnn", "bf16", 1e-2, 0),
    ("lstm", "fp32", 1e-5, 0.25), ("ffnn", "fp32", 1e-5, 0.25)])
def test_train_matches_cpu(shard, tmp_path, family, precision, tol, drop):
    args = ["train", *MODELS[family], "--data", shard, "--batch", 3, "--seq", 16, "--steps", 4,
            "--lr", "1e-2", "--seed", SEED % 1000, "--dropout", drop]
    cpu = [float(x) for x in STEP.findall(run("anatomy", *args, "--device", "cpu"))]
    gpu = [float(x) for x in STEP.findall(run("anatomy-emu", *args, "--device", "cuda",
                                              "--precision", precision,
                                              "--out", tmp_path / "run"))]
    assert len(cpu) == len(gpu) == 4
    rel = np.abs(np.array(gpu) - np.array(cpu)) / np.abs(np.array(cpu))
    assert rel.max() < tol, (f"{family} {precision}: cuda {gpu} vs cpu {cpu} "
                             f"(max rel {rel.max():.2e}, ANATOMY_TEST_SEED={SEED})")
    # the checkpoint the CUDA run wrote evaluates the same on the CPU (state carried
    # across the two micro-batches)
    ck = tmp_path / "run"
    ev = ["eval", "--init", ck, "--data", shard, "--batch", 3, "--seq", 16, "--batches", 2]
    a = float(run("anatomy", *ev).split()[1])
    b = float(run("anatomy-emu", *ev, "--device", "cuda", "--precision", precision).split()[1])
    assert abs(a - b) / abs(a) < tol, f"{family} eval: cpu {a} cuda {b} (ANATOMY_TEST_SEED={SEED})"


def have_gpu():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.parametrize("family,precision,tol", [("lstm", "fp32", 1e-5), ("rnn", "fp32", 1e-5),
                                                  ("lstm", "bf16", 1e-2)])
def test_cudnn_matches_cpu(shard, tmp_path, family, precision, tol):
    """cuDNN itself (build/anatomy-cuda, native): only where a GPU answers."""
    if not have_gpu():
        pytest.skip("no GPU (nvidia-smi -L fails): cuDNN is checked on a lent GPU only")
    args = ["train", *MODELS[family], "--data", shard, "--batch", 3, "--seq", 16, "--steps", 4,
            "--lr", "1e-2", "--seed", SEED % 1000]
    cpu = [float(x) for x in STEP.findall(run("anatomy", *args, "--device", "cpu"))]
    gpu = [float(x) for x in STEP.findall(run("anatomy-cuda", *args, "--device", "cuda",
                                              "--precision", precision))]
    assert len(cpu) == len(gpu) == 4
    rel = np.abs(np.array(gpu) - np.array(cpu)) / np.abs(np.array(cpu))
    assert rel.max() < tol, (f"{family} {precision} cuDNN: {gpu} vs cpu {cpu} "
                             f"(max rel {rel.max():.2e}, ANATOMY_TEST_SEED={SEED})")



@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_resume_carries_the_state(shard, tmp_path, precision, tol):
    """On the CUDA backend too a checkpoint carries the LSTM's state: 8 steps
    equal 4, save, resume, 4 more, bit for bit (bf16 too: the resume rounds
    the params as the last step did), and the checkpoint resumes on the CPU
    to 1e-5 (fp32) or bf16's 1e-2."""
    args = ["--data", shard, "--batch", 3, "--seq", 16, "--lr", "1e-2", "--seed", SEED % 1000,
            "--schedule", "constant", "--steps", 8]
    gpu = ["--device", "cuda", "--precision", precision]
    full = run("anatomy-emu", "train", *MODELS["lstm"], *args, *gpu, "--ckpt-every", 4,
               "--out", tmp_path / "full")
    ck = tmp_path / "full" / "step_000004.safetensors"
    res = run("anatomy-emu", "train", "--resume", ck, *args, *gpu)
    assert STEP.findall(res) == STEP.findall(full)[4:], (res, full)
    cpu = [float(x) for x in STEP.findall(run("anatomy", "train", "--resume", ck, *args,
                                              "--device", "cpu"))]
    want = [float(x) for x in STEP.findall(full)[4:]]
    rel = np.abs(np.array(cpu) - np.array(want)) / np.array(want)
    assert rel.max() < tol, (cpu, want, f"ANATOMY_TEST_SEED={SEED}")
