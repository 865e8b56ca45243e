#!/bin/sh
# gpu-check.sh (`make gpu-check`): on a GPU machine that can also build,
# everything only a GPU can show: builds the bundle (make gpu-bundle, the
# same one a short lease carries), then runs its two calls,
# build/gpu/run.sh (parity suites, memcheck, GPT-2 124M beside llm.c and
# PyTorch, attention and memory-bound op figures) and build/gpu/run.sh
# --second (NCCL, racecheck, the loss curve against PyTorch). Results in
# $OUT (default build/gpu/out): results.txt of the first call, then of the
# second. Copy the figures into bench/RESULTS.md with the commit, date and
# device.
set -u
make=${MAKE:-make}
$make gpu-bundle || exit 1
OUT=${OUT:-build/gpu/out}
export OUT
rc=0
build/gpu/run.sh || rc=1
cp "$OUT/results.txt" "$OUT/results-first.txt"
build/gpu/run.sh --second || rc=1
cp "$OUT/results.txt" "$OUT/results-second.txt"
echo "gpu-check: $OUT/results-first.txt and $OUT/results-second.txt"
exit $rc
