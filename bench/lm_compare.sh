#!/bin/sh
# lm_compare.sh [ANATOMY]: the paper's comparison, measured. A feed-forward
# LM (fixed window), an LSTM (unbounded state, truncated BPTT) and GPT-2 (a
# context of T tokens) trained on the same tinyshakespeare byte tokens, the
# same number of them, in the same order of size (~0.4-0.5M parameters), on
# the CPU; then each one's loss on the whole validation split, side by side.
#
# Tokens: bytes (vocabulary 256), the first 10% of the text as validation
# (anatomy prep's default), so the losses are nats per character.
# Every model: micro-batch B x T, STEPS AdamW steps at lr LR (cosine, 10
# warmup steps), one thread each (on a busy shared machine OpenMP teams cost
# more than they give at these sizes). The recurrent model reads B parallel
# streams and carries its state across micro-batches; GPT-2 and the FFNN read
# consecutive B*T chunks. Validation: the whole split for each (its micro-
# batches of B x T cover the same 111,539 bytes up to the last partial one).
#
# Environment: STEPS (600), B (8), T (64), LR (2e-3), THREADS (1),
# DATA (.cache/data/tinyshakespeare), OUT (a temporary directory).
set -eu
anatomy=${1:-build/anatomy}
STEPS=${STEPS:-600}
B=${B:-8}
T=${T:-64}
LR=${LR:-2e-3}
THREADS=${THREADS:-1}
DATA=${DATA:-.cache/data/tinyshakespeare}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

[ -x "$anatomy" ] || { echo "lm_compare: $anatomy is missing (make)" >&2; exit 1; }
txt="$DATA/tinyshakespeare.txt"
[ -f "$txt" ] || ANATOMY=/nonexistent sh "$(dirname "$0")/../data/recipes/tinyshakespeare.sh" "$DATA"
prefix="$DATA/tinyshakespeare_bytes"
if [ ! -f "${prefix}_val_000000.bin" ]; then
    "$anatomy" prep --tokenizer bytes --input "$txt" --out "$prefix" >/dev/null
fi
train="${prefix}_train_*.bin"
val="${prefix}_val_*.bin"
# micro-batches of B x T in the validation split: all of it
vtok=$(od -An -t d4 -j 8 -N 4 "${prefix}_val_000000.bin" | tr -d ' ')
vbatches=$(( (vtok - 1) / (B * T) ))

run() { # name, context (as the model sees it), model options...
    name=$1
    ctx=$2
    shift 2
    t0=$(date +%s)
    "$anatomy" train "$@" --vocab-size 256 --data "$train" --val-data "$val" \
        --val-batches "$vbatches" --batch "$B" --seq "$T" --steps "$STEPS" --lr "$LR" \
        --warmup 10 --seed 1 --threads "$THREADS" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 ||
        { echo "lm_compare: $name failed:" >&2; tail -5 "$OUT/$name.log" >&2; exit 1; }
    t1=$(date +%s)
    params=$(sed -n 's/^training [a-z0-9]*: \([0-9]*\) parameters.*/\1/p' "$OUT/$name.log")
    first=$(sed -n 's/^step *1\/[0-9]* | loss \([0-9.]*\).*/\1/p' "$OUT/$name.log")
    last=$(sed -n "s/^step *$STEPS\/$STEPS | loss \([0-9.]*\).*/\1/p" "$OUT/$name.log")
    vl=$(sed -n 's/^val .* loss \([0-9.]*\).*/\1/p' "$OUT/$name.log" | tail -1)
    printf '%-6s %9s %10s %10s %10s %7ss  %s\n' "$name" "$params" "$first" "$last" "$vl" \
        "$((t1 - t0))" "$ctx"
}

echo "lm_compare: $STEPS steps of $B x $T = $((STEPS * B * T)) byte tokens each, lr $LR," \
     "validation $vbatches x $B x $T bytes; $OUT"
printf '%-6s %9s %10s %10s %10s %8s  %s\n' model params "loss@1" "loss@$STEPS" "val loss" time context
run ffnn "the previous 8 bytes (window)" --preset ffnn-small
run lstm "unbounded state, gradients over $T (BPTT)" --preset lstm-small --hidden 256
run gpt2 "the previous $T bytes at most (attention)" --preset d2 --max-seq "$T"
