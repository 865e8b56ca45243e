#!/bin/sh
# gpt2_parity.sh: does anatomy's loss curve equal PyTorch's? Trains the same
# GPT-2 from the same initial weights on the same token shards with the same
# hyperparameters in anatomy and in PyTorch (bench/torch_gpt2_train.py), and
# trains PyTorch a second time in another data order to measure PyTorch's own
# run-to-run noise. Prints a table (step, ours, torch A, torch B, |ours - A|,
# |A - B|) at several steps, the mean over the last 100 steps and the
# validation losses; ours agrees when |ours - A| stays within |A - B|.
#
#   run A: torch, the batches of ours (the loader's unshuffled order)
#   run B: torch, --shuffle --seed $SEED_B (data/shard.c's permutation, which
#          torch_gpt2_train.py re-implements exactly)
#   initial weights: `anatomy train --preset P --steps 1 --lr 0` (an AdamW step
#   at lr 0 changes no weight) writes the preset's initialisation as a
#   checkpoint; `anatomy export` turns it into a Hugging Face directory that
#   both trainers load.
#
# usage: sh bench/gpt2_parity.sh            GPU (default scale below)
#        sh bench/gpt2_parity.sh --tiny     CPU check of the harness itself
#
# GPU default: GPT-2 124M (preset gpt2-124m), B 16, T 1024, 2 micro-batches
# per step (32,768 tokens), 1,000 steps, lr 6e-4, 100 warmup steps, cosine to
# 0, weight decay 0.1, clip 1.0, validation every 100 steps on 20 micro-batches;
# ours in bf16 (build/anatomy-cuda), torch in bf16 autocast with torch.compile.
# Time: bench/NOTES.md predicts ~46 ms per B16 T1024 micro-batch for ours on an
# H100 (a prediction, not a measurement), so ~92 s for 1,000 steps; torch at a
# similar speed plus ~1 minute of compilation per run: ~6 minutes for all
# three, well inside gpu-check's 20 minutes even at 3x the predicted time.
# If it is not, PRESET=d12 (the fallback: 12 layers at width 768 is the same
# shape as 124M, so use STEPS=500) or fewer STEPS.
#
# --tiny: d2 with a 512-token vocabulary, T 64, B 4, 2 micro-batches per step,
# 30 steps, fp32, anatomy's CPU backend (build/anatomy) against torch fp32 on
# the CPU, on a generated token stream (two train shards, so batches cross
# files and wrap around the stream). It also trains ours in run B's shuffled
# order. Both pairs must agree to TOL (default 1e-4) relative at every step:
# this proves the harness reads the same batches (both orders) and implements
# the same optimizer and schedule. tests/ref/test_parity_harness.py runs it.
#
# Environment (all optional):
#   ANATOMY      the binary that trains ours (GPU: build/anatomy-cuda; tiny: build/anatomy)
#   ANATOMY_CPU  the binary that makes the initial weights and plots (build/anatomy)
#   PYTHON       the interpreter with torch (python3)
#   WORK         scratch directory (build/parity, build/parity-tiny)
#   PRESET B T TOTAL STEPS LR WARMUP VAL_EVERY VAL_BATCHES   the scale
#   SEED_B       run B's shuffle seed (7)
#   DATA VAL     token shard globs; GPU default: the first FineWeb train shard
#                and the validation shard of data/recipes/fineweb10B.sh when
#                present in .cache/data/fineweb10B, else tinyshakespeare in GPT-2
#                tokens (.cache/data/tinyshakespeare, made by
#                data/recipes/tinyshakespeare.sh when missing; 300k tokens, so
#                1,000 steps of 32k tokens are ~100 epochs: a test of parity,
#                not of learning). A GPU machine without the network needs the
#                data carried there (.cache/data/tinyshakespeare is 2 MB; one
#                FineWeb shard, 200 MB, is over the device tool's 64 MiB)
#   COMPILE      1 (default on the GPU) or 0: torch.compile for the torch runs
#   DEVICE PRECISION  without --tiny: cuda bf16 (cpu fp32 runs the GPU mode's
#                steps on the CPU at a small PRESET, to try the script itself)
#   TORCH_DEVICE the torch runs' device (default DEVICE; cpu lets ANATOMY=build/anatomy-emu
#                DEVICE=cuda try ours' CUDA path on the device emulator)
#   MODEL_OPTS   without --tiny: more preset options (e.g. "--vocab-size 512 --max-seq 64")
#   RESULTS      the file the dated block is appended to (GPU: bench/RESULTS.md;
#                RESULTS= skips); IMG the PNG (GPU: bench/img/gpt2_parity_DATE.png)
#   TOL          --tiny: the relative tolerance per step (1e-4)
#   THREADS      --tiny: CPU threads of each trainer (1)
#   DATA_SEED    --tiny: the seed of the generated token stream (random, printed)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
tiny=0
for a in "$@"; do
    case $a in
    --tiny) tiny=1 ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d'; exit 0 ;;
    *) echo "gpt2_parity.sh: unknown argument '$a' (--tiny, --help)" >&2; exit 2 ;;
    esac
