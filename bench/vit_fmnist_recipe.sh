#!/bin/sh
# vit_fmnist_recipe.sh: the Fashion-MNIST ViT recipe aimed past
# bench/vit_fashion_mnist.sh's 90.3%: 4 x 4 patches (vit-mnist-p4: 49 + 1
# positions of width 64, 6 blocks, 305,034 parameters), training images
# mirrored with probability 1/2 (--flip), one epoch of linear warmup then
# cosine to zero, label smoothing, weight decay; random crops from the image
# padded by CROP_PAD pixels (--crop-pad) and residual dropout are there to
# turn on, but off by default: at this width they slow the fit more than
# they regularise (bench/RESULTS.md: 90.71% in 25 epochs without them,
# 89.15% with crop-pad 2 and dropout 0.1); validation on the test
# images every epoch, then `anatomy eval` top-1 accuracy of the last
# checkpoint on all 10,000 test images. One line per epoch in OUT/train.log.
# An epoch is as many steps as the training file's header counts images over
# BATCH (468 for Fashion-MNIST's 60,000), so a smaller set in the same IDX
# layout (the GPU bundle's rehearsal) runs the same recipe.
# POOL=mean puts the class head on the mean of the patch rows instead of
# [CLS] (--pool).
#
# usage: bench/vit_fmnist_recipe.sh [ANATOMY_BIN] [EPOCHS] [OUT_DIR]
# Environment (defaults in brackets): SEED [1], THREADS [1], DEVICE [cpu],
# LR [2e-3], WD [0.05], DROPOUT [0], CROP_PAD [0], FLIP [1], ERASE [0: the
# probability of random erasing, --erase], SMOOTH [0.1], BATCH [128],
# PRESET [vit-mnist-p4], POOL [cls] (or mean), WIDTH, LAYERS, HEADS [the preset's],
# RESUME [0; 1: go on with the run in OUT_DIR from its latest checkpoint, as
# stopped by a signal or a time limit, with the same environment and EPOCHS,
# its log appended to; with no checkpoint there yet, start it],
# PRECISION [fp32; bf16: on the CPU the linear layers in bf16 (AMX or AVX512-BF16), on cuda
# the bf16 path], FMNIST_DIR [/usr/share/datasets/fashion-mnist].
set -eu
BIN=${1:-build/anatomy}
EPOCHS=${2:-30}
OUT=${3:-build/bench/vit-fmnist-recipe}
D=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
SEED=${SEED:-1}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
LR=${LR:-2e-3}
WD=${WD:-0.05}
DROPOUT=${DROPOUT:-0}
CROP_PAD=${CROP_PAD:-0}
ERASE=${ERASE:-0}
FLIP=${FLIP:-1}
SMOOTH=${SMOOTH:-0.1}
BATCH=${BATCH:-128}
PRESET=${PRESET:-vit-mnist-p4}
POOL=${POOL:-cls}
PRECISION=${PRECISION:-fp32}
WIDTH=${WIDTH:-}
LAYERS=${LAYERS:-}
HEADS=${HEADS:-}
RESUME=${RESUME:-0}
for v in EPOCHS SEED THREADS CROP_PAD FLIP BATCH; do
    eval "x=\$$v"
    case $x in ''|*[!0-9]*) echo "vit_fmnist_recipe.sh: $v must be a number, got '$x'" >&2; exit 2 ;; esac
done
SHAPE=""
for v in WIDTH LAYERS HEADS; do
    eval "x=\$$v"
    [ -z "$x" ] && continue
    case $x in *[!0-9]*) echo "vit_fmnist_recipe.sh: $v must be a number, got '$x'" >&2; exit 2 ;; esac
    SHAPE="$SHAPE --$(echo $v | tr 'A-Z' 'a-z') $x"
done
case $PRECISION in fp32|bf16) ;; *) echo "vit_fmnist_recipe.sh: PRECISION must be fp32 or bf16, got '$PRECISION'" >&2; exit 2 ;; esac
case $RESUME in 0|1) ;; *) echo "vit_fmnist_recipe.sh: RESUME must be 0 or 1, got '$RESUME'" >&2; exit 2 ;; esac
case $POOL in cls|mean) ;; *) echo "vit_fmnist_recipe.sh: POOL must be cls or mean, got '$POOL'" >&2; exit 2 ;; esac
[ -d "$D" ] || {
    echo "vit_fmnist_recipe.sh: $D not found (apt-get install dataset-fashion-mnist, or set FMNIST_DIR)" >&2
    exit 2; }
