"""The native build and the GPU bundle, proven on a machine without a GPU.

`make test-gpu-bundle` builds the native binaries and build/gpu/ (make
gpu-bundle) first, then runs these tests:
  - every native binary of the normal build links, loads its libraries and
    runs its command line; asked for a GPU, it says in one line there is none;
  - the bundle holds what a lease runs, is under 40 MiB, and every binary in
    it resolves its libraries through run.sh's lookup;
  - build/gpu/run.sh --rehearse runs every step end to end with the emulator
    standing in for the device: verdicts in order, figures in the summary, a
    failing step (llm.c, which needs a GPU) and a timed-out step do not stop
    the later ones, and a spent budget skips what is left;
  - build/gpu/run.sh --rehearse --vit trains the ViT recipe for three seeds
    side by side on the emulator (64 images) and sums up their test top-1.
Without nvcc the native tests skip, saying so.
"""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("ANATOMY_BUILD", "build"))
BUNDLE = os.path.join(BUILD, "gpu")
HAVE_NVCC = bool(os.environ.get("ANATOMY_NVCC", "x"))
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found: nothing native was built")

NATIVE = ["anatomy-cuda", "cuda/tests/test_cuda_ops", "cuda/tests/test_cuda_seq_ops", "bench_attention"]
BUNDLE_FILES = ["run.sh", "BUILD_INFO", "lib.tar.xz", "lib/libanatomy_gpu.so", "bin/anatomy-cuda",
                "bin/test_cuda_ops", "bin/test_cuda_seq_ops", "bin/bench_attention", "bin/bench_ops",
                "bin/allreduce_bench", "bin/llmc_train_gpt2cu", "py/torch_gpt2_gpu.py", "py/torch_sdpa.py",
                "data/tinyshakespeare_train_000000.bin", "data/tinyshakespeare_val_000000.bin"]
FIRST_CALL_STEPS = ["env", "kernels", "parity", "memcheck", "ceilings", "tokens", "gpt2-anatomy", "gpt2-llmc",
                    "gpt2-torch", "attention-ours", "attention-sdpa", "ops", "gpt2-torch-compile"]


def run(cmd, env=None, timeout=600):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


@needs_nvcc
@pytest.mark.parametrize("name", NATIVE)
def test_native_binary_links_and_loads(name):
    path = os.path.join(BUILD, name)
    assert os.access(path, os.X_OK), f"{path}: not built"
    ldd = run(["ldd", path]).stdout
    assert "not found" not in ldd, ldd
    for lib in ("libcublasLt", "libcudnn"):
        assert lib in ldd, f"{name} does not link {lib}"


@needs_nvcc
def test_native_trainer_runs_and_names_the_missing_gpu():
    exe = os.path.join(BUILD, "anatomy-cuda")
    assert run([exe, "--help"]).returncode == 0
    r = run([exe, "info", "--preset", "d2"])
    assert r.returncode == 0 and re.search(r"^layers +2$", r.stdout, re.M), r.stdout + r.stderr
    tok = os.path.join(BUILD, "native-link-tokens.bin")
    run(["python3", "bench/torch_gpt2_gpu.py", "--write-shard", tok, "--ntokens", "5000", "--vocab", "512"])
    r = run([exe, "train", "--preset", "d2", "--vocab-size", "512", "--device", "cuda", "--data", tok,
             "--batch", "2", "--seq", "32", "--steps", "1", "--out", os.path.join(BUILD, "native-link-run")])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [l for l in r.stderr.strip().splitlines() if l]
    assert re.fullmatch(r"anatomy: error: --device cuda: no CUDA device available \(.*\)", r.stderr.strip()), r.stderr


