#!/bin/sh
# bench_cpu.sh: GPT-2 training steps (forward + backward + AdamW, fp32) on
# the CPU, side by side in one run on the same random tokens and threads:
#   anatomy                 build/anatomy train (the BLAS and kernel it runs on
#                           are printed beside the figures)
#   llm.c PyTorch           llm.c's own trainer, ../shared/anchors/llm.c/train_gpt2.py,
#                           --device cpu --dtype float32 --compile 0 --flash 0
#   PyTorch (ours)          bench/torch_gpt2_step.py: GPT-2 written with nn.Linear,
#                           SDPA, F.cross_entropy, AdamW (fused=False)
#   llm.c C (train_gpt2.c)  not run: this workplace has no copy of it (see
#                           bench/NOTES.md); the line says so
# Median ms/step over steps 3..STEPS of each (the first two are warm-up);
# ROUNDS rounds of all of them in turn, each trainer's lowest median kept
# (on a machine shared with other work, the round it was least disturbed).
# No environment variable is set for the BLAS: each runs as a user would.
#
# usage: sh bench/bench_cpu.sh [ANATOMY_BIN]
#   PRESET=NAME  d12 (default; L 12, C 768, 124M parameters), d4 or d2
#   SHAPES="BxT ..."  micro-batches (default "4x64 8x256")
#   STEPS=N      steps each (default 6)
#   ROUNDS=N     rounds (default 2)
#   THREADS=N    threads for all (default: all cores)
#   OURS_TORCH=0 leave out bench/torch_gpt2_step.py
#   ANCHORS=DIR  llm.c's folder (default ../shared/anchors/llm.c); none: skip it
#   PYTHON       interpreter with torch, numpy, tiktoken (default python3)
#   PRECISION=bf16  anatomy --precision bf16 (its linear layers' matmuls in
#                bf16, on AMX or AVX512-BF16) and bench/torch_gpt2_step.py --autocast bf16
#                (matmuls and attention in bf16); llm.c's trainer stays fp32 (it
#                autocasts on CUDA only); default fp32 for all
set -e
bin=${1:-build/anatomy}
steps=${STEPS:-6}
threads=${THREADS:-$(nproc)}
preset=${PRESET:-d12}
shapes=${SHAPES:-4x64 8x256}
ours_torch=${OURS_TORCH:-1}
rounds=${ROUNDS:-2}
py=${PYTHON:-python3}
precision=${PRECISION:-fp32}
case $precision in
fp32) autocast=none ;;
bf16) autocast=bf16 ;;
*) echo "bench_cpu.sh: PRECISION must be fp32 or bf16, got '$precision'" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
llmc=${ANCHORS:-}
if [ -z "$llmc" ]; then
    for d in "$here/../../shared/anchors/llm.c" "$here/../shared/anchors/llm.c" \
        "$here/../.anchors/anchors/llm.c"; do
        [ -f "$d/train_gpt2.py" ] && llmc=$d && break
    done
fi
gpt2_vocab=${GPT2_VOCAB_DIR:-$here/../../shared/data/gpt2}

if [ ! -x "$bin" ]; then
    echo "bench_cpu.sh: $bin: no such executable (run make first)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

median() { # ms values on stdin, one per line: the median of lines 3.. (warm-up left out)
    $py -c "import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; v=v[2:] or v
print(f'{statistics.median(v):.1f}' if v else 'failed')"
}

