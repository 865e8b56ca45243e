#!/bin/sh
# bench_cpu.sh: one GPT-2 d4 training step (B 8, T 256, forward + backward +
# AdamW) on the CPU, anatomy beside PyTorch in the same run, same threads.
#
# usage: sh bench/bench_cpu.sh [ANATOMY_BIN]
#   STEPS=N    steps each (default 8; the first 2 are warm-up, median of the rest)
#   THREADS=N  threads for both (default: all cores)
#   PYTHON     interpreter with torch (default python3)
set -e
bin=${1:-build/anatomy}
steps=${STEPS:-8}
threads=${THREADS:-$(nproc)}
py=${PYTHON:-python3}
here=$(dirname "$0")
B=8
T=256

if [ ! -x "$bin" ]; then
    echo "bench_cpu.sh: $bin: no such executable (run make first)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Random GPT-2 tokens, enough for every step without wrapping.
$py "$here/torch_gpt2_step.py" --write-shard "$tmp/tokens.bin" \
    --ntokens $(( (steps + 1) * B * T + 1 ))

echo "anatomy: $steps steps ..."
OMP_NUM_THREADS=$threads "$bin" train --preset d4 --data "$tmp/tokens.bin" \
    --batch $B --seq $T --steps "$steps" --out "$tmp/run" >"$tmp/ours.txt" 2>&1 || {
    echo "bench_cpu.sh: anatomy train failed:" >&2
    tail -5 "$tmp/ours.txt" >&2
    exit 1
}
echo "pytorch: $steps steps ..."
OMP_NUM_THREADS=$threads $py "$here/torch_gpt2_step.py" --data "$tmp/tokens.bin" \
    --preset d4 --batch $B --seq $T --steps "$steps" --threads "$threads" \
    --ours-log "$tmp/run/log.jsonl"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores;" \
     "commit $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo none); $(date -u +%Y-%m-%d)"