@needs_nvcc
def test_bundle_holds_what_a_lease_runs_under_40_mib():
    missing = [f for f in BUNDLE_FILES if not os.path.exists(os.path.join(BUNDLE, f))]
    assert not missing, f"not in the bundle: {missing}"
    natives = os.listdir(os.path.join(BUNDLE, "native"))
    assert natives and all(os.path.exists(os.path.join(BUNDLE, "emu-out", n + ".out")) for n in natives)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(BUNDLE) for f in fs
               if not d.startswith(os.path.join(BUNDLE, "out")))
    assert size < 40 * 2**20, f"bundle is {size / 2**20:.1f} MiB"
    info = open(os.path.join(BUNDLE, "BUILD_INFO")).read()
    assert re.search(r"^commit [0-9a-f]{7}", info, re.M), info
    # nothing in it needs an instruction set beyond x86-64-v3, nor OpenMPI
    for b in ("bin/anatomy-cuda", "lib/libanatomy_gpu.so"):
        assert "libmpi" not in run(["ldd", os.path.join(BUNDLE, b)]).stdout


def verdicts(text):
    return re.findall(r"^== ([a-z0-9-]+): (ok|FAILED|TIMED OUT|SKIPPED)", text, re.M)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    if not HAVE_NVCC:
        pytest.skip("nvcc not found: no bundle to rehearse")
    out = tmp_path_factory.mktemp("rehearse")
    # torch.compile given 2 s: the step must time out and the summary still come
    r = run([os.path.join(BUNDLE, "run.sh"), "--rehearse"],
            env={"OUT": str(out), "LIMIT_gpt2_torch_compile": "2"})
    return r, open(out / "results.txt").read()


def test_rehearsal_runs_every_step_in_order(rehearsal):
    r, text = rehearsal
    assert "REHEARSAL" in text.splitlines()[2] or "REHEARSAL" in text
    got = verdicts(text)
    assert [n for n, _ in got] == FIRST_CALL_STEPS, got
    status = dict(got)
    must_pass = set(FIRST_CALL_STEPS) - {"gpt2-llmc", "gpt2-torch-compile"}
    assert all(status[s] == "ok" for s in must_pass), {s: status[s] for s in must_pass}
    # llm.c needs a GPU: it fails here, and the steps after it still ran
    assert status["gpt2-llmc"] == "FAILED"
    assert status["gpt2-torch-compile"] == "TIMED OUT"
    assert r.returncode == 1
    assert re.search(r"^run\.sh rehearse: \d+ s; FAILED: gpt2-llmc gpt2-torch-compile$", text, re.M), text[-400:]


def test_rehearsal_checks_libraries_and_digests(rehearsal):
    _, text = rehearsal
    env = text[text.index("== env (limit"):text.index("== env: ")]
    assert "MISSING" not in env, env
    assert re.search(r"^libcudnn\.so\.9: /\S+", env, re.M), env
    kern = text[text.index("== kernels (limit"):text.index("== kernels: ")]
    assert len(re.findall(r"digests equal the emulator's", kern)) == len(os.listdir(os.path.join(BUNDLE, "native")))


def test_rehearsal_summary_has_figures(rehearsal):
    _, text = rehearsal
    summary = text[text.index("== summary"):]
    assert re.search(r"^  anatomy +[0-9.]+ ms/step +[0-9]+ tok/s +MFU [0-9.]+%", summary, re.M), summary
    assert re.search(r"^  PyTorch eager \(SDPA flash\) +[0-9.]+ ms/step", summary, re.M), summary
    assert re.search(r"^  ours fwd hs=64 T=64 causal=1 ms=[0-9.]+ tflops=", summary, re.M), summary
    assert re.search(r"^  math fwd hs=64 T=64 causal=1 ms=[0-9.]+", summary, re.M), summary
    for op in ("layernorm_fwd", "layernorm_bwd", "crossentropy_fwdbwd", "adamw"):
        assert re.search(rf"^  ours {op} ms=[0-9.]+ gbps=[0-9.]+ bytes=[0-9]+", summary, re.M), op


