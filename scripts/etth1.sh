#!/bin/sh
# etth1.sh HORIZON: the standard ETTh1 long-horizon forecasting protocol, end
# to end. Trains patchts (PatchTST-style: post-LN blocks, look-back 336,
# patches of 16 with stride 8) on the 12 training months, keeps a checkpoint
# per epoch, picks the one with the lowest mse on the 4 validation months
# (or, with AVERAGE=K, takes the mean of the last K epochs' weights),
# evaluates it on the 4 test months and ends with the line
# `test mse <value> mae <value>` (mean squared and absolute error over every
# test window, in the training split's normalised units, as the papers report
# them). The line before it gives the same over the windows PatchTST's code
# evaluates (its test loader drops the last incomplete batch of 128).
#
#   sh scripts/etth1.sh 96            HORIZON: 96, 192, 336 or 720
#
# Environment (defaults in brackets):
#   ANATOMY_BIN  the binary [build/anatomy]
#   ETTH1        the CSV [../shared/data/ett/ETTh1.csv, else data/ett/ETTh1.csv]
#   OUT          run directory [runs/etth1-HORIZON]
#   PRESET [patchts-etth1]  EPOCHS [20]  BATCH [64]  WD [0.05]
#   LR [1e-3 up to horizon 96, 2e-4 beyond: what validation picked; at 1e-3
#      the longer horizons overfit within 1-3 epochs]
#   DROPOUT [0.3] (PatchTST's on ETTh1; 0: none)
#   LOSS [mse]   the training loss: mse, mae or huber (the trainer's --loss;
#                checkpoints are still picked by validation mse, and the test
#                line is mse and mae whatever the loss)
#   HUBER_DELTA  with LOSS=huber: its delta in the normalised units (the
#                trainer's --huber-delta; default 1)
#   LOOKBACK [336] (PatchTST/64 looks back 512)
#   NORM [layer] the post-LN blocks' norm: layer, or batch (PatchTST's
#                BatchNorm1d: batch statistics in training, running ones for
#                validation and test; the trainer's --norm)
#   AVERAGE [0]  0: test the epoch checkpoint with the best validation mse;
#                K > 0: test the element-wise mean of the last K epochs'
#                weights (and running statistics), written by `anatomy export`
#                to OUT/average_last_K.safetensors; its validation mse is
#                printed after every epoch's
#   The best horizon-96 setting measured (bench/RESULTS.md, five seeds: test
#   mse 0.3646 over PatchTST's windows): NORM=batch BATCH=128 AVERAGE=10
#   SEED [2021]  EXTRA: more `anatomy train` options (e.g. "--device cpu")
#   RESUME=1     continue an interrupted run in OUT from its latest checkpoint
#                (same data order and schedule: the trainer's --resume), its
#                log appended to OUT/train.log; with no checkpoint in OUT yet,
#                start it (so a requeued job can always pass RESUME=1)
# Runs on the GPU when the binary has one (the trainer's default device).
set -eu

H=${1:?usage: scripts/etth1.sh HORIZON (96, 192, 336 or 720)}
case $H in
    ''|*[!0-9]*) echo "etth1.sh: HORIZON must be a number, got '$H'" >&2; exit 2 ;;
esac
BIN=${ANATOMY_BIN:-build/anatomy}
if [ -z "${ETTH1:-}" ]; then
    ETTH1=../shared/data/ett/ETTh1.csv
    [ -f "$ETTH1" ] || ETTH1=data/ett/ETTh1.csv
fi
OUT=${OUT:-runs/etth1-$H}
PRESET=${PRESET:-patchts-etth1}
EPOCHS=${EPOCHS:-20}
BATCH=${BATCH:-64}
if [ "$H" -le 96 ]; then LR=${LR:-1e-3}; else LR=${LR:-2e-4}; fi
WD=${WD:-0.05}
DROPOUT=${DROPOUT:-0.3}
SEED=${SEED:-2021}
EXTRA=${EXTRA:-}
# only what was given: a resumed run takes its loss from the checkpoint
LOSS_OPTS="${LOSS:+--loss $LOSS} ${HUBER_DELTA:+--huber-delta $HUBER_DELTA}"
LOOKBACK=${LOOKBACK:-336}
NORM=${NORM:-layer}
case ${LOSS:-mse} in
    mse|mae|huber) ;;
    *) echo "etth1.sh: LOSS must be mse, mae or huber, got '$LOSS'" >&2; exit 2 ;;
esac
case $NORM in
    layer|batch) ;;
    *) echo "etth1.sh: NORM must be layer or batch, got '$NORM'" >&2; exit 2 ;;
esac
case $LOOKBACK in
    ''|*[!0-9]*) echo "etth1.sh: LOOKBACK must be a number, got '$LOOKBACK'" >&2; exit 2 ;;
esac
AVERAGE=${AVERAGE:-0}
case $AVERAGE in
    ''|*[!0-9]*) echo "etth1.sh: AVERAGE must be a number of epochs (0: the best one), got '$AVERAGE'" >&2
                 exit 2 ;;
