#!/bin/sh
# vit_fashion_mnist.sh: a small Vision Transformer trained from scratch on
# Fashion-MNIST on the CPU, then `anatomy eval` top-1 accuracy on the 10,000
# test images. Prints the commands, the wall time and the accuracy.
#
# usage: bench/vit_fashion_mnist.sh [ANATOMY_BIN] [EPOCHS] [OUT_DIR]
# Needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist),
# or FMNIST_DIR pointing at a directory with the four standard IDX files.
#
# The model is vit-mnist-p7: 28 x 28 grey images in 16 patches of 7 x 7,
# [CLS] + 16 positions, 6 pre-LN blocks of width 64 (4 heads), 305,034
# parameters. 937 steps of 64 images are one epoch of the 60,000. Residual
# dropout 0.1 (DROPOUT) keeps it from overfitting after about 12 epochs, as
# it did without (89.8% after 20 epochs; 90.3% with it after 25: RESULTS.md).
# THREADS [2], DEVICE [cpu], WD [0.05] and FMNIST_DIR override the defaults.
set -e
BIN=${1:-build/anatomy}
EPOCHS=${2:-25}
OUT=${3:-build/bench/vit-fmnist}
D=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cpu}
WD=${WD:-0.05}
DROPOUT=${DROPOUT:-0.1}
STEPS=$((EPOCHS * 937))

if [ ! -d "$D" ]; then
    echo "vit_fashion_mnist.sh: $D not found (apt-get install dataset-fashion-mnist, or set FMNIST_DIR)" >&2
    exit 1
fi
mkdir -p "$OUT"
export OMP_WAIT_POLICY=passive
set -x
start=$(date +%s)
"$BIN" train --model vit --preset vit-mnist-p7 --data "$D" --val-data "$D" \
    --batch 64 --steps "$STEPS" --lr 3e-3 --warmup 470 --lr-min-frac 0 --weight-decay "$WD" \
    --dropout "$DROPOUT" --shuffle --seed 1 --val-every 937 --val-batches 40 --ckpt-every 937 \
    --device "$DEVICE" --threads "$THREADS" --out "$OUT"
end=$(date +%s)
"$BIN" eval --init "$OUT" --data "$D" --split test --batch 100 --batches 100 \
    --device "$DEVICE" --threads "$THREADS"
set +x
echo "train wall time: $((end - start)) s for $EPOCHS epochs ($STEPS steps of 64) on $DEVICE"
