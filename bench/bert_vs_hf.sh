#!/bin/sh
# bench/bert_vs_hf.sh [ANATOMY]: anatomy's BERT and Hugging Face's
# BertForMaskedLM side by side on tinyshakespeare (bytes: 256 ids + 4
# specials): the same initial weights, masked batches, AdamW steps, schedule
# and seed (bench/bert_vs_hf.py says how), then masked-LM loss and accuracy
# of both on the same masked validation batches, and the training loss of
# both at a few steps.
#
# Environment: STEPS (300), BATCH (64), SEQ (32), LR (1.5e-3), SEED (1337),
# THREADS (1), OUT (a directory under /tmp). The model is bert-tiny's shape
# (2 layers, 2 heads, width 128).
set -eu
anatomy=${1:-build/anatomy}
data=${DATA:-.cache/data/tinyshakespeare}
out=${OUT:-/tmp/bert_vs_hf}
[ -x "$anatomy" ] || { echo "bert_vs_hf.sh: $anatomy is missing: run 'make' first" >&2; exit 2; }
# the text only (no binary: the recipe then makes no GPT-2 shards); bytes below
ANATOMY=/nonexistent sh data/recipes/tinyshakespeare.sh "$data" >&2
prefix=$data/ts_bytes
[ -f "${prefix}_val_000000.bin" ] ||
    "$anatomy" prep --tokenizer bytes --input "$data/tinyshakespeare.txt" --out "$prefix" \
        --val-tokens 32768 >&2
start=$(date +%s)
python3 "$(dirname "$0")/bert_vs_hf.py" --anatomy "$anatomy" --train "${prefix}_train_*.bin" \
    --val "${prefix}_val_*.bin" --vocab 260 --out "$out" --steps "${STEPS:-300}" \
    --warmup $(( ${STEPS:-300} / 20 )) --batch "${BATCH:-64}" --seq "${SEQ:-32}" \
    --lr "${LR:-1.5e-3}" --seed "${SEED:-1337}" --threads "${THREADS:-1}"
echo "time $(( $(date +%s) - start )) s"
