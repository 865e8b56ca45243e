"""--precision bf16 on the CPU: the linear layers' matmuls in bf16 (fp32
sums) on AMX tiles or AVX512-BF16 vectors, everything else in fp32. Trains
within design.md's bf16 tolerance of the fp32 run (1e-2 on the losses) on
either kernel, says which at start, gives the same bits on 1 and 2 threads,
resumes bit for bit, and refuses with one line where the CPU has neither
(ANATOMY_NO_AMX and ANATOMY_NO_AVX512BF16 stand in for such a CPU). ViT and
patchts run through it too."""
import os
import re
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

from test_behaviour import TINY, ok

STEP = re.compile(r"^step\s+\d+/\d+ \| loss (\S+) \| norm (\S+)", re.M)


@pytest.fixture(scope="module")
def amx(binary, tmp_path_factory):
    """Whether this CPU runs bf16 matmuls (on either kernel); the reason when
    it does not."""
    p = subprocess.run([binary, "info", "--preset", "d2", "--batch", "1", "--device", "cpu",
                        "--precision", "bf16"], capture_output=True, text=True, timeout=60)
    return p.returncode == 0, p.stderr.strip()


def needs_amx(amx):
    if not amx[0]:
        pytest.skip(f"no bf16 matmul kernel on this CPU: {amx[1]}")

KERNEL = r"(AMX-BF16 tiles|AVX512-BF16 vectors)"


def losses(out):
    return [float(m[0]) for m in STEP.findall(out)]


def test_bf16_trains_within_tolerance_of_fp32(run, shard, tmp_path, amx):
    needs_amx(amx)
    args = ["train", *TINY, "--data", shard, "--batch", "4", "--seq", "64", "--steps", "10",
            "--lr", "3e-3", "--seed", "3", "--device", "cpu"]
    f = ok(run(*args, "--precision", "fp32"))
    b = ok(run(*args, "--precision", "bf16", "--out", tmp_path / "b"))
    assert re.search(r"^matmul: the linear layers in bf16 on " + KERNEL, b, re.M), b
    assert "cpu-bf16" in b and "matmul:" not in f
    lf, lb = np.array(losses(f)), np.array(losses(b))
    assert len(lf) == len(lb) == 10
    rel = np.abs(lb - lf) / np.abs(lf)
    # bf16 inputs differ from fp32 ones, so the curves must differ, by little
    assert 0 < rel.max() < 1e-2, (lf, lb)
    # the checkpoint holds fp32 weights and evaluates on the fp32 backend
    ev = [ok(run("eval", "--init", tmp_path / "b", "--data", shard, "--batch", "4", "--seq", "64",
                 "--batches", "2", "--device", "cpu", "--precision", p)) for p in ("fp32", "bf16")]
    for out in ev:
        assert float(out.split()[1]) > 0
    # the last line says what produced the figures
    assert ev[0].splitlines()[-1].startswith("evaluated gpt2 (") and " on cpu, fp32 " in ev[0], ev[0]
    assert " on cpu-bf16, fp32 activations, linear layers' matmuls in bf16, split test" in ev[1], ev[1]


def test_bf16_threads_and_resume_are_exact(run, shard, tmp_path, amx):
    """The bf16 matmuls split rows or columns between threads without
    changing a bit; 8 steps equal 4, save, resume, 4 more."""
    needs_amx(amx)
    common = ["--data", shard, "--batch", "4", "--seq", "64", "--lr", "3e-3", "--seed", "5",
              "--schedule", "constant", "--steps", "8", "--device", "cpu", "--precision", "bf16"]
    one = ok(run("train", *TINY, *common, "--threads", "1"))
    two = ok(run("train", *TINY, *common, "--threads", "2", "--ckpt-every", "4",
                 "--out", tmp_path / "full"))
    assert STEP.findall(one) == STEP.findall(two)
    res = ok(run("train", "--resume", tmp_path / "full" / "step_000004.safetensors", *common,
                 "--threads", "2", "--out", tmp_path / "res"))
    assert STEP.findall(res) == STEP.findall(two)[4:]
    a = load_file(str(tmp_path / "full" / "step_000008.safetensors"))
    b = load_file(str(tmp_path / "res" / "step_000008.safetensors"))
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_bf16_vit(run, tmp_path, amx):
    """A ViT on random IDX images: the patch embedding, blocks and head in
    bf16, losses within 1e-2 of fp32's."""
    needs_amx(amx)
    from test_images_cli import pair
    d = pair(tmp_path, n=64)
    args = ["train", "--model", "vit", "--preset", "vit-mnist-tiny", "--data", d, "--batch", "16",
            "--steps", "6",
            "--lr", "1e-3", "--seed", "2", "--device", "cpu"]
    lf = np.array(losses(ok(run(*args, "--precision", "fp32"))))
    lb = np.array(losses(ok(run(*args, "--precision", "bf16"))))
    assert len(lf) == len(lb) == 6
    assert np.abs(lb - lf).max() / np.abs(lf).max() < 1e-2, (lf, lb)