esac
AVERAGE=${AVERAGE#"${AVERAGE%%[!0]*}"}    # 02 -> 2 (not octal in $((...)))
AVERAGE=${AVERAGE:-0}
if [ "$AVERAGE" -gt "$EPOCHS" ]; then
    echo "etth1.sh: AVERAGE=$AVERAGE is more than the $EPOCHS epochs (EPOCHS) there will be" >&2
    exit 2
fi

[ -x "$BIN" ] || { echo "etth1.sh: $BIN is missing: run 'make' first" >&2; exit 2; }
[ -f "$ETTH1" ] || {
    echo "etth1.sh: $ETTH1 is missing (ETDataset, ETT-small/ETTh1.csv)" >&2; exit 2; }

# One epoch is every training window once: 8640 training rows give
# 8640 - LOOKBACK - H + 1 windows.
NWIN=$((8640 - LOOKBACK - H + 1))
SPE=$(((NWIN + BATCH - 1) / BATCH))
STEPS=$((EPOCHS * SPE))
WARMUP=$SPE
start=$(date +%s)
echo "etth1: horizon $H, look-back $LOOKBACK, $PRESET, $EPOCHS epochs of $SPE steps (batch $BATCH), lr $LR, norm $NORM, dropout $DROPOUT, loss ${LOSS:-mse}${HUBER_DELTA:+ (delta $HUBER_DELTA)} -> $OUT"
mkdir -p "$OUT"
if [ "${RESUME:-0}" = 1 ] && ls "$OUT"/step_*.safetensors > /dev/null 2>&1; then
    MODEL="--resume $OUT"    # the checkpoint carries the model's config
else
    MODEL="--model patchts --preset $PRESET --horizon $H --lookback $LOOKBACK --norm $NORM"
    : > "$OUT/train.log"     # a new run's log starts empty; a resumed one's goes on
fi
LOG=$OUT/train.log
# shellcheck disable=SC2086
"$BIN" train $MODEL \
    --data "$ETTH1" --batch "$BATCH" --shuffle --steps "$STEPS" --lr "$LR" \
    --warmup "$WARMUP" --schedule cosine --lr-min-frac 0.01 --weight-decay "$WD" \
    --grad-clip 1.0 --dropout "$DROPOUT" --seed "$SEED" --ckpt-every "$SPE" --out "$OUT" \
    $LOSS_OPTS $EXTRA \
    >> "$LOG"
tail -n 2 "$LOG"
if [ "$AVERAGE" -gt 0 ]; then
    n=$(find "$OUT" -maxdepth 1 -name 'step_*.safetensors' | wc -l)
    if [ "$n" -lt "$AVERAGE" ]; then
        echo "etth1.sh: AVERAGE=$AVERAGE but $OUT has $n epoch checkpoints" >&2
        exit 1
    fi
fi

# figures LABEL FILE: "LABEL mse <value> mae <value>" from an eval report;
# fails when either is missing.
figures() {
    awk -v label="$1" '$1 == "mse" { m = $2 } $1 == "mae" { a = $2 } END {
        if (m == "" || a == "") exit 1; printf "%s mse %s mae %s\n", label, m, a }' "$2"
}

# The checkpoint with the best validation mse (every validation window).
best= bestmse=
for ck in "$OUT"/step_*.safetensors; do
    mse=$("$BIN" eval --init "$ck" --data "$ETTH1" --split val --batch "$BATCH" |
          awk '$1 == "mse" { print $2 }')
    echo "val mse $mse  $(basename "$ck")"
    if [ -z "$best" ] || awk -v a="$mse" -v b="$bestmse" 'BEGIN { exit !(a < b) }'; then
        best=$ck
        bestmse=$mse
    fi
done
[ -n "$best" ] || { echo "etth1.sh: no checkpoint in $OUT" >&2; exit 1; }
echo "best: $(basename "$best") (val mse $bestmse)"

# AVERAGE=K: the mean of the last K epoch checkpoints (step_NNNNNN sorts by
# step) is the model tested instead.
if [ "$AVERAGE" -gt 0 ]; then
    set -- "$OUT"/step_*.safetensors
    shift $(($# - AVERAGE))
    best=$OUT/average_last_$AVERAGE.safetensors
    first=$1
    for last; do :; done    # the last of "$@"
    "$BIN" export --format ckpt --out "$best" --init "$@" > /dev/null
    mse=$("$BIN" eval --init "$best" --data "$ETTH1" --split val --batch "$BATCH" |
          awk '$1 == "mse" { print $2 }')
    echo "average of the last $AVERAGE: $(basename "$first") to $(basename "$last") (val mse $mse) -> $(basename "$best")"
fi

"$BIN" eval --init "$best" --data "$ETTH1" --split test --batch "$BATCH" > "$OUT/test.txt"
cat "$OUT/test.txt"
# PatchTST's published figures come from a test loader that drops the last
# incomplete batch of 128 (drop_last): the first floor(windows / 128) * 128
# windows in order. The same windows here, for a like-for-like comparison;
# the line after it, over every test window, is the recipe's result.
NTEST=$((2880 - H + 1))
"$BIN" eval --init "$best" --data "$ETTH1" --split test --batch 128 \
    --batches $((NTEST / 128)) > "$OUT/test_droplast.txt"
figures "test (first $((NTEST / 128 * 128)) windows, as PatchTST evaluates)" \
    "$OUT/test_droplast.txt"
echo "time $(( $(date +%s) - start )) s"
figures test "$OUT/test.txt"
