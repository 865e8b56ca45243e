#!/bin/sh
# bench_attention.sh: our fused attention (kernels/cuda/attention.cu, through
# the backend's op table: build/bench_attention) beside PyTorch's
# scaled_dot_product_attention with the flash backend and with the cuDNN
# backend (bench/torch_sdpa.py), bf16, in one run on one card: forward,
# backward and both, in TFLOP/s, B*H = 192, T = 1024 and 4096, head size 64
# and 128, causal and not; ratios ours / theirs. Run on the GPU machine
# (`make bench-attention`, or make gpu-check).
#
# usage: sh bench/bench_attention.sh [BENCH_BIN]     (default build/bench_attention)
#   ITERS=N       timed runs per figure (default 20)
#   TS="…" HSS="…" BH=N   shapes (default "1024 4096", "64 128", 192)
#   RESULTS=F     append the table to F (default bench/RESULTS.md; RESULTS= skips)
#   PYTHON        the interpreter with torch (default python3)
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-build/bench_attention}
iters=${ITERS:-20}
ts=${TS:-"1024 4096"}
hss=${HSS:-"64 128"}
bh=${BH:-192}
py=${PYTHON:-python3}
results=${RESULTS-$here/RESULTS.md}

if [ ! -x "$bin" ]; then
    echo "bench_attention.sh: $bin: no such executable (make bench-attention-build)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

"$bin" --bh "$bh" --iters "$iters" --T "$ts" --hs "$hss" >"$tmp/ours.txt" 2>&1 ||
    { cat "$tmp/ours.txt"; echo "bench_attention.sh: $bin failed" >&2; exit 1; }
# shellcheck disable=SC2086
$py "$here/torch_sdpa.py" --bh "$bh" --iters "$iters" --T $ts --hs $hss >"$tmp/torch.txt" 2>&1 ||
    { cat "$tmp/torch.txt"; echo "bench_attention.sh: torch_sdpa.py failed; ours alone below" >&2; }
device=$(sed -n 's/^device: //p' "$tmp/torch.txt" | head -1)
[ -n "$device" ] || device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

# one row per (pass, hs, T, mask): ours, flash, cudnn (TFLOP/s) and the ratios
cat "$tmp/ours.txt" "$tmp/torch.txt" | awk '
    $1 ~ /^(ours|flash|cudnn)$/ && $NF ~ /^tflops=/ {
        key = $2 " " $3 " " $4 " " $5; sub(/tflops=/, "", $NF)
        v[$1, key] = $NF
        if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    }
    function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2fx", a / b) : "-" }
    function f(a) { return a == "" ? "-" : a }
    END {
        printf "| pass | hs | T | causal | ours TFLOP/s | torch flash | torch cuDNN | ours/flash | ours/cuDNN |\n"
        printf "|---|---|---|---|---|---|---|---|---|\n"
        for (i = 1; i <= n; i++) {
            split(order[i], k, " ")
            o = v["ours", order[i]]; fl = v["flash", order[i]]; cu = v["cudnn", order[i]]
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k[1], substr(k[2], 4), substr(k[3], 3),
                substr(k[4], 8), f(o), f(fl), f(cu), r(o, fl), r(o, cu)
        }
    }' >"$tmp/table.md"
echo "device: ${device:-unknown}; B*H = $bh, bf16, $iters runs each"
cat "$tmp/table.md"
grep unsupported "$tmp/torch.txt" || true

if [ -n "$results" ]; then
    commit=$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)
    {
        echo
        echo "## Fused attention vs PyTorch SDPA, $(date -u +%Y-%m-%d) ($commit, ${device:-unknown})"
        echo
        echo "bench/bench_attention.sh: B*H = $bh, bf16, TFLOP/s (forward 4·BH·T²·hs FLOPs, backward 2.5x, halved when causal), mean of $iters runs."
        echo
        cat "$tmp/table.md"
    } >>"$results"
    echo "appended to $results"
fi
