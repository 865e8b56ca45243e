#!/bin/sh
# gpt2_124m.sh: reproduce GPT-2 small (124M) from scratch on FineWeb 10B, end
# to end, on one GPU or on N GPUs of one node:
#   1. data: the FineWeb 10B GPT-2 token shards (data/recipes/fineweb10B.sh,
#      ~21 GB) and the HellaSwag validation set (data/recipes/hellaswag.sh),
#      each fetched only when missing;
#   2. build: build/anatomy-cuda (make cuda), only when missing;
#   3. train: configs/gpt2-124m.conf (524,288 tokens per step, 19,073 steps,
#      lr 6e-4, 700 warmup steps, cosine to 0; see the file), continuing the
#      run in OUT from its latest checkpoint when there is one;
#   4. evaluate the final checkpoint: validation loss on FineWeb's validation
#      shard and HellaSwag accuracy.
# Expected outcome (the published reference runs of this recipe): validation
# loss near 3.28, HellaSwag near GPT-2 124M's 29.4%.
#
# usage: sh scripts/gpt2_124m.sh [--dry-run] [-- TRAIN_OPTIONS...]
#   --dry-run    print the commands (and which steps are skipped) without
#                running anything
#   -- ...       extra options for `anatomy train` (they win over the config),
#                e.g. -- --batch 64
# Environment (all optional):
#   NGPU       GPUs on this node to use (default: those `nvidia-smi -L` lists, else 1)
#   LAUNCHER   with NGPU > 1: mpirun (default; OpenMPI, one rank per GPU, as
#              scripts/mpirun_gpt2_124m.sh) or env (starts the NGPU ranks itself with
#              torchrun-style RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT;
#              ranks talk over NCCL)
#   ANATOMY    the binary (default build/anatomy-cuda; built with `make cuda` if missing)
#   CONFIG     the options file (default configs/gpt2-124m.conf)
#   DATA_DIR   FineWeb shards (default .cache/data/fineweb10B, the config's)
#   SHARDS     training shards to fetch, 1..103 (default 103: the whole 10B tokens)
#   HELLASWAG  the HellaSwag file (default .cache/data/hellaswag/hellaswag_val.jsonl)
#   OUT        the run directory (default runs/gpt2-124m, the config's)
#   STEPS      optimizer steps (default 19073, the config's)
#   THREADS    CPU threads per rank (default 8)
#   MPIRUN_ARGS  more mpirun options
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dry=0
while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d'; exit 0 ;;
    *) echo "gpt2_124m.sh: unknown argument '$1' (--dry-run, -- TRAIN_OPTIONS)" >&2; exit 2 ;;
    esac
done
ANATOMY=${ANATOMY:-build/anatomy-cuda}
CONFIG=${CONFIG:-configs/gpt2-124m.conf}
DATA_DIR=${DATA_DIR:-.cache/data/fineweb10B}
SHARDS=${SHARDS:-103}
HELLASWAG=${HELLASWAG:-.cache/data/hellaswag/hellaswag_val.jsonl}
OUT=${OUT:-runs/gpt2-124m}
STEPS=${STEPS:-19073}
THREADS=${THREADS:-8}
LAUNCHER=${LAUNCHER:-mpirun}
if [ -z "${NGPU:-}" ]; then
    NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "${NGPU:-0}" -ge 1 ] 2>/dev/null || NGPU=1
fi

# run CMD...: prints it (shell-quoted enough to paste), then runs it unless --dry-run
run() {
    printf '+'
    for w in "$@"; do
        case $w in
        *[!A-Za-z0-9_./=:,+-]*) printf " '%s'" "$w" ;;
        *) printf ' %s' "$w" ;;
        esac
    done
    printf '\n'
    [ $dry = 1 ] || "$@"
}
say() { echo "gpt2_124m.sh: $*"; }

# 1. data
last=$(printf '%s/fineweb_train_%06d.bin' "$DATA_DIR" "$SHARDS")
if [ -f "$DATA_DIR/fineweb_val_000000.bin" ] && [ -f "$last" ]; then
    say "FineWeb shards present in $DATA_DIR"
else
    run sh data/recipes/fineweb10B.sh "$SHARDS" "$DATA_DIR"
fi
if [ -f "$HELLASWAG" ]; then
    say "HellaSwag present: $HELLASWAG"
else
    run sh data/recipes/hellaswag.sh "$(dirname "$HELLASWAG")"
fi

# 2. build
if [ -x "$ANATOMY" ]; then
    say "using $ANATOMY"
else
    run make -j"$(nproc)" "$ANATOMY"
fi

# 3. train: a fresh run, or the latest checkpoint of OUT; nothing when the
# final checkpoint is there already
final=$(printf '%s/step_%06d.safetensors' "$OUT" "$STEPS")
if [ -f "$final" ]; then
    model=""
    say "$final exists: training is done"
elif ls "$OUT"/step_*.safetensors >/dev/null 2>&1; then
    model="--resume $OUT"
    say "resuming $OUT from $(ls "$OUT"/step_*.safetensors | tail -1)"
else
    model="--preset gpt2-124m"
fi
# the data, out and steps options repeat the config's defaults so that the
# variables above take effect; the command line wins over the file
train="train --config $CONFIG $model --data $DATA_DIR/fineweb_train_*.bin
    --val-data $DATA_DIR/fineweb_val_*.bin --hellaswag $HELLASWAG --out $OUT --steps $STEPS
    --threads $THREADS"
set -f # the globs are the trainer's to expand
if [ -z "$model" ]; then
    :
elif [ "$NGPU" -le 1 ]; then
    # shellcheck disable=SC2086 # $train is a word list
    run "$ANATOMY" $train "$@"
elif [ "$LAUNCHER" = mpirun ]; then
    # shellcheck disable=SC2086 # $train and $MPIRUN_ARGS are word lists
    run mpirun -np "$NGPU" --bind-to none --map-by slot -x PATH -x LD_LIBRARY_PATH \
        -x OMP_NUM_THREADS="$THREADS" ${MPIRUN_ARGS:-} "$ANATOMY" $train "$@"
elif [ "$LAUNCHER" = env ]; then
    # torchrun-style: one process per GPU on this node, rank = local rank
    pids=""
    r=0
    while [ $r -lt "$NGPU" ]; do
        # shellcheck disable=SC2086
        if [ $dry = 1 ]; then
            run env RANK=$r WORLD_SIZE="$NGPU" LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 \
                MASTER_PORT="${MASTER_PORT:-29500}" "$ANATOMY" $train "$@"
        else
            RANK=$r WORLD_SIZE=$NGPU LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 \
                MASTER_PORT=${MASTER_PORT:-29500} "$ANATOMY" $train "$@" &
            pids="$pids $!"
        fi
        r=$((r + 1))
    done
    failed=0
    for p in $pids; do wait "$p" || failed=1; done
    [ $failed = 0 ] || { say "a rank failed"; exit 1; }
else
    say "LAUNCHER must be mpirun or env, got '$LAUNCHER'" >&2
    exit 2
fi
set +f

# 4. evaluate the final checkpoint (train writes one at the last step)
run "$ANATOMY" eval --init "$final" --data "$DATA_DIR/fineweb_val_000000.bin" --batch 32 \
    --seq 1024 --device cuda
run "$ANATOMY" eval --init "$final" --hellaswag "$HELLASWAG" --batch 8 --device cuda
say "done: expected near 3.28 validation loss and 29.4% HellaSwag (the published reference runs)"
