#!/bin/sh
# gpu-check.sh: everything only a GPU can show, in one command (`make gpu-check`),
# meant to finish in under 20 minutes on one H100. A session that is lent a
# GPU runs this first. Steps (each timed, each with its own time limit; a
# failing step does not stop the later ones):
#   1. build: build/anatomy-cuda and the native parity suite (nvcc, sm_80 + sm_90),
#      register/spill report build/cuda/ptxas.txt
#   2. the parity suite natively (tests/test_cuda_ops.c: every op and the whole
#      GPT-2 against the CPU oracle, fp32 and bf16)
#   2b. bench/bench_allreduce.sh: the NCCL path at world 1 forced on equals the
#      plain run bit for bit; one all-reduce of GPT-2 124M's gradients timed
#   3. the emulator's kernel tests natively, digests against the emulator's
#      (make test-kernels), when that target exists
#   4. compute-sanitizer memcheck, then racecheck, on the parity suite
#   5. bench/bench_gpu.sh: GPT-2 124M beside PyTorch and llm.c, figures appended
#      to bench/RESULTS.md with the date, commit and device
#   6. bench/bench_attention.sh: fused attention forward/backward TFLOP/s beside
#      PyTorch SDPA's flash and cuDNN backends (make bench-attention)
#   7. bench/gpt2_parity.sh: loss-curve parity with PyTorch (124M, B16 T1024,
#      1,000 steps; twice for PyTorch to measure its own noise), table and plot
#      appended to bench/RESULTS.md. Without a network it trains on
#      tinyshakespeare shards: carry .cache/data/tinyshakespeare (or FineWeb's
#      first shard in .cache/data/fineweb10B) with the command.
#
# usage: sh scripts/gpu-check.sh        (from the repository root)
#   SKIP="sanitizer bench"   steps to leave out (build native nccl kernels sanitizer bench attention parity)
#   JOBS=N                   parallel compile jobs (default: all cores)
#
# Libraries the build needs beyond the CUDA toolkit (Check, OpenBLAS) may be
# missing on a bare GPU image: .deb files put in .deps/ (a folder git ignores,
# carried with the command) are unpacked into .deps/root and put on the search
# paths first.
set -u
jobs=${JOBS:-$(nproc)}
skip=" ${SKIP:-} "
make=${MAKE:-make}
log=build/gpu-check
mkdir -p "$log"
failed=""
start=$(date +%s)

if ls .deps/*.deb >/dev/null 2>&1; then
    mkdir -p .deps/root
    for d in .deps/*.deb; do dpkg -x "$d" .deps/root; done
    r=$(pwd)/.deps/root
    for lib in "$r/usr/lib/x86_64-linux-gnu" "$r/usr/lib/x86_64-linux-gnu/openblas-pthread"; do
        LIBRARY_PATH="$lib:${LIBRARY_PATH:-}"
        LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
    done
    C_INCLUDE_PATH="$r/usr/include:$r/usr/include/x86_64-linux-gnu:${C_INCLUDE_PATH:-}"
    PKG_CONFIG_PATH="$r/usr/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}"
    export LIBRARY_PATH LD_LIBRARY_PATH C_INCLUDE_PATH PKG_CONFIG_PATH
    echo "gpu-check: using the libraries unpacked from .deps/*.deb"
fi

# step NAME LIMIT_SECONDS COMMAND...: runs it, logs to build/gpu-check/NAME.log,
# prints the tail and a timed verdict.
step() {
    name=$1 limit=$2
    shift 2
    case "$skip" in *" $name "*) echo "== $name: skipped"; return 0 ;; esac
    echo "== $name"
    t0=$(date +%s)
    timeout "$limit" "$@" >"$log/$name.log" 2>&1
    rc=$?
    tail -n 25 "$log/$name.log"
    t=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then
        echo "== $name: ok (${t} s)"
    else
        [ $rc -eq 124 ] && echo "== $name: TIMED OUT after $limit s"
        echo "== $name: FAILED (exit $rc, ${t} s; log $log/$name.log)"
        failed="$failed $name"
    fi
    return $rc
}

nvidia-smi -L || echo "gpu-check: nvidia-smi -L fails: no GPU here; the steps below will say so"

step build 420 $make -j"$jobs" build/anatomy build/anatomy-cuda build/cuda/tests/test_cuda_ops build/cuda/ptxas.txt
step native 240 build/cuda/tests/test_cuda_ops
step nccl 300 sh bench/bench_allreduce.sh build/anatomy-cuda
if $make -n test-kernels >/dev/null 2>&1; then
    step kernels 300 $make test-kernels
fi
if command -v compute-sanitizer >/dev/null 2>&1; then
    # in-process (no fork per test) so the sanitizer sees every kernel
    step sanitizer 420 sh -c 'CK_FORK=no compute-sanitizer --tool memcheck --error-exitcode 3 \
        build/cuda/tests/test_cuda_ops && CK_FORK=no compute-sanitizer --tool racecheck \
        --racecheck-report hazard --error-exitcode 3 build/cuda/tests/test_cuda_ops'
else
    echo "== sanitizer: compute-sanitizer not found"
    failed="$failed sanitizer"
fi
step bench 720 sh bench/bench_gpu.sh build/anatomy-cuda
step attention 300 $make --no-print-directory bench-attention
step parity 900 sh bench/gpt2_parity.sh

echo "gpu-check: $(( $(date +%s) - start )) s; ${failed:+FAILED:$failed}${failed:-all steps passed}"
[ -z "$failed" ]