# Random GPT-2 tokens, enough for every step of the largest shape without wrapping.
maxbt=0
for s in $shapes; do
    bt=$(( ${s%x*} * ${s#*x} ))
    [ $bt -gt $maxbt ] && maxbt=$bt
done
$py "$here/torch_gpt2_step.py" --write-shard "$tmp/tokens.bin" --ntokens $(( (steps + 2) * maxbt + 1 ))

# tiktoken's cache from the local GPT-2 files: llm.c's trainer loads the
# tokenizer at start and must not need the network.
if [ -n "$llmc" ] && [ "$llmc" != none ]; then
    mkdir -p "$tmp/tiktoken"
    for f in vocab.bpe encoder.json; do
        key=$(printf '%s' "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/$f" | sha1sum | cut -d' ' -f1)
        [ -f "$gpt2_vocab/$f" ] && cp "$gpt2_vocab/$f" "$tmp/tiktoken/$key"
    done
fi

blas=$("$bin" info | sed -n 's/^blas  *//p' | head -1)
results=""
best() { # the lower of two figures; a message (not run, failed) only when neither is one
    case $1 in [0-9]*) ;; *) echo "$2"; return ;; esac
    case $2 in [0-9]*) ;; *) echo "$1"; return ;; esac
    $py -c "import sys; print(min(sys.argv[1:], key=float))" "$1" "$2"
}
for s in $shapes; do
    B=${s%x*}
    T=${s#*x}
    ours=none llm=none torch=none
    for round in $(seq "$rounds"); do
        tag="$s.$round"
        echo "== $preset, B $B, T $T, round $round/$rounds: anatomy ..."
        OMP_NUM_THREADS=$threads "$bin" train --preset "$preset" --data "$tmp/tokens.bin" \
            --batch "$B" --seq "$T" --steps "$steps" --threads "$threads" --device cpu \
            --precision "$precision" --out "$tmp/run$tag" \
            >"$tmp/ours$tag.txt" 2>&1 || {
            echo "bench_cpu.sh: anatomy train failed:" >&2
            tail -5 "$tmp/ours$tag.txt" >&2
            exit 1
        }
        ours=$(best "$ours" "$(sed -n 's/.*"ms": *\([0-9.]*\).*/\1/p' "$tmp/run$tag/log.jsonl" | median)")
        if [ -z "$llmc" ] || [ "$llmc" = none ]; then
            llm="not run (no llm.c folder: ANCHORS=DIR)"
        elif [ "$preset" != d12 ]; then
            llm="not run (llm.c's trainer has no $preset)"
        else
            echo "== $preset, B $B, T $T, round $round/$rounds: llm.c train_gpt2.py ..."
            if ( cd "$tmp" && OMP_NUM_THREADS=$threads TIKTOKEN_CACHE_DIR="$tmp/tiktoken" \
                $py "$llmc/train_gpt2.py" --input_bin "$tmp/tokens.bin" --model d12 \
                --batch_size "$B" --sequence_length "$T" --total_batch_size $((B * T)) \
                --num_iterations "$steps" --device cpu --dtype float32 --compile 0 --flash 0 \
                --tensorcores 0 --write_tensors 0 --overfit_single_batch 0 --learning_rate 6e-4 ) \
                >"$tmp/llmc$tag.txt" 2>&1; then
                llm=$(best "$llm" "$(sed -n 's/^step .*| (\([0-9.]*\) ms |.*/\1/p' "$tmp/llmc$tag.txt" | median)")
            else
                llm=$(best "$llm" "failed: $(tail -1 "$tmp/llmc$tag.txt")")
            fi
        fi
        if [ "$ours_torch" = 0 ]; then
            torch="not run (OURS_TORCH=0)"
        else
            echo "== $preset, B $B, T $T, round $round/$rounds: bench/torch_gpt2_step.py ..."
            t=$(OMP_NUM_THREADS=$threads $py "$here/torch_gpt2_step.py" --data "$tmp/tokens.bin" \
                --preset "$preset" --batch "$B" --seq "$T" --steps "$steps" --threads "$threads" \
                --autocast "$autocast" 2>&1 |
                sed -n 's/^pytorch  *\([0-9.]*\) .*/\1/p')
            torch=$(best "$torch" "${t:-failed}")
        fi
    done
    results="$results$B $T $ours $llm|$torch
"
done

echo
echo "GPT-2 $preset (V 50257), $precision, forward + backward + AdamW, $threads threads each," \
     "median ms/step of steps 3..$steps," \
     "the lower of $rounds rounds"
echo "anatomy's BLAS: $blas"
[ "$precision" = bf16 ] && echo "bf16: anatomy's linear layers in bf16 (AMX or AVX512-BF16; attention fp32);" \
    "PyTorch (ours) under torch.autocast bf16 (matmuls and attention; oneDNN); llm.c's" \
    "trainer in fp32 (it autocasts on CUDA only)"
echo "torch $($py -c 'import torch; print(torch.__version__, "BLAS:", "MKL" if torch.backends.mkl.is_available() else "?", "oneDNN:", torch.backends.mkldnn.is_available())' 2>/dev/null)"
printf '%-9s %12s %18s %18s %12s %12s\n' "B x T" "anatomy ms" "llm.c PyTorch ms" "PyTorch(ours) ms" "x llm.c-py" "x ours-py"
printf '%s' "$results" | while read -r B T ours rest; do
    llm=${rest%%|*}
    torch=${rest#*|}
    ratio() { $py -c "import sys
try: print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}x')
except ValueError: print('-')" "$1" "$2"; }
    num() { case $1 in [0-9]*) echo "$1" ;; *) echo - ;; esac; }
    printf '%-9s %12s %18s %18s %12s %12s\n' "${B}x$T" "$ours" "$(num "$llm")" "$(num "$torch")" \
        "$(ratio "$(num "$llm")" "$ours")" "$(ratio "$(num "$torch")" "$ours")"
    case $llm in [0-9]*) ;; *) echo "  llm.c PyTorch: $llm" ;; esac
    case $torch in [0-9]*) ;; *) echo "  PyTorch (ours): $torch" ;; esac
done
echo "llm.c C trainer (train_gpt2.c): not run: ../shared/anchors has llm.c's train_gpt2.cu and" \
     "train_gpt2.py only, and no package this machine can install ships train_gpt2.c"
echo "(x: the reference's time / anatomy's time; above 1 anatomy is faster)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" \
     "(family $(grep -m1 '^cpu family' /proc/cpuinfo | sed 's/.*: //') model $(grep -m1 '^model[[:space:]]' /proc/cpuinfo | sed 's/.*: //')), $(nproc) cores," \
     "load $(cut -d' ' -f1-3 /proc/loadavg); commit $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo none); $(date -u +%Y-%m-%d)"
