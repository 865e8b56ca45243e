#!/bin/sh
# hellaswag.sh [OUT]: the HellaSwag validation set (rowanz/hellaswag,
# hellaswag_val.jsonl: 10,042 examples, ~11 MB, seconds to download) into OUT
# (default .cache/data/hellaswag), for the evaluation. Checked: 10,042 lines,
# each a JSON object with "ctx", "endings" and "label"; its sha256 is printed
# for the record.
# Environment: HELLASWAG_URL (another source).
set -eu
RECIPE=hellaswag
. "$(dirname "$0")/lib.sh"
out=${1:-.cache/data/hellaswag}
url=${HELLASWAG_URL:-https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl}
f="$out/hellaswag_val.jsonl"

check() {
    lines=$(grep -c '' "$1")
    [ "$lines" = 10042 ] || { echo "$1: $lines lines, expected 10042"; return 1; }
    for key in '^{' '"ctx": "' '"endings": \[' '"label": [0-3]'; do
        bad=$(grep -cv "$key" "$1" || true)
        [ "$bad" = 0 ] || { echo "$1: $bad lines without $key"; return 1; }
    done
}

mkdir -p "$out"
if [ ! -f "$f" ] || ! check "$f" >/dev/null; then
    fetch "$url" "$f"
    why=$(check "$f.part") || { rm -f "$f.part"; die "$why"; }
    mv "$f.part" "$f"
fi
say "$f: 10042 examples, $(bytes "$f") bytes, sha256 $(sha256_of "$f")"