done
py=${PYTHON:-python3}
cpu_bin=${ANATOMY_CPU:-build/anatomy}
seed_b=${SEED_B:-7}
date=$(date -u +%Y-%m-%d)

if [ $tiny = 1 ]; then
    bin=${ANATOMY:-build/anatomy}
    work=${WORK:-build/parity-tiny}
    preset=${PRESET:-d2} model_opts="--vocab-size 512 --max-seq 64"
    B=${B:-4} T=${T:-64} total=${TOTAL:-512} steps=${STEPS:-30} lr=${LR:-3e-3}
    warmup=${WARMUP:-5} val_every=${VAL_EVERY:-10} val_batches=${VAL_BATCHES:-4}
    device=cpu precision=fp32 compile=0
    # one thread each: the model is tiny, and idle OpenMP workers spinning
    # beside torch's would only steal a small machine's cores
    threads="--threads ${THREADS:-1}"
    OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
    export OMP_WAIT_POLICY
    results=${RESULTS-} img=${IMG-}
    tol=${TOL:-1e-4}
else
    bin=${ANATOMY:-build/anatomy-cuda}
    work=${WORK:-build/parity}
    preset=${PRESET:-gpt2-124m} model_opts=${MODEL_OPTS:-}
    B=${B:-16} T=${T:-1024} total=${TOTAL:-32768} steps=${STEPS:-1000} lr=${LR:-6e-4}
    warmup=${WARMUP:-100} val_every=${VAL_EVERY:-100} val_batches=${VAL_BATCHES:-20}
    device=${DEVICE:-cuda} precision=${PRECISION:-bf16} compile=${COMPILE:-1}
    threads=""
    results=${RESULTS-bench/RESULTS.md} img=${IMG-bench/img/gpt2_parity_$date.png}
    tol=0
fi
for x in "$bin" "$cpu_bin"; do
    [ -x "$x" ] || { echo "gpt2_parity.sh: $x: no such executable (make $x)" >&2; exit 1; }
done
# only what this script makes: WORK may be a folder that holds other things
rm -rf "$work/init" "$work/anatomy" "$work/anatomy-B" "$work/torch-A" "$work/torch-B" "$work/data"
mkdir -p "$work"
t_start=$(date +%s)

