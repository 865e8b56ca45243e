#!/bin/sh
# gpt2_vocab.sh DEST [SRC_DIR]: puts GPT-2's BPE vocabulary (encoder.json,
# vocab.bpe) in DEST, checked against the sha256 sums below. Takes each file
# from SRC_DIR when it is there, else downloads it from OpenAI's public copy
# (1.5 MB; needs curl and the network). A file already in DEST with the right
# sum is kept. Missing sources are a warning (the gpt2 tokenizer then reports
# the vocabulary missing when used); a wrong sum is an error.
set -eu
dest=$1
src=${2:-}
url=https://openaipublic.blob.core.windows.net/gpt-2/encodings/main

sum_of() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$dest"
for f in encoder.json vocab.bpe; do
    case $f in
    encoder.json) want=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783 ;;
    vocab.bpe) want=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5 ;;
    esac
    if [ -f "$dest/$f" ] && [ "$(sum_of "$dest/$f")" = "$want" ]; then
        continue
    fi
    tmp="$dest/.$f.$$"
    if [ -n "$src" ] && [ -f "$src/$f" ]; then
        cp "$src/$f" "$tmp"
        from="$src/$f"
    elif command -v curl >/dev/null 2>&1 &&
        curl -fsSL --connect-timeout 10 --max-time 300 -o "$tmp" "$url/$f" 2>/dev/null; then
        from="$url/$f"
    else
        rm -f "$tmp"
        echo "gpt2-vocab: warning: $f is not in '${src:-(none)}' and cannot be downloaded;" \
             "the gpt2 tokenizer needs it in $dest" >&2
        continue
    fi
    got=$(sum_of "$tmp")
    if [ "$got" != "$want" ]; then
        rm -f "$tmp"
        echo "gpt2-vocab: error: $from: sha256 $got, expected $want" >&2
        exit 1
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dest/$f"
    echo "gpt2-vocab: $dest/$f from $from (sha256 ok)"
done
