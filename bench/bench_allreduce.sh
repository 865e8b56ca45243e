#!/bin/sh
# bench/bench_allreduce.sh: the NCCL transport on one GPU (make bench-allreduce;
# meant for scripts/gpu-check.sh).
#
#   1. Exactness: a few GPT-2 steps with the NCCL transport forced on for one
#      process (ANATOMY_DIST_NCCL=1: the loss and the gradient go through
#      ncclAllReduce, average over 1 rank) must log the same losses and norms,
#      bit for bit, as the plain run. The plain run is repeated first: if the
#      backend itself is not repeatable the comparison says so and fails.
#   2. Timing: one ncclAllReduce (bf16, average) of GPT-2 124M's gradient,
#      N elements = its parameter buffer including the vocabulary padding
#      (last view's offset + count in `anatomy info --views`), beside a
#      cudaMemcpy of the same bytes (bench/allreduce_bench.c). At world 1
#      this is NCCL's local path, not a network; then the same with two
#      processes on the one GPU, which prints NCCL's refusal where NCCL does
#      not allow two ranks on one device.
#
# usage: sh bench/bench_allreduce.sh [build/anatomy-cuda]
# Exit status non-zero when the exactness check fails.
set -eu
BIN=${1:-build/anatomy-cuda}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NCCL_HOME=${NCCL_HOME:-$CUDA_HOME}
WORK=${BENCH_DIR:-build/bench-allreduce}
mkdir -p "$WORK"

# ---- 1. exactness ----
python3 - "$WORK/tok_train_000000.bin" <<'EOF'
import os, struct, sys
n = 200000
toks = [b % 50257 for b in struct.unpack(f"<{n}H", os.urandom(2 * n))]
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *toks))
EOF
# ALLREDUCE_MODEL: another model or shape for the check, options that come
# last and so win (the script was tried on build/anatomy-emu with a tiny one)
ARGS="train --data $WORK/tok_train_*.bin --batch 4 --seq 256 --steps 6 --lr 6e-4 --warmup 2
      --seed 7 --device cuda --precision bf16 ${ALLREDUCE_MODEL:---preset d12}"
run() { # $1: out dir; then env assignments
    out=$1; shift
    rm -rf "$out"
    env "$@" "$BIN" $ARGS --out "$out" >"$out.log" 2>&1 || { cat "$out.log"; exit 1; }
    sed -n 's/.*"loss": \([^,]*\), "norm": \([^,]*\),.*/\1 \2/p' "$out/log.jsonl"
}
a=$(run "$WORK/plain1" ANATOMY_DIST_NCCL=0)
b=$(run "$WORK/plain2" ANATOMY_DIST_NCCL=0)
c=$(run "$WORK/nccl" ANATOMY_DIST_NCCL=1)
if ! grep -q "NCCL transport forced on" "$WORK/nccl.log"; then
    echo "allreduce: NCCL was not used"
    cat "$WORK/nccl.log"
    exit 1
fi
if [ "$a" != "$b" ]; then
    echo "allreduce exactness: UNDECIDED (two plain runs differ: the backend is not repeatable)"
    exit 1
elif [ "$a" = "$c" ] && [ -n "$a" ]; then
    echo "allreduce exactness: NCCL at world 1 == plain run, bit for bit" \
        "($(echo "$a" | wc -l) steps of loss and norm)"
else
    echo "allreduce exactness: FAILED"
    printf 'plain:\n%s\nnccl:\n%s\n' "$a" "$c"
    exit 1
fi

# ---- 2. timing ----
# the buffer's end: the largest offset + count over the views (the last two
# numbers before the weight-decay column)
N=$("$BIN" info --preset gpt2-124m --views | awk '($NF == "yes" || $NF == "no") &&
    $(NF-1) ~ /^[0-9]+$/ { e = $(NF-2) + $(NF-1); if (e > n) n = e } END { print n }')
[ -n "$N" ] || { echo "allreduce: cannot read the parameter count from anatomy info"; exit 1; }
# ALLREDUCE_BENCH: a prebuilt harness (build/gpu/bin/allreduce_bench), else built here
ab=${ALLREDUCE_BENCH:-}
if [ -z "$ab" ]; then
    ab=$WORK/allreduce_bench
    gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I"$NCCL_HOME/include" -I"$CUDA_HOME/include" \
        bench/allreduce_bench.c -o "$ab" -L"$NCCL_HOME/lib64" -L"$NCCL_HOME/lib" \
        -L"$CUDA_HOME/lib64" -Wl,-rpath,"$NCCL_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" -lnccl -lcudart
fi
echo "GPT-2 124M gradient: $N bf16 elements (padding included)"
"$ab" "$N" 20 1
"$ab" "$N" 20 2 || echo "(two ranks on one GPU: see NCCL's answer above)"