# the data
if [ $tiny = 1 ]; then
    data=${DATA:-$work/data/tiny_train_*.bin} val=${VAL:-$work/data/tiny_val_000000.bin}
    if [ -z "${DATA:-}" ]; then
        data_seed=${DATA_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
        echo "tiny token stream: DATA_SEED=$data_seed"
        $py "$here/torch_gpt2_train.py" --make-data "$work/data" --vocab 512 --tokens 10000 \
            --seed "$data_seed"
    fi
elif [ -n "${DATA:-}" ]; then
    data=$DATA val=${VAL:-$DATA}
elif [ -f .cache/data/fineweb10B/fineweb_train_000001.bin ] &&
    [ -f .cache/data/fineweb10B/fineweb_val_000000.bin ]; then
    data=.cache/data/fineweb10B/fineweb_train_000001.bin val=.cache/data/fineweb10B/fineweb_val_000000.bin
else
    ts=.cache/data/tinyshakespeare
    echo "gpt2_parity.sh: no FineWeb shards in .cache/data/fineweb10B: using tinyshakespeare"
    [ -f $ts/tinyshakespeare_train_000000.bin ] && [ -f $ts/tinyshakespeare_val_000000.bin ] ||
        ANATOMY=$cpu_bin sh data/recipes/tinyshakespeare.sh $ts >/dev/null
    data=$ts/tinyshakespeare_train_000000.bin val=$ts/tinyshakespeare_val_000000.bin
fi
echo "gpt2_parity.sh: $preset, B $B, T $T, $total tokens per step, $steps steps, lr $lr, warmup $warmup, $device $precision"
echo "data: $data; validation: $val"

# the initial weights
# shellcheck disable=SC2086 # $model_opts, $threads are word lists
"$cpu_bin" train --preset "$preset" $model_opts --data "$data" --batch 1 --seq 64 --steps 1 \
    --lr 0 --warmup 0 --schedule constant --device cpu $threads --out "$work/init" >"$work/init.log" 2>&1 ||
    { cat "$work/init.log"; exit 1; }
"$cpu_bin" export --init "$work/init/step_000001.safetensors" --out "$work/init/hf" >>"$work/init.log"

# $common is split into words below: no globbing of the data patterns (the
# trainers expand them), and so no spaces in paths
set -f
common="--data $data --val-data $val --batch $B --seq $T --total-batch $total --steps $steps
    --lr $lr --warmup $warmup --lr-min-frac 0 --weight-decay 0.1 --grad-clip 1.0
    --val-every $val_every --val-batches $val_batches"
torch_opts="--device ${TORCH_DEVICE:-$device} --precision $precision $threads"
[ "$compile" = 1 ] && torch_opts="$torch_opts --compile"

run() { # NAME COMMAND...: runs it, log in $work/NAME.txt, prints the last step line
    name=$1
    shift
    t0=$(date +%s)
    "$@" >"$work/$name.txt" 2>&1 || { tail -20 "$work/$name.txt"; echo "gpt2_parity.sh: $name failed" >&2; exit 1; }
    echo "$name: $(grep '^step' "$work/$name.txt" | tail -1) ($(( $(date +%s) - t0 )) s)"
}
# shellcheck disable=SC2086
run anatomy "$bin" train --init "$work/init/hf" $common --device $device --precision $precision \
    $threads --out "$work/anatomy"
# shellcheck disable=SC2086
run torch-A $py "$here/torch_gpt2_train.py" --init "$work/init/hf" $common $torch_opts --out "$work/torch-A"
# shellcheck disable=SC2086
run torch-B $py "$here/torch_gpt2_train.py" --init "$work/init/hf" $common $torch_opts \
    --shuffle --seed "$seed_b" --out "$work/torch-B"
extra=""
if [ $tiny = 1 ]; then
    # shellcheck disable=SC2086
    run anatomy-B "$bin" train --init "$work/init/hf" $common --device $device --precision $precision \
        $threads --shuffle --seed "$seed_b" --out "$work/anatomy-B"
    extra="$work/anatomy-B"
fi

echo
# shellcheck disable=SC2086
$py "$here/torch_gpt2_train.py" --summary "$work/anatomy" "$work/torch-A" "$work/torch-B" $extra \
    --tol "$tol" --summary-out "$work/summary.md"
echo "gpt2_parity.sh: $(( $(date +%s) - t_start )) s"

if [ -n "$img" ]; then
    mkdir -p "$(dirname "$img")"
    "$cpu_bin" plot "$work/anatomy" "$work/torch-A" "$work/torch-B" --metric loss --out "$img" ||
        echo "gpt2_parity.sh: plot failed (gnuplot missing?); the logs are in $work"
fi
if [ -n "$results" ]; then
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo none)
    dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    tv=$($py -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "?")
    tmode=$([ "$precision" = bf16 ] && echo "bf16 autocast" || echo "$precision")
    [ "$compile" = 1 ] && tmode="$tmode, torch.compile"
    {
        echo
        echo "### $date, commit $commit$dirty, ${gpu:-$device} (bench/gpt2_parity.sh)"
        echo
        echo "Loss-curve parity: $preset from the same initial weights, B $B, T $T, $total tokens"
        echo "per step, $steps steps, lr $lr (warmup $warmup, cosine to 0), weight decay 0.1,"
        echo "clip 1.0; data $data. ours: anatomy $precision; torch $tv: $tmode;"
        echo "A on ours' batches, B in another order (shuffled, seed $seed_b). Time: $(( $(date +%s) - t_start )) s."
        echo
        cat "$work/summary.md"
        [ -n "$img" ] && [ -f "$img" ] && { echo; echo "![parity]($(echo "$img" | sed 's|^bench/||'))"; }
    } >>"$results"
    echo "appended to $results"
fi
