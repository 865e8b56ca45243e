#!/bin/sh
# vit_step_cpu.sh: training steps of the Fashion-MNIST ViT recipe's model
# (vit-mnist-p4, width 128 by default: what bench/vit_fmnist_recipe.sh trains)
# on the CPU, anatomy beside the same model in plain PyTorch
# (bench/torch_vit_step.py), in one run on the same threads, fp32 and bf16:
#   anatomy   build/anatomy train with the recipe's step (crop-pad 2, flips,
#             label smoothing 0.1, AdamW) on Fashion-MNIST; --precision bf16
#             runs its linear layers' matmuls in bf16 (AMX or AVX512-BF16),
#             attention in fp32
#   PyTorch   the same model, step and augmentation (nn.Linear, SDPA, AdamW
#             fused=False); bf16 under torch.autocast (matmuls and attention)
# Median ms/step of steps 3..STEPS (the first two are warm-up); ROUNDS rounds
# of both in turn, each one's lowest median kept (on a shared machine, the
# round it was least disturbed).
#
# usage: sh bench/vit_step_cpu.sh [ANATOMY_BIN]
#   WIDTH, LAYERS, HEADS, BATCH  the model and batch (default 128, 6, 4, 128)
#   PRECISIONS="fp32 bf16"       which to run (bf16 needs AMX or AVX512-BF16 for
#                                anatomy; without, its column says why)
#   STEPS=N (default 12), ROUNDS=N (default 2), THREADS=N (default: all cores)
#   FMNIST_DIR   Fashion-MNIST (default /usr/share/datasets/fashion-mnist)
#   PYTHON       interpreter with torch (default python3)
set -eu
bin=${1:-build/anatomy}
width=${WIDTH:-128}
layers=${LAYERS:-6}
heads=${HEADS:-4}
batch=${BATCH:-128}
steps=${STEPS:-12}
rounds=${ROUNDS:-2}
threads=${THREADS:-$(nproc)}
precisions=${PRECISIONS:-fp32 bf16}
data=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
for v in width layers heads batch steps rounds threads; do
    eval "x=\$$v"
    case $x in '' | *[!0-9]* | 0) echo "vit_step_cpu.sh: $(echo $v | tr a-z A-Z) must be a positive number, got '$x'" >&2; exit 2 ;; esac
done
for p in $precisions; do
    case $p in fp32 | bf16) ;; *) echo "vit_step_cpu.sh: PRECISIONS: '$p' is not fp32 or bf16" >&2; exit 2 ;; esac
done
[ -x "$bin" ] || { echo "vit_step_cpu.sh: $bin: no such executable (run make first)" >&2; exit 1; }
[ -d "$data" ] || { echo "vit_step_cpu.sh: $data not found (apt-get install dataset-fashion-mnist, or set FMNIST_DIR)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

median() { # ms values on stdin, one per line: the median of lines 3.. (warm-up left out)
    $py -c "import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; v=v[2:] or v
print(f'{statistics.median(v):.1f}' if v else 'failed')"
}
lower() { # the lower of two figures; a message only when neither is a number
    case $1 in [0-9]*) ;; *) echo "$2"; return ;; esac
    case $2 in [0-9]*) ;; *) echo "$1"; return ;; esac
    $py -c "import sys; print(min(sys.argv[1:], key=float))" "$1" "$2"
}
results=""
for p in $precisions; do
    ours=none torch=none
    autocast=$([ "$p" = bf16 ] && echo bf16 || echo none)
    for round in $(seq "$rounds"); do
        echo "== ViT width $width, $p, round $round/$rounds: anatomy ..."
        run=$tmp/run-$p-$round
        if OMP_NUM_THREADS=$threads "$bin" train --model vit --preset vit-mnist-p4 --width "$width" \
            --layers "$layers" --heads "$heads" --data "$data" --batch "$batch" --steps "$steps" \
            --lr 2e-3 --weight-decay 0.05 --crop-pad 2 --flip 1 --label-smoothing 0.1 --shuffle \
            --seed 1 --device cpu --precision "$p" --threads "$threads" --out "$run" \
            >"$run.txt" 2>&1; then
            ours=$(lower "$ours" "$(sed -n 's/.*"ms": *\([0-9.]*\).*/\1/p' "$run/log.jsonl" | median)")
        else
            ours=$(lower "$ours" "failed: $(tail -1 "$run.txt")")
        fi
        echo "== ViT width $width, $p, round $round/$rounds: bench/torch_vit_step.py ..."
        t=$(OMP_NUM_THREADS=$threads $py "$here/torch_vit_step.py" --width "$width" --layers "$layers" \
            --heads "$heads" --batch "$batch" --steps "$steps" --threads "$threads" \
            --autocast "$autocast" 2>&1 | sed -n 's/^pytorch  *\([0-9.]*\) .*/\1/p')
        torch=$(lower "$torch" "${t:-failed}")
    done
    results="$results$p $ours|$torch
"
done

echo
echo "ViT (vit-mnist-p4, width $width, $layers blocks, $heads heads), batch $batch x 50 positions," \
     "crop-pad 2 + flips + forward + backward + AdamW, $threads threads each," \
     "median ms/step of steps 3..$steps, the lower of $rounds rounds"
echo "anatomy: $("$bin" info | sed -n 's/^blas  *//p' | head -1); bf16: $("$bin" info | sed -n 's/^bf16 matmul  *//p' | head -1)"
echo "torch $($py -c 'import torch; print(torch.__version__, "oneDNN:", torch.backends.mkldnn.is_available())' 2>/dev/null)"
printf '%-9s %12s %12s %12s\n' precision "anatomy ms" "PyTorch ms" "x PyTorch"
printf '%s' "$results" | while read -r p rest; do
    ours=${rest%%|*}
    torch=${rest#*|}
    num() { case $1 in [0-9]*) echo "$1" ;; *) echo - ;; esac; }
    ratio=$($py -c "import sys
try: print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}x')
except ValueError: print('-')" "$(num "$torch")" "$(num "$ours")")
    printf '%-9s %12s %12s %12s\n' "$p" "$(num "$ours")" "$(num "$torch")" "$ratio"
    case $ours in [0-9]*) ;; *) echo "  anatomy: $ours" ;; esac
    case $torch in [0-9]*) ;; *) echo "  PyTorch: $torch" ;; esac
done
echo "(x PyTorch: PyTorch's time / anatomy's time; above 1 anatomy is faster)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" \
     "(family $(grep -m1 '^cpu family' /proc/cpuinfo | sed 's/.*: //') model $(grep -m1 '^model[[:space:]]' /proc/cpuinfo | sed 's/.*: //')), $(nproc) cores," \
     "load $(cut -d' ' -f1-3 /proc/loadavg); commit $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo none); $(date -u +%Y-%m-%d)"
