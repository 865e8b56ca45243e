"""The whole CUDA code path, end to end, without a GPU: build/anatomy-emu
(the CUDA backend on the device emulator) trains and evaluates a small GPT-2
and must match the CPU backend (build/anatomy) within design.md's tolerances:
fp32 losses to 1e-5 relative, bf16 losses to 1e-2."""
import os
import re
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP = re.compile(r"^step\s+\d+/\d+ \| loss (\S+)", re.M)
TINY = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]


def binary(name):
    # ANATOMY_BUILD: another build directory (make BUILD=...)
    path = os.path.join(os.environ.get("ANATOMY_BUILD") or os.path.join(REPO, "build"), name)
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
    tokens = np.random.default_rng().integers(0, 256, 4000).astype(np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    path = tmp_path / "tokens.bin"
    path.write_bytes(header.tobytes() + tokens.tobytes())
    return path


# extra: options of the CUDA run only (--recompute); both: of both runs
# (--dropout: the mask is a function of seed and element, so both drop the same)
@pytest.mark.parametrize("precision,tol,extra,both", [
    ("fp32", 1e-5, [], []), ("bf16", 1e-2, [], []), ("fp32", 1e-5, ["--recompute"], []),
    ("fp32", 1e-5, [], ["--dropout", "0.2"]), ("bf16", 1e-2, [], ["--dropout", "0.2"]),
    # no biases (nanoGPT's bias=False): NULL biases through every op
    ("fp32", 1e-5, [], ["--no-bias"]), ("bf16", 1e-2, [], ["--no-bias"])])
def test_train_matches_cpu(shard, tmp_path, precision, tol, extra, both):
    args = ["train", *TINY, "--data", shard, "--batch", "2", "--seq", "32", "--steps", "6",
            "--lr", "3e-3", "--warmup", "2", "--seed", "3", *both]
    cpu = [float(x) for x in STEP.findall(run("anatomy", *args, "--device", "cpu"))]
    gpu = [float(x) for x in STEP.findall(run("anatomy-emu", *args, *extra, "--device", "cuda",
                                              "--precision", precision,
                                              "--out", tmp_path / "run"))]
    assert len(cpu) == len(gpu) == 6
    rel = np.abs(np.array(gpu) - np.array(cpu)) / np.abs(np.array(cpu))
    assert rel.max() < tol, f"{precision}: cuda {gpu} vs cpu {cpu} (max rel {rel.max():.2e})"
    # the checkpoint the CUDA run wrote evaluates the same on the CPU
    ck = tmp_path / "run"
    cpu_eval = run("anatomy", "eval", "--init", ck, "--data", shard, "--batch", "2", "--seq",
                   "32", "--batches", "2")
    gpu_eval = run("anatomy-emu", "eval", "--init", ck, "--data", shard, "--batch", "2",
                   "--seq", "32", "--batches", "2", "--device", "cuda", "--precision", precision)
    a, b = float(cpu_eval.split()[1]), float(gpu_eval.split()[1])
    assert abs(a - b) / abs(a) < tol, f"eval: cpu {a} cuda {b}"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_resume_is_exact(shard, tmp_path, precision):
    """On the CUDA path a resumed run continues bit for bit: 6 steps equal 3,
    save, resume, 3 more, in the printed losses and norms and in every tensor
    of the last checkpoint. In bf16 the params are the master weights rounded
    stochastically by the last step, which the resume must redo (rounding to
    nearest on load moves the loss from the first resumed step on)."""
    from safetensors.numpy import load_file
    line = re.compile(r"^step\s+\d+/\d+ \| loss \S+ \| norm \S+", re.M)
    args = ["--data", shard, "--batch", "2", "--seq", "32", "--steps", "6", "--lr", "1e-2",
            "--schedule", "constant", "--seed", np.random.default_rng().integers(1, 1 << 40),
            "--dropout", "0.1", "--device", "cuda", "--precision", precision]
    full = run("anatomy-emu", "train", *TINY, *args, "--ckpt-every", "3", "--out",
               tmp_path / "full")
    ck = tmp_path / "full" / "step_000003.safetensors"
    res = run("anatomy-emu", "train", "--resume", ck, *args, "--out", tmp_path / "res")
    assert line.findall(res) == line.findall(full)[3:], (res, full)
    a = load_file(str(tmp_path / "full" / "step_000006.safetensors"))
    b = load_file(str(tmp_path / "res" / "step_000006.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_attention_backward_choice(shard, tmp_path):
    """ANATOMY_ATTN_BWD chooses the flash backward (bf16, head size 64 here):
    the fused and the split one train to the same losses within bf16's
    tolerance; any other value stops the run with a one-line error."""
    args = ["train", *TINY, "--data", shard, "--batch", "2", "--seq", "32", "--steps", "3",
            "--lr", "3e-3", "--seed", "3", "--device", "cuda", "--precision", "bf16"]
    losses = {}
    for variant in ("fused", "split"):
        os.environ["ANATOMY_ATTN_BWD"] = variant
        try:
            losses[variant] = [float(x) for x in STEP.findall(run("anatomy-emu", *args))]
        finally:
            del os.environ["ANATOMY_ATTN_BWD"]
    assert len(losses["fused"]) == len(losses["split"]) == 3
    rel = np.abs(np.array(losses["fused"]) - np.array(losses["split"])) / np.array(losses["split"])
    assert rel.max() < 1e-2, losses
    env = dict(os.environ, ANATOMY_ATTN_BWD="fastest",
               ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0")
    p = subprocess.run([binary("anatomy-emu")] + [str(a) for a in args], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "ANATOMY_ATTN_BWD=fastest: expected fused or split" in err[0], p.stderr


def test_default_device(shard, tmp_path):
    """No --device: cuda where the build has a device (the emulator counts as
    one), else cpu; the "training ..." header names the choice."""
    args = ["train", *TINY, "--data", shard, "--batch", "2", "--seq", "16", "--steps", "1",
            "--seed", "5"]
    gpu = run("anatomy-emu", *args, "--precision", "fp32", "--out", tmp_path / "g")
    cpu = run("anatomy", *args, "--out", tmp_path / "c")
    assert re.search(r"^training .*, cuda\b", gpu, re.M), gpu
    assert re.search(r"^training .*, cpu\b", cpu, re.M), cpu


def test_greedy_sampling_matches_cpu(tmp_path):
    """Incremental decoding on the CUDA path (the attention_decode kernel and
    one-row ops over the key/value cache): greedy tokens equal the CPU's. The
    weights are wide (std 0.3) so greedy choices have clear margins; bf16
    must at least run to the requested count."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(int(np.random.default_rng().integers(1 << 31)))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=48, n_embd=64, n_layer=2,
                                       n_head=4, activation_function="gelu_new",
                                       layer_norm_epsilon=1e-5))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    args = ["sample", "--init", tmp_path / "hf", "--tokenizer", "bytes", "--prompt", "to be",
            "--tokens", "30", "--temperature", "0", "--ids"]
    cpu = run("anatomy", *args, "--device", "cpu").split()
    gpu = run("anatomy-emu", *args, "--device", "cuda", "--precision", "fp32").split()
    assert cpu == gpu and len(cpu) == 30, f"cpu {cpu}\ncuda {gpu}"
    bf = run("anatomy-emu", *args, "--device", "cuda", "--precision", "bf16").split()
    assert len(bf) == 30
