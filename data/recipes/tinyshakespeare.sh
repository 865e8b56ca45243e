#!/bin/sh
# tinyshakespeare.sh [OUT]: tinyshakespeare (1,115,394 bytes, karpathy/char-rnn)
# into OUT (default .cache/data/tinyshakespeare), sha256 checked; then, when
# build/anatomy exists, its GPT-2 token shards OUT/tinyshakespeare_{val,train}_000000.bin
# (the first 32,768 tokens are validation, as llm.c does). Takes the copy in
# ../shared/data when there is one, else downloads (1 MB, seconds).
# Environment: ANATOMY (the binary), TINYSHAKESPEARE_URL (another source).
set -eu
RECIPE=tinyshakespeare
. "$(dirname "$0")/lib.sh"
out=${1:-.cache/data/tinyshakespeare}
url=${TINYSHAKESPEARE_URL:-https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt}
sum=86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed
anatomy=${ANATOMY:-build/anatomy}
txt="$out/tinyshakespeare.txt"

mkdir -p "$out"
if [ ! -f "$txt" ] || [ "$(sha256_of "$txt")" != $sum ]; then
    if [ -f ../shared/data/tinyshakespeare.txt ]; then
        cp ../shared/data/tinyshakespeare.txt "$txt.part"
    else
        fetch "$url" "$txt"
    fi
    got=$(sha256_of "$txt.part")
    [ "$got" = $sum ] || { rm -f "$txt.part"; die "$url: sha256 $got, expected $sum"; }
    mv "$txt.part" "$txt"
fi
say "$txt ($(bytes "$txt") bytes, sha256 ok)"
if [ -x "$anatomy" ]; then
    "$anatomy" prep --tokenizer gpt2 --input "$txt" --out "$out/tinyshakespeare" --val-tokens 32768
    for f in "$out"/tinyshakespeare_*.bin; do
        say "$f: $(check_shard "$f") tokens"
    done
else
    say "no $anatomy: text only (run make, then this again, for GPT-2 shards)"
fi
