#!/bin/sh
# bench/tsgpt_etth1.sh: the autoregressive time-series GPT (tsgpt) on ETTh1,
# under the protocol of scripts/etth1.sh (PatchTST's): train / validation /
# test = 12 / 4 / 4 months of hours, per-channel normalisation by the
# training split's statistics, mse and mae of the forecast over every test
# window and channel, in normalised units. tsgpt's forecast is the median of
# `samples` sampled paths (the preset's 20), decoded with the key/value
# cache: each channel's look-back cached once and read by all its paths,
# every window, channel and path of an evaluation batch advancing together,
# one batched step per forecast value.
#
# Trains STEPS steps (no checkpoint selection: the last one is tested), then
# evaluates the whole test split and ends with
#   test (first N windows, as PatchTST evaluates) mse <v> mae <v>
#   test, the paths' mean as the forecast: mse <v> mae <v>
#   test mse <v> mae <v>
# the first over the windows PatchTST's test loader keeps (it drops the last
# incomplete batch of 128), the last over all of them, the middle one of the
# paths' mean (the squared error's optimal point forecast; the median is the
# absolute error's) over all of them; all computed from the forecast CSV that
# eval writes, and the last checked against eval's own mse line.
#
#   sh bench/tsgpt_etth1.sh
#
# Environment (defaults in brackets): ANATOMY_BIN [build/anatomy], ETTH1
# [../shared/data/ett/ETTh1.csv, else data/ett/ETTh1.csv], OUT
# [runs/tsgpt-etth1-HORIZON], HORIZON [96], LOOKBACK [96], PRESET
# [tsgpt-etth1], STEPS [1600], BATCH [32], LR [1e-3], SEED [2021],
# EVAL_BATCH [16] (windows per decoding batch: the cache holds
# EVAL_BATCH x 7 x samples paths), THREADS [1], EVAL_ONLY=1 (test the
# checkpoint already in OUT).
set -eu
BIN=${ANATOMY_BIN:-build/anatomy}
if [ -z "${ETTH1:-}" ]; then
    ETTH1=../shared/data/ett/ETTh1.csv
    [ -f "$ETTH1" ] || ETTH1=data/ett/ETTh1.csv
fi
H=${HORIZON:-96}
LOOKBACK=${LOOKBACK:-96}
PRESET=${PRESET:-tsgpt-etth1}
STEPS=${STEPS:-1600}
BATCH=${BATCH:-32}
LR=${LR:-1e-3}
SEED=${SEED:-2021}
EVAL_BATCH=${EVAL_BATCH:-16}
THREADS=${THREADS:-1}
OUT=${OUT:-runs/tsgpt-etth1-$H}
for v in H LOOKBACK STEPS BATCH EVAL_BATCH THREADS; do
    eval "x=\$$v"
    case $x in ''|*[!0-9]*) echo "tsgpt_etth1.sh: $v must be a number, got '$x'" >&2; exit 2 ;; esac
done
[ -x "$BIN" ] || { echo "tsgpt_etth1.sh: $BIN is missing: run 'make' first" >&2; exit 2; }
[ -f "$ETTH1" ] || { echo "tsgpt_etth1.sh: $ETTH1 is missing (ETDataset, ETT-small/ETTh1.csv)" >&2; exit 2; }
# idle OpenMP workers sleep: spinning ones burn the shared cores (a 2-thread
# forecast spent 3.5x the CPU of a 1-thread one on a loaded machine)
export OMP_WAIT_POLICY=passive
mkdir -p "$OUT"
ckpt=$OUT/step_$(printf %06d "$STEPS").safetensors

start=$(date +%s)
if [ "${EVAL_ONLY:-0}" != 1 ]; then
    echo "tsgpt-etth1: $PRESET, look-back $LOOKBACK, horizon $H, $STEPS steps of $BATCH windows, lr $LR, seed $SEED -> $OUT"
    # validation: one batch at the end (the sampled forecast is the costly part)
    "$BIN" train --model tsgpt --preset "$PRESET" --lookback "$LOOKBACK" --horizon "$H" \
        --data "$ETTH1" --batch "$BATCH" --shuffle --steps "$STEPS" --lr "$LR" \
        --warmup $((STEPS / 10)) --schedule cosine --lr-min-frac 0.01 --weight-decay 0.05 \
        --grad-clip 1.0 --seed "$SEED" --val-batches 1 --threads "$THREADS" --device cpu \
        --out "$OUT" > "$OUT/train.log"
    tail -n 2 "$OUT/train.log"
fi
trained=$(date +%s)
[ -f "$ckpt" ] || { echo "tsgpt_etth1.sh: $ckpt is missing" >&2; exit 1; }
"$BIN" eval --init "$ckpt" --data "$ETTH1" --split test --batch "$EVAL_BATCH" \
    --threads "$THREADS" --device cpu --forecast "$OUT/test_forecast.csv" > "$OUT/test.txt"
end=$(date +%s)
cat "$OUT/test.txt"
NTEST=$((2880 - H + 1))
python3 - "$OUT/test_forecast.csv" "$OUT/test.txt" "$EVAL_BATCH" 7 "$NTEST" <<'EOF'
import sys
import numpy as np
path, report, eb, ch, ntest = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
d = np.genfromtxt(path, delimiter=",", names=True)
window = d["batch"].astype(int) * eb + d["row"].astype(int) // ch
assert window.max() + 1 == ntest, f"{window.max() + 1} test windows in the forecast, expected {ntest}"
err = d["median"] - d["target"]
keep = window < ntest // 128 * 128
print(f"test (first {ntest // 128 * 128} windows, as PatchTST evaluates) "
      f"mse {np.mean(err[keep] ** 2):.6f} mae {np.mean(np.abs(err[keep])):.6f}")
mse = np.mean(err ** 2)
said = float([l.split()[1] for l in open(report) if l.startswith("mse ")][0])
assert abs(mse - said) <= 1e-5 * max(1.0, said), f"eval's mse {said}, the CSV's {mse}"
em = d["mean"] - d["target"]
print(f"test, the paths' mean as the forecast: mse {np.mean(em ** 2):.6f} mae {np.mean(np.abs(em)):.6f}")
print(f"test mse {mse:.6f} mae {np.mean(np.abs(err)):.6f}")
EOF
echo "time: training $((trained - start)) s, test forecast $((end - trained)) s ($THREADS threads)"