def test_bf16_memory_plan_counts_the_packing_scratch(run, amx):
    """cpu-bf16's plan adds the bf16 kernels' packing scratch to the workspace:
    a 1 MiB panel of B, 32 rows of A over 2,048 of K and a staging block, for
    the one thread info plans with. fp32's is attention's alone: two blocks
    of 64 score rows, and at d2's T 64, C 128 a sequence's 8 T C rows copied
    per head (kernels/cpu/backend_cpu.c, att_scratch_reals)."""
    needs_amx(amx)
    args = ["info", "--preset", "d2", "--batch", "2", "--seq", "64", "--device", "cpu"]
    ws = [int(re.search(r"^  workspace\s+(\d+) B", ok(run(*args, "--precision", p)), re.M)[1])
          for p in ("fp32", "bf16")]
    assert ws[0] == (2 * 64 * 64 + 8 * 64 * 128) * 4, ws
    assert ws[1] - ws[0] == 2 ** 20 + 32 * 2048 * 2 + 32 * 32 * 4, ws


def test_bf16_vector_kernel_where_amx_is_ruled_out(binary, shard):
    """ANATOMY_NO_AMX: the AVX512-BF16 kernel (what AMD Zen 4 and later run),
    named at start, trains within 1e-2 of fp32; on a CPU with AMX it is a
    different kernel from the default one, so the bits differ, by little."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    info = subprocess.run([binary, "info"], capture_output=True, text=True, env=env, timeout=60).stdout
    novec = dict(env, ANATOMY_NO_AMX="1")
    vinfo = subprocess.run([binary, "info"], capture_output=True, text=True, env=novec, timeout=60).stdout
    if not re.search(r"^bf16 matmul\s+AVX512-BF16 vectors", vinfo, re.M):
        pytest.skip(f"no AVX512-BF16 on this CPU: {vinfo}")
    args = [binary, "train", *TINY, "--data", str(shard), "--batch", "4", "--seq", "64",
            "--steps", "6", "--lr", "3e-3", "--seed", "3", "--device", "cpu"]
    out = {}
    for name, e, prec in (("fp32", env, "fp32"), ("vec", novec, "bf16"), ("default", env, "bf16")):
        p = subprocess.run(args + ["--precision", prec], capture_output=True, text=True, env=e,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        out[name] = p.stdout
    assert re.search(r"^matmul: the linear layers in bf16 on AVX512-BF16 vectors", out["vec"], re.M)
    lf, lv, ld = (np.array(losses(out[k])) for k in ("fp32", "vec", "default"))
    assert len(lf) == len(lv) == 6
    assert 0 < np.abs(lv - lf).max() / np.abs(lf).max() < 1e-2, (lf, lv)
    if re.search(r"^bf16 matmul\s+AMX-BF16 tiles", info, re.M):
        assert 0 < np.abs(ld - lv).max() / np.abs(lv).max() < 1e-2, (ld, lv)
    else:  # the vector kernel is already the default
        assert np.array_equal(ld, lv), (ld, lv)


def test_bf16_without_a_kernel_is_one_line(binary, shard):
    """Where the CPU has neither kernel (ANATOMY_NO_AMX and
    ANATOMY_NO_AVX512BF16 set), --precision bf16 on the CPU stops before
    anything runs, naming the option and both reasons; fp32 still runs."""
    env = dict(os.environ, ANATOMY_NO_AMX="1", ANATOMY_NO_AVX512BF16="1", OMP_NUM_THREADS="2")
    args = [binary, "train", *TINY, "--data", str(shard), "--batch", "2", "--seq", "16",
            "--steps", "1", "--device", "cpu"]
    p = subprocess.run(args + ["--precision", "bf16"], capture_output=True, text=True, env=env,
                       timeout=60)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert lines[0].startswith("anatomy: error: --precision bf16 --device cpu:"), lines
    assert "AMX-BF16 or AVX512-BF16" in lines[0], lines
    assert "ANATOMY_NO_AMX is set" in lines[0] and "ANATOMY_NO_AVX512BF16 is set" in lines[0], lines
    assert "step" not in p.stdout
    p = subprocess.run(args + ["--precision", "fp32"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stderr
