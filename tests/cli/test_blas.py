"""The BLAS the CPU backend runs its matmuls on: `anatomy info` and train's
start-up line name the library, its version, the kernel and the threads, and
the kernel in use is not a generic fallback on a CPU with AVX2 or AVX-512
(an OpenBLAS older than the CPU picks its SSE3 kernel without a word, 5x
slower at GPT-2's shapes: bench/NOTES.md). No environment variable may be
needed for that: the tests run with OPENBLAS_* removed."""
import os
import platform
import re

import pytest

BLAS = re.compile(r"^blas\s+OpenBLAS (\d+\.\d+\.\d+\S*) \((\S+)\), kernel (\S+), "
                  r"(\d+) threads? \(", re.M)

# OpenBLAS's x86 kernels without AVX2 (lower case, as openblas_get_corename()
# names them): on a CPU with AVX2 or AVX-512 each is a generic fallback.
PRE_AVX2 = {"prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge", "atom",
            "katmai", "coppermine", "northwood", "banias", "athlon", "opteron", "opteron_sse3",
            "barcelona", "bobcat", "bulldozer", "piledriver", "steamroller", "nano", "generic",
            "unknown"}


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.fixture
def clean(binary):
    """run(*args, **env) with every OPENBLAS_* / GOTO* variable removed."""
    import subprocess
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "GOTO"))}

    def _run(*args, **env):
        p = subprocess.run([binary] + [str(a) for a in args], capture_output=True, text=True,
                           env=dict(base, OMP_NUM_THREADS="2", **env), timeout=300)
        return p.returncode, p.stdout, p.stderr
    return _run


def test_info_names_blas_version_kernel_threads(clean):
    rc, out, err = clean("info")
    assert rc == 0, err
    m = BLAS.search(out)
    assert m, out
    version, build, kernel, threads = m.groups()
    assert int(threads) == 2, out  # OMP_NUM_THREADS
    assert build in ("scipy-openblas32", "libopenblas"), out
    assert re.search(r"^blas library\s+/\S+", out, re.M), out
    # whether --precision bf16 runs on this CPU, and why not when it does not
    assert re.search(r"^bf16 matmul\s+(AMX-BF16 tiles|AVX512-BF16 vectors|none: )", out, re.M), out
    # the AVX512-BF16 flag in /proc/cpuinfo means that kernel at least
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if re.search(r"\bavx512_bf16\b", flags):
        assert re.search(r"^bf16 matmul\s+(AMX-BF16 tiles|AVX512-BF16 vectors) ", out, re.M), out
    rc, off, err = clean("info", ANATOMY_NO_AMX="1", ANATOMY_NO_AVX512BF16="1")
    assert re.search(r"^bf16 matmul\s+none: ANATOMY_NO_AMX is set; ANATOMY_NO_AVX512BF16 is set",
                     off, re.M), off
    # with a model too, after its parameter count
    rc, out, err = clean("info", "--preset", "d2")
    assert rc == 0 and BLAS.search(out), out


def test_train_startup_names_blas(clean, shard, tmp_path):
    rc, out, err = clean("train", "--preset", "d2", "--vocab-size", "256", "--max-seq", "32",
                         "--data", shard, "--batch", "2", "--seq", "32", "--steps", "1",
                         "--device", "cpu", "--threads", "2")
    assert rc == 0, err
    m = re.search(r"^blas: OpenBLAS \S+ \(\S+\), kernel (\S+), 2 threads \(", out, re.M)
    assert m, out


def test_kernel_is_not_a_generic_fallback(clean):
    """Fails when the kernel in use lacks AVX2 on a CPU that has AVX2 or
    AVX-512 (or is the AVX2 kernel on an Intel CPU with AVX-512)."""
    flags = cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64", "i686") or flags is None:
        pytest.skip(f"not an x86 Linux CPU ({platform.machine()}): no AVX2/AVX-512 to check for")
    if "avx2" not in flags and "avx512f" not in flags:
        pytest.skip("this CPU has neither AVX2 nor AVX-512: any OpenBLAS kernel is its best")
    rc, out, err = clean("info")
    assert rc == 0, err
    m = BLAS.search(out)
    assert m, out
    kernel = m.group(3)
    has = "AVX-512" if "avx512f" in flags else "AVX2"
    assert kernel.lower() not in PRE_AVX2, (
        f"the BLAS runs its generic {kernel} kernel on a CPU with {has}: link a BLAS that "
        f"knows this CPU (make deps installs scipy-openblas32; mk/blas.mk)\n{out}")
    intel = "GenuineIntel" in open("/proc/cpuinfo").read()
    if "avx512f" in flags and intel:
        assert kernel.lower() != "haswell", f"the AVX2 kernel on an AVX-512 CPU\n{out}"
    assert "WARNING" not in out, out


def test_fallback_is_reported(clean):
    """A forced generic kernel (OPENBLAS_CORETYPE=Prescott) is named as one."""
    flags = cpu_flags() or set()
    if "avx2" not in flags and "avx512f" not in flags:
        pytest.skip("this CPU has neither AVX2 nor AVX-512: nothing to flag")
    rc, out, err = clean("info", OPENBLAS_CORETYPE="Prescott")
    assert rc == 0, err
    m = BLAS.search(out)
    assert m and m.group(3).lower() in PRE_AVX2, out
    assert "WARNING, generic fallback" in out, out


def test_sgemm_bench_shape_sets(tmp_path):
    """bench/sgemm_bench.c, built as mk/blas.mk builds it: SHAPES=vit times
    the ViT block's twelve products and sums them; a SHAPES it does not know
    stops it with one line naming SHAPES and status 2. Timed on the bf16
    kernel where this CPU has one (else its refusal is the line)."""
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    exe = tmp_path / "sgemm_bench"
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-D_GNU_SOURCE", "-O2", "-fopenmp",
                    "bench/sgemm_bench.c", "kernels/cpu/gemm_bf16.c", "-o", str(exe), "-ldl"],
                   cwd=repo, check=True, timeout=120)
    env = dict(os.environ, SHAPES="d13")
    q = subprocess.run([str(exe), "bf16", "", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert q.returncode == 2 and "SHAPES" in q.stderr and len(q.stderr.strip().splitlines()) == 1, q.stderr
    q = subprocess.run([str(exe), "bf16", "", "1"], env=dict(os.environ, SHAPES="vit", REPS="1"),
                       capture_output=True, text=True, timeout=300)
    if q.returncode != 0:
        assert "bf16:" in q.stderr and len(q.stderr.strip().splitlines()) == 1, q.stderr
        pytest.skip(f"no bf16 kernel here: {q.stderr.strip()}")
    rows = re.findall(r"^6400 +\S+ +.*? +(\d+) +(\d+) +(\d+) +[0-9.]+ +[0-9.]+$", q.stdout, re.M)
    assert len(rows) == 12, q.stdout
    assert ("6400", "384", "128") in rows and ("128", "512", "6400") in rows, rows
    assert re.search(r"^all shapes: split [0-9.]+ ms, lib [0-9.]+ ms$", q.stdout, re.M), q.stdout
