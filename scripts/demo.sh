#!/bin/sh
# make demo: trains a small GPT-2 on tinyshakespeare, in GPT-2 tokens, on the
# CPU in a few minutes, then prints samples. usage: demo.sh path/to/anatomy
# tinyshakespeare comes from ../shared/data when present, else its public URL
# (data/recipes/tinyshakespeare.sh checks its sha256 and makes the shards).
set -e
BIN=${1:-build/anatomy}
DATA=build/demo
ANATOMY=$BIN sh data/recipes/tinyshakespeare.sh "$DATA"
"$BIN" train --preset d2 --max-seq 128 \
    --data "$DATA/tinyshakespeare_train_*.bin" --val-data "$DATA/tinyshakespeare_val_*.bin" \
    --batch 8 --seq 128 --steps 500 --lr 3e-3 --warmup 20 --lr-min-frac 0.1 \
    --val-every 100 --val-batches 16 --sample-every 250 --sample-tokens 64 \
    --ckpt-every 250 --out "$DATA/run"
echo
echo "demo: a longer sample from the final checkpoint:"
"$BIN" sample --init "$DATA/run" --prompt "ROMEO:" --tokens 120 --temperature 0.8 --top-k 40 \
    --seed 7
