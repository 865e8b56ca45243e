#!/bin/sh
# bench/bert_tinyshakespeare.sh [ANATOMY]: BERT masked-LM pretraining on
# tinyshakespeare, on the CPU, and the figure that says it learned: the
# validation masked-LM loss beside the unigram entropy of the training tokens
# (the loss of the best model that ignores context: predicting each masked
# token from token frequencies alone).
#
# Tokens: bytes (TOKENIZER=bytes, the default: 256 ids + 4 specials = 260)
# or GPT-2's BPE (TOKENIZER=gpt2: 50257 + 4 = 50261). Environment overrides:
# PRESET (bert-tiny), SEQ (32), BATCH (64), STEPS (700), LR (1.5e-3),
# THREADS (all cores), NSP (0/1), OUT (a run directory under /tmp).
# Measured (bench/RESULTS.md): the defaults reach 2.38 nats against the bytes'
# 3.31 in 17 minutes on 2 shared cores. Post-LN BERT sits on the unigram
# plateau (loss ~3.3, predicting ' ') until attention finds the neighbours:
# with --lr 3e-3 it had not left it after 230 steps; with T = 128 (four times
# fewer sequences per step, each position embedding trained less) it left it
# slowly (3.06 after 300 steps of 16 x 128).
set -eu
anatomy=${1:-build/anatomy}
tok=${TOKENIZER:-bytes}
preset=${PRESET:-bert-tiny}
seq=${SEQ:-32}
batch=${BATCH:-64}
steps=${STEPS:-700}
lr=${LR:-1.5e-3}
data=${DATA:-.cache/data/tinyshakespeare}
out=${OUT:-/tmp/bert_tinyshakespeare_$tok}
threads=${THREADS:+--threads $THREADS}
nsp=
[ "${NSP:-0}" = 1 ] && nsp=--nsp

ANATOMY=$anatomy sh data/recipes/tinyshakespeare.sh "$data" >&2
case $tok in
bytes)
    vocab=260
    prefix=$data/ts_bytes
    [ -f "${prefix}_val_000000.bin" ] ||
        "$anatomy" prep --tokenizer bytes --input "$data/tinyshakespeare.txt" --out "$prefix" \
            --val-tokens 32768 >&2 ;;
gpt2)
    vocab=50261
    prefix=$data/tinyshakespeare ;; # the recipe's GPT-2 shards
*) echo "TOKENIZER: bytes or gpt2, not $tok" >&2; exit 1 ;;
esac

# unigram entropy (nats) of the training tokens: the loss of a context-free guess
entropy=$(python3 - "${prefix}"_train_*.bin <<'EOF'
import sys
import numpy as np
counts = np.zeros(65536)
for path in sys.argv[1:]:
    t = np.fromfile(path, dtype=np.uint16)[512:]  # after the 256 int32 header words
    counts += np.bincount(t, minlength=65536)
p = counts[counts > 0] / counts.sum()
print(f"{-(p * np.log(p)).sum():.4f}")
EOF
)

echo "== $preset on tinyshakespeare ($tok tokens, vocabulary $vocab), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
set -x
start=$(date +%s)
"$anatomy" train --preset "$preset" --vocab-size $vocab --max-seq "$seq" $nsp \
    --data "${prefix}_train_*.bin" --val-data "${prefix}_val_*.bin" --shuffle \
    --batch "$batch" --seq "$seq" --steps "$steps" --lr "$lr" --warmup $((steps / 20)) \
    --val-every $((steps / 6)) --val-batches 16 --device cpu $threads --out "$out"
end=$(date +%s)
"$anatomy" eval --init "$out/step_$(printf %06d "$steps").safetensors" --data "${prefix}_val_*.bin" --split val --batch 16 --seq "$seq" \
    --device cpu $threads > "$out/eval.txt"
set +x
cat "$out/eval.txt"
loss=$(sed -n 's/^loss //p' "$out/eval.txt")
[ -n "$nsp" ] && loss=$(sed -n 's/^mlm_loss //p' "$out/eval.txt") # without the NSP term
echo "masked-LM validation loss $loss nats vs unigram entropy $entropy nats of the training tokens ($((end - start)) s training)"
