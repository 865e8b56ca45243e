#!/bin/sh
# make demo: trains a small GPT-2 on tinyshakespeare (bytes as tokens) on the
# CPU in a few minutes, then prints samples. usage: demo.sh path/to/anatomy
set -e
BIN=${1:-build/anatomy}
DATA=build/demo
SRC=../shared/data/tinyshakespeare.txt
URL=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
mkdir -p "$DATA"
if [ ! -f "$DATA/tinyshakespeare.txt" ]; then
    if [ -f "$SRC" ]; then
        cp "$SRC" "$DATA/tinyshakespeare.txt"
    else
        echo "demo: fetching tinyshakespeare from $URL"
        curl -fsSL "$URL" -o "$DATA/tinyshakespeare.txt.tmp"
        mv "$DATA/tinyshakespeare.txt.tmp" "$DATA/tinyshakespeare.txt"
    fi
fi
"$BIN" prep --tokenizer bytes --input "$DATA/tinyshakespeare.txt" --out "$DATA/shakespeare" \
    --val-tokens 65536
"$BIN" train --preset d4 --vocab-size 256 --max-seq 256 \
    --data "$DATA/shakespeare_train_*.bin" --val-data "$DATA/shakespeare_val_*.bin" \
    --batch 16 --seq 128 --steps 400 --lr 2e-3 --warmup 20 --lr-min-frac 0.1 \
    --val-every 100 --val-batches 8 --sample-every 200 --sample-tokens 200 \
    --out "$DATA/run" --ckpt-every 200
echo
echo "demo: a longer sample from the final checkpoint:"
"$BIN" sample --init "$DATA/run" --tokens 400 --temperature 0.8 --top-k 40 --seed 7 \
    --prompt "ROMEO:" 2>/dev/null || "$BIN" sample --init "$DATA/run/step_000400.safetensors" \
    --tokens 400 --temperature 0.8 --top-k 40 --seed 7 --prompt "ROMEO:"
