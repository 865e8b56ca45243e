#!/bin/sh
# bench_gpu.sh: GPT-2 124M training throughput on one GPU, T = 1024, bf16:
# anatomy beside PyTorch (bench/torch_gpt2_gpu.py: autocast, torch.compile,
# flash SDPA, fused AdamW) and llm.c with and without cuDNN attention
# (../shared/anchors/gpu_anchors.sh), in one run on one card, with MFU against
# the card's measured bf16 matmul rate. Run on the GPU machine (make gpu-check).
#
# usage: sh bench/bench_gpu.sh [ANATOMY_CUDA_BIN]      (default build/anatomy-cuda)
#   STEPS=N      training steps each (default 30; the median skips the first 5)
#   BATCHES="…"  micro-batches to try, largest first; ours uses the first that
#                fits, and the references run at the same B (default "64 48 32 24 16 8")
#   ANCHORS=P    llm.c's gpu_anchors.sh (default: .anchors/anchors/gpu_anchors.sh,
#                then ../shared/anchors/gpu_anchors.sh); ANCHORS=none skips llm.c
#   RESULTS=F    append the figures to F (default bench/RESULTS.md; RESULTS= skips)
#   PYTHON       the interpreter with torch (default python3)
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-build/anatomy-cuda}
steps=${STEPS:-30}
batches=${BATCHES:-"64 48 32 24 16 8"}
py=${PYTHON:-python3}
results=${RESULTS-$here/RESULTS.md}
T=1024

if [ ! -x "$bin" ]; then
    echo "bench_gpu.sh: $bin: no such executable (make cuda)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
get() { sed -n "s/^$1: //p" "$2" | tail -1; }

# 1. the card's ceilings, measured now
$py "$here/torch_gpt2_gpu.py" --ceilings >"$tmp/ceil.txt" 2>&1 || { cat "$tmp/ceil.txt"; echo "bench_gpu.sh: ceilings failed" >&2; }
device=$(get device "$tmp/ceil.txt")
peak=$(get peak_bf16_tflops "$tmp/ceil.txt")
copy=$(get copy_tbps "$tmp/ceil.txt")
[ -n "$device" ] || device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "device: $device; bf16 matmul ${peak:-?} TFLOP/s, copy ${copy:-?} TB/s (measured)"

# 2. ours, the largest micro-batch that fits (a failed allocation exits non-zero)
maxb=$(echo $batches | tr ' ' '\n' | sort -n | tail -1)
$py "$here/torch_gpt2_gpu.py" --write-shard "$tmp/tokens.bin" --ntokens $(( (steps + 1) * maxb * T + 1 ))
B=
for b in $batches; do
    echo "anatomy: B=$b, $steps steps ..."
    if "$bin" train --preset gpt2-124m --data "$tmp/tokens.bin" --batch "$b" --seq $T --steps "$steps" \
        --lr 6e-4 --warmup 0 --device cuda --precision bf16 >"$tmp/ours.txt" 2>&1; then
        B=$b
        break
    fi
    tail -2 "$tmp/ours.txt"
done
if [ -z "$B" ]; then
    echo "bench_gpu.sh: anatomy ran at none of B = $batches" >&2
    exit 1
fi
# median step time over the steps after the first 5
ms=$(sed -n 's/^step *\([0-9]*\)\/.*| \([0-9.]*\) ms |.*/\1 \2/p' "$tmp/ours.txt" |
    awk '$1 > 5 { print $2 }' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }')
nparams=$(sed -n 's/^training gpt2: \([0-9]*\) parameters.*/\1/p' "$tmp/ours.txt")
loss=$(sed -n 's/^step.*| loss \([0-9.]*\) |.*/\1/p' "$tmp/ours.txt" | tail -1)
tps=$(awk -v b="$B" -v ms="$ms" 'BEGIN { printf "%.0f", b * 1024 / ms * 1000 }')
# model FLOPs per token: 6N + 12 L C T (GPT-2 124M: L 12, C 768)
fpt=$(awk -v n="$nparams" 'BEGIN { printf "%.0f", 6 * n + 12 * 12 * 768 * 1024 }')
mfu() { awk -v t="$1" -v f="$fpt" -v p="$peak" 'BEGIN { if (t == "" || p + 0 <= 0) print "?"; else printf "%.1f%%", 100 * t * f / (p * 1e12) }'; }
echo "anatomy: B=$B ${ms} ms/step, $tps tokens/s, MFU $(mfu "$tps"), final loss $loss"