# the image count in an IDX file's header (bytes 4-7, big-endian), gzipped or not
idx_count() {
    if [ -f "$1.gz" ]; then gzip -dc "$1.gz"; elif [ -f "$1" ]; then cat "$1"; else return 0; fi |
        head -c 8 | od -An -tu1 | awk 'NF == 8 { print (($5 * 256 + $6) * 256 + $7) * 256 + $8 }'
}
NTRAIN=$(idx_count "$D/train-images-idx3-ubyte")
NTEST=$(idx_count "$D/t10k-images-idx3-ubyte")
for v in NTRAIN NTEST; do
    eval "x=\$$v"
    [ -n "$x" ] && [ "$x" -gt 0 ] && continue
    f=$D/$([ $v = NTRAIN ] && echo train || echo t10k)-images-idx3-ubyte
    echo "vit_fmnist_recipe.sh: $f[.gz]: not found or not an IDX images file" >&2
    exit 2
done
[ "$NTRAIN" -ge "$BATCH" ] || {
    echo "vit_fmnist_recipe.sh: BATCH $BATCH is more than the $NTRAIN training images in $D" >&2; exit 2; }
SPE=$((NTRAIN / BATCH))      # steps per epoch (60,000 / 128 = 468 for Fashion-MNIST)
STEPS=$((EPOCHS * SPE))
VAL_BATCHES=$(((NTEST + BATCH - 1) / BATCH)) # every test image each epoch, whatever BATCH
EVAL_BATCH=$((NTEST < 100 ? NTEST : 100))
EVAL_BATCHES=$(((NTEST + EVAL_BATCH - 1) / EVAL_BATCH))
# RESUME=1 with a checkpoint in OUT: go on from it (so a requeued job can always pass RESUME=1)
ls "$OUT"/step_*.safetensors >/dev/null 2>&1 || RESUME=0
mkdir -p "$OUT"
export OMP_WAIT_POLICY=passive
echo "vit-fmnist recipe: $PRESET$SHAPE, $PRECISION, pool $POOL, $EPOCHS epochs of $SPE steps (batch $BATCH), lr $LR, crop-pad $CROP_PAD, flip $FLIP, erase $ERASE, label smoothing $SMOOTH, dropout $DROPOUT, seed $SEED -> $OUT"
# train MODEL-OPTIONS...: the recipe's run, MODEL-OPTIONS saying what it starts from
train() {
    "$BIN" train "$@" --data "$D" --val-data "$D" \
        --batch "$BATCH" --steps "$STEPS" --lr "$LR" --warmup "$SPE" --schedule cosine --lr-min-frac 0 \
        --weight-decay "$WD" --dropout "$DROPOUT" --crop-pad "$CROP_PAD" --flip "$FLIP" --erase "$ERASE" \
        --label-smoothing "$SMOOTH" --shuffle --seed "$SEED" \
        --val-every "$SPE" --val-batches "$VAL_BATCHES" --ckpt-every "$SPE" \
        --device "$DEVICE" --precision "$PRECISION" --threads "$THREADS" --out "$OUT"
}
start=$(date +%s)
if [ "$RESUME" = 1 ]; then # the checkpoint carries the model; the log goes on
    train --resume "$OUT" >> "$OUT/train.log"
else
    train --model vit --preset "$PRESET"$SHAPE --pool "$POOL" > "$OUT/train.log"
fi
end=$(date +%s)
grep '^val' "$OUT/train.log" || true
"$BIN" eval --init "$OUT" --data "$D" --split test --batch "$EVAL_BATCH" --batches "$EVAL_BATCHES" \
    --device "$DEVICE" --precision "$PRECISION" --threads "$THREADS" > "$OUT/test.txt"
cat "$OUT/test.txt"
echo "train wall time: $((end - start)) s$([ "$RESUME" = 1 ] && echo ' (this resumed part)') for $EPOCHS epochs ($STEPS steps of $BATCH) on $DEVICE, $THREADS thread(s)"
