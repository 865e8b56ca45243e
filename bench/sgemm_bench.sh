#!/bin/sh
# sgemm_bench.sh: SGEMM GFLOP/s at GPT-2 d12's shapes for every BLAS this
# machine has, in one run (bench/NOTES.md, "The CPU's BLAS", has the decision
# these figures made):
#   the scipy-openblas32 wheel's OpenBLAS (what mk/blas.mk links)
#   Debian's libopenblas as it loads, and forced to its Prescott kernel (what
#     0.3.21 falls back to on a CPU it does not know, e.g. family 6 model 207)
#   BLIS (Debian's libblis4-openmp, if installed)
#   anatomy's own bf16 matmul on the kernel it picks (AMX tiles or AVX512-BF16
#   vectors; --precision bf16 on the CPU)
#   PyTorch's CPU matmul (torch.mm, its own threads), fp32 and bf16
#
# usage: sh bench/sgemm_bench.sh [build/sgemm_bench]   (make bench-sgemm)
#   THREADS=N (default: all cores), REPS=N timed calls per shape (default 3)
set -e
bin=${1:-build/sgemm_bench}
threads=${THREADS:-$(nproc)}
py=${PYTHON:-python3}
[ -x "$bin" ] || { echo "sgemm_bench.sh: $bin missing (make bench-sgemm)" >&2; exit 1; }

run() { # label, library, prefix, [env assignment]
    label=$1 lib=$2 prefix=$3
    shift 3
    echo "== $label"
    env "$@" "$bin" "$lib" "$prefix" "$threads" || echo "   (failed)"
}

wheel=$($py -c 'import scipy_openblas32 as s; print(s.get_lib_dir())' 2>/dev/null || true)
if [ -n "$wheel" ]; then
    run "scipy-openblas32 (mk/blas.mk's first choice)" "$wheel/libscipy_openblas.so" scipy_ X=1
else
    echo "== scipy-openblas32: not installed (make deps)"
fi
deb=$(ls /usr/lib/x86_64-linux-gnu/libopenblas.so.0 /usr/lib/aarch64-linux-gnu/libopenblas.so.0 2>/dev/null | head -1)
if [ -n "$deb" ]; then
    run "Debian libopenblas, its own choice of kernel" "$deb" "" X=1
    run "Debian libopenblas, OPENBLAS_CORETYPE=Prescott (its fallback on unknown CPUs)" "$deb" "" \
        OPENBLAS_CORETYPE=Prescott
fi
blis=$(ls /usr/lib/x86_64-linux-gnu/libblis.so.4 /usr/lib/aarch64-linux-gnu/libblis.so.4 2>/dev/null | head -1)
if [ -n "$blis" ]; then
    run "BLIS (Debian libblis4-openmp)" "$blis" "" X=1
else
    echo "== BLIS: not installed (apt-get install libblis4-openmp)"
fi
run "anatomy's bf16 matmul, the kernel it picks (--precision bf16 on the CPU; lib column: 1 thread)" bf16 ""
echo "== PyTorch torch.mm ($threads threads; lib column only)"
$py - "$threads" <<'EOF' || echo "   (failed)"
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
print(f"torch {torch.__version__}, MKL {torch.backends.mkl.is_available()}")
shapes = [("qkv      x W^T", 0, 1, None, 2304, 768), ("attproj  x W^T", 0, 1, None, 768, 768),
          ("fc       x W^T", 0, 1, None, 3072, 768), ("fcproj   x W^T", 0, 1, None, 768, 3072),
          ("logits   x W^T", 0, 1, None, 50304, 768), ("dlogits  dY W", 0, 0, None, 768, 50304),
          ("dwte     dY^T X", 1, 0, 50304, 768, None)]
print(f"{'BT':6s} {'matmul':16s} {'M':>6s} {'N':>6s} {'K':>6s} {'split GF/s':>12s} {'lib GF/s':>12s}")
for dt in (torch.float32, torch.bfloat16):
    if dt == torch.bfloat16:
        print("== PyTorch torch.mm in bf16 (oneDNN; AMX where the CPU has it; lib column only)")
    for bt in (256, 2048):
        for what, ta, tb, m, n, k in shapes:
            M, N, K = m or bt, n, k or bt
            A = (torch.rand(K, M) if ta else torch.rand(M, K)).to(dt)
            B = (torch.rand(N, K) if tb else torch.rand(K, N)).to(dt)
            C = torch.zeros(M, N, dtype=dt)
            best = 1e30
            for r in range(4):
                t0 = time.perf_counter()
                C.addmm_(A.t() if ta else A, B.t() if tb else B)
                t = time.perf_counter() - t0
                if r:
                    best = min(best, t)
            print(f"{bt:<6d} {what:16s} {M:6d} {N:6d} {K:6d} {'-':>12s} {2 * M * N * K / best * 1e-9:12.1f}")
EOF
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" \
     "(family $(grep -m1 '^cpu family' /proc/cpuinfo | sed 's/.*: //') model $(grep -m1 '^model[[:space:]]' /proc/cpuinfo | sed 's/.*: //')), $threads threads," \
     "load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%d)"