# 3. PyTorch, same shape and batch
echo "pytorch: B=$B, $steps steps (torch.compile first) ..."
$py "$here/torch_gpt2_gpu.py" --data "$tmp/tokens.bin" --batch "$B" --seq $T --steps "$steps" \
    >"$tmp/torch.txt" 2>&1 || tail -3 "$tmp/torch.txt"
ttps=$(get pytorch_tokens_per_s "$tmp/torch.txt")
tver=$(get pytorch_version "$tmp/torch.txt")
echo "pytorch: $(get pytorch_ms_per_step "$tmp/torch.txt") ms/step, ${ttps:-?} tokens/s, MFU $(mfu "$ttps")"

# 4. llm.c with and without cuDNN attention, same B
anchors=${ANCHORS:-}
if [ -z "$anchors" ]; then
    for a in .anchors/anchors/gpu_anchors.sh "$here/../../shared/anchors/gpu_anchors.sh" \
        "$here/../shared/anchors/gpu_anchors.sh"; do
        [ -f "$a" ] && anchors=$a && break
    done
fi
lc=; lcd=
if [ -n "$anchors" ] && [ "$anchors" != none ] && [ -f "$anchors" ]; then
    echo "llm.c: B=$B via $anchors ..."
    bash "$anchors" "$steps" "$B" "$tmp/anchors" >"$tmp/llmc.txt" 2>&1 || true
    cat "$tmp/llmc.txt"
    lc=$(sed -n 's/^llm.c (own attention): \([0-9]*\) tok\/s.*/\1/p' "$tmp/llmc.txt")
    lcd=$(sed -n 's/^llm.c (cuDNN attention): \([0-9]*\) tok\/s.*/\1/p' "$tmp/llmc.txt")
else
    echo "llm.c: not run (no gpu_anchors.sh: carry ../shared/anchors as .anchors/anchors, see its README)"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "?"; else printf "%.2fx", a / b }'; }
commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo none)
dirty=$(git -C "$here" status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
date=$(date -u +%Y-%m-%d)
echo
echo "GPT-2 124M, T=1024, B=$B, bf16, $device ($date, commit $commit$dirty)"
printf '  %-28s %10s tok/s  MFU %6s  anatomy/x %s\n' "anatomy" "$tps" "$(mfu "$tps")" "1.00x"
printf '  %-28s %10s tok/s  MFU %6s  anatomy/x %s\n' "pytorch $tver" "${ttps:-?}" "$(mfu "$ttps")" "$(ratio "$tps" "$ttps")"
printf '  %-28s %10s tok/s  MFU %6s  anatomy/x %s\n' "llm.c (own attention)" "${lc:-?}" "$(mfu "$lc")" "$(ratio "$tps" "$lc")"
printf '  %-28s %10s tok/s  MFU %6s  anatomy/x %s\n' "llm.c (cuDNN attention)" "${lcd:-?}" "$(mfu "$lcd")" "$(ratio "$tps" "$lcd")"

if [ -n "$results" ]; then
    {
        echo
        echo "### $date, commit $commit$dirty, $device (bench/bench_gpu.sh)"
        echo
        echo "GPT-2 124M, T = 1024, B = $B, bf16, $steps steps (median after 5). Measured in this run:"
        echo "bf16 matmul ${peak:-?} TFLOP/s (8192^3 through cuBLAS), copy ${copy:-?} TB/s."
        echo
        echo "| run | ms/step | tokens/s | MFU | anatomy / it |"
        echo "| --- | --- | --- | --- | --- |"
        echo "| anatomy | $ms | $tps | $(mfu "$tps") | 1.00x |"
        echo "| PyTorch $tver (compile, flash SDPA, fused AdamW) | $(get pytorch_ms_per_step "$tmp/torch.txt") | ${ttps:-?} | $(mfu "$ttps") | $(ratio "$tps" "$ttps") |"
        echo "| llm.c, own attention | | ${lc:-not run} | $(mfu "$lc") | $(ratio "$tps" "$lc") |"
        echo "| llm.c, cuDNN attention | | ${lcd:-not run} | $(mfu "$lcd") | $(ratio "$tps" "$lcd") |"
    } >>"$results"
    echo "appended to $results"
fi