@needs_nvcc
def test_a_spent_budget_skips_the_rest(tmp_path):
    # a budget already spent when the first step would start: every step is
    # skipped, named, in order, and the call fails
    r = run([os.path.join(BUNDLE, "run.sh"), "--rehearse"], env={"OUT": str(tmp_path), "BUDGET": "1"})
    text = open(tmp_path / "results.txt").read()
    got = verdicts(text)
    assert [n for n, _ in got] == FIRST_CALL_STEPS, got
    assert all(v == "SKIPPED" for _, v in got), got
    assert r.returncode == 1


def test_unknown_option_is_refused():
    r = run(["bash", os.path.join(ROOT, "scripts", "gpu_run.sh"), "--fast"])
    assert r.returncode == 2 and "--fast: unknown option" in r.stderr
    r = run(["bash", os.path.join(ROOT, "scripts", "gpu_run.sh"), "--rehearse", "--second"])
    assert r.returncode == 2 and "the second call needs a GPU" in r.stderr


@needs_nvcc
def test_bundle_carries_fashion_mnist_beside_it():
    d = os.path.join(BUILD, "gpu-fmnist")
    names = sorted(os.listdir(d))
    assert names == sorted(f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")), names


@needs_nvcc
def test_vit_rehearsal_trains_three_seeds_and_sums_up(tmp_path):
    r = run([os.path.join(BUNDLE, "run.sh"), "--rehearse", "--vit"], env={"OUT": str(tmp_path)})
    text = open(tmp_path / "results.txt").read()
    assert r.returncode == 0, text[-2000:]
    assert verdicts(text) == [("env", "ok"), ("vit", "ok")], text[-2000:]
    summary = text[text.index("== summary"):]
    seeds = re.findall(r"^  vit-s(\d): test top-1 ([0-9.]+)%, loss [0-9.]+; median step [0-9.]+ ms, \d+ s in \d+ steps; "
                       r"validation by epoch: ([0-9.]+) ([0-9.]+)$", summary, re.M)
    assert [s for s, *_ in seeds] == ["1", "2", "3"], summary
    # the last epoch's validation is the whole test set, as the eval of its checkpoint
    assert all(abs(float(acc) - float(last)) < 0.006 for _, acc, _, last in seeds), seeds
    accs = [float(a) for _, a, _, _ in seeds]
    assert len(set(accs)) > 1 or len({e for _, _, e, _ in seeds}) > 1, "three seeds, one run?"
    mean = sum(accs) / 3
    sd = (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5
    m = re.search(r"^  mean test top-1 ([0-9.]+)%, sample standard deviation ([0-9.]+), over 3 runs$", summary, re.M)
    assert m and abs(float(m.group(1)) - mean) < 0.02 and abs(float(m.group(2)) - sd) < 0.02, summary
    assert re.search(r"^run\.sh vit-rehearse: \d+ s; every step passed$", text, re.M), text[-400:]


@needs_nvcc
def test_vit_call_without_the_data_says_so(tmp_path):
    # the --vit call with no Fashion-MNIST carried: its step fails in one line naming
    # the folder and what to carry, and the call fails
    empty = tmp_path / "none"
    empty.mkdir()
    r = run([os.path.join(BUNDLE, "run.sh"), "--vit"], env={"OUT": str(tmp_path), "FMNIST_DIR": str(empty)})
    text = open(tmp_path / "results.txt").read()
    assert r.returncode == 1
    assert dict(verdicts(text))["vit"] == "FAILED", text[-1000:]
    assert re.search(rf"^== vit: FAILED \(exit 1, \d+ s\): {re.escape(str(empty))}: no Fashion-MNIST here "
                     r"\(make gpu-bundle copies it to build/gpu-fmnist; carry that too\)$", text, re.M), text[-1000:]
    # the summary names each seed that did not train, and has no mean
    summary = text[text.index("== summary"):]
    assert all(re.search(rf"^  vit-s{s}: did not train \(its output: .*/vit-s{s}\.out\)$", summary, re.M)
               for s in (1, 2, 3)), summary
    assert "mean test top-1" not in summary, summary
