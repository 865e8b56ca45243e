#!/bin/sh
# bench_tokenizer.sh [BIN] [CORPUS] [REPEAT] [OPTIONS...]: GPT-2 tokenizer
# throughput of BIN (default build/anatomy) beside tiktoken and HF tokenizers,
# single thread, vocabulary load included, on CORPUS repeated REPEAT times
# (default tinyshakespeare from ../shared/data, once); then `anatomy prep`
# scaling with --threads 1..cores, output checked identical. OPTIONS go to
# bench_tokenizer.py (e.g. --only prep, --runs 5, --prep-repeat 16). Takes
# ~10 s plus ~5 s per core, plus ~4 s per extra repeat.
set -eu
bin=${1:-build/anatomy}
corpus=${2:-../shared/data/tinyshakespeare.txt}
repeat=${3:-1}
if [ $# -gt 3 ]; then shift 3; else shift $#; fi
vocab=${ANATOMY_GPT2_DIR:-$(dirname "$bin")/.cache/gpt2}
PYTHON=${PYTHON:-python3}
[ -x "$bin" ] || { echo "bench_tokenizer: $bin not built (run make)" >&2; exit 1; }
[ -f "$vocab/encoder.json" ] || { echo "bench_tokenizer: no vocabulary in $vocab (run make)" >&2; exit 1; }
[ -f "$corpus" ] || { echo "bench_tokenizer: corpus $corpus missing" >&2; exit 1; }
echo "bench_tokenizer: $(git rev-parse --short HEAD 2>/dev/null || echo 'no commit'), $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
exec "$PYTHON" "$(dirname "$0")/bench_tokenizer.py" --bin "$bin" --vocab "$vocab" --corpus "$corpus" --repeat "$repeat" "$@"
