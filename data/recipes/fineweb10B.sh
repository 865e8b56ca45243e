#!/bin/sh
# fineweb10B.sh [TRAIN_SHARDS] [OUT]: FineWeb 10B as GPT-2 tokens, the shards
# published for llm.c-style trainers (Hugging Face dataset kjj0/fineweb10B-gpt2):
# fineweb_val_000000.bin and fineweb_train_000001.bin .. TRAIN_SHARDS (default
# all 103; ~100M tokens, ~200 MB each: ~21 GB in all, about 10-30 minutes on a
# 100-1000 Mbit/s link) into OUT (default .cache/data/fineweb10B).
# Resumable: verified shards are skipped, partial downloads continue. Each
# shard's header (magic, version, count) and size are checked before it is
# kept; token values are range-checked by the loader as it reads them.
# Environment: FINEWEB_URL (another mirror with the same file names).
set -eu
RECIPE=fineweb10B
. "$(dirname "$0")/lib.sh"
n=${1:-103}
out=${2:-.cache/data/fineweb10B}
url=${FINEWEB_URL:-https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main}
case $n in '' | *[!0-9]*) die "TRAIN_SHARDS must be a number 1..103, got '$n'" ;; esac
[ "$n" -ge 1 ] && [ "$n" -le 103 ] || die "TRAIN_SHARDS must be 1..103, got $n"

mkdir -p "$out"
get() {
    f="$out/$1"
    if [ -f "$f" ]; then
        say "$1: $(check_shard "$f") tokens (already here)"
        return
    fi
    # a complete .part (stopped before its rename) needs no download
    if ! tokens=$( (check_shard "$f.part") 2>/dev/null); then
        fetch "$url/$1" "$f"
        tokens=$( (check_shard "$f.part") ) || { rm -f "$f.part"; exit 1; }
    fi
    mv "$f.part" "$f"
    say "$1: $tokens tokens"
}
get fineweb_val_000000.bin
i=1
while [ $i -le "$n" ]; do
    get "$(printf 'fineweb_train_%06d.bin' $i)"
    i=$((i + 1))
done
say "done: train with --data '$out/fineweb_train_*.bin', evaluate on $out/fineweb_val_000000.bin"
