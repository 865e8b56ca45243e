#!/usr/bin/env bash
# gpu_run.sh, installed as build/gpu/run.sh by `make gpu-bundle`: every figure
# one GPU lease can give, from binaries built before the lease, in one call.
#
# usage (on the GPU machine, from the repository root, carrying build/gpu):
#   build/gpu/run.sh             the first call: under 9 minutes on one H100
#   build/gpu/run.sh --second    the optional second call: the two-kernel
#                                attention backward beside the fused one
#                                (ANATOMY_ATTN_BWD=split), the NCCL path,
#                                racecheck on the attention kernels, the
#                                loss-curve parity with PyTorch (500 steps)
#   build/gpu/run.sh --vit       a call of its own (carrying build/gpu-fmnist
#                                too): the Fashion-MNIST ViT recipe
#                                (bench/vit_fmnist_recipe.sh, width 128, bf16,
#                                crops) on the GPU for 3 seeds side by side,
#                                VIT_EPOCHS (100) epochs each; test top-1 per
#                                seed, their mean and spread, and the curve
#   build/gpu/run.sh --rehearse [--vit]   on a machine without a GPU: the same
#                                steps, the same library lookup, timeouts and
#                                results file, with the device emulator's
#                                builds (build/anatomy-emu, ...), tiny shapes
#                                and (--vit) 64 of the images standing in;
#                                `make test` runs both
#
# Steps of the first call, in order of value (each with its own time limit,
# a failing or timed-out step never stops the later ones, and the whole call
# keeps inside BUDGET seconds, default 510: a step is cut to what is left):
#   env        GPU, driver, host CPU; find cuDNN, NCCL, cuBLASLt (/usr/local/cuda,
#              then python3's nvidia-* packages) and the bundle's libraries;
#              `ldd` of every binary: a missing library is one line here
#   kernels    tests/emu natively; their digests must equal the emulator's
#   parity     the native parity suites against the CPU oracle (every op,
#              fp32 and bf16, whole GPT-2; the other families' ops)
#   memcheck   compute-sanitizer memcheck on the parity suite's "ops" case
#   ceilings   the card's bf16 matmul rate and copy bandwidth (PyTorch)
#   gpt2-*     GPT-2 124M, B 16, T 1024, bf16: anatomy, llm.c (cuDNN
#              attention), PyTorch (eager: autocast, SDPA flash, fused AdamW)
#   attention-* fused attention fwd/bwd TFLOP/s, hs 64/128, T 1024/4096, beside
#              PyTorch SDPA's flash and cuDNN backends
#   ops        layernorm, softmax-cross-entropy, AdamW ... GB/s
#   gpt2-torch-compile   PyTorch with torch.compile, only if time is left
# Everything goes to $OUT/results.txt (OUT: the device tool's folder; else
# build/gpu/out), which ends with a summary of the figures. Exit status 0
# when every step passed.
#
# Environment: BUDGET=seconds; LIMIT_<step>=seconds (dashes as underscores)
# overrides one step's limit; B, STEPS: the GPT-2 timing's micro-batch (16)
# and steps (20); for --vit: VIT_EPOCHS (100), VIT_SEEDS ("1 2 3"),
# VIT_PRECISION (bf16), FMNIST_DIR (build/gpu-fmnist).
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# call: which call's steps (first, second, vit); rehearse 1: the emulator
# stands in; mode names the two in the results (first, rehearse, vit, ...)
call=first rehearse=0
if [ "${1:-}" = --call ]; then # internal: one step's function, under `timeout` (below)
    call=$GPU_RUN_CALL rehearse=$GPU_RUN_REHEARSE
else
    for a in "$@"; do
        case $a in
        --rehearse) rehearse=1 ;;
        --second | --vit) call=${a#--} ;;
        *) echo "run.sh: error: $a: unknown option (--rehearse, --second, --vit)" >&2; exit 2 ;;
        esac
    done
    [ $call = second ] && [ $rehearse = 1 ] && {
        echo "run.sh: error: --rehearse --second: the second call needs a GPU (NCCL, compute-sanitizer)" >&2; exit 2; }
fi
mode=$call
[ $rehearse = 1 ] && mode=$([ $call = first ] && echo rehearse || echo "$call-rehearse")
OUT=${OUT:-$here/out}
results=$OUT/results.txt
if [ "${1:-}" != --call ]; then
    mkdir -p "$OUT"
    : >"$results"
    GPU_RUN_WORK=$(mktemp -d "${TMPDIR:-/tmp}/anatomy-gpu.XXXXXX")
    trap 'rm -rf "$GPU_RUN_WORK"' EXIT
    export GPU_RUN_CALL=$call GPU_RUN_REHEARSE=$rehearse GPU_RUN_WORK
fi
work=$GPU_RUN_WORK
start=$(date +%s)
budget=${BUDGET:-510}
deadline=$((start + budget))
failed=""
py=${PYTHON:-python3}
B=${B:-16}
STEPS=${STEPS:-20}
T=1024

say() { echo "$*" | tee -a "$results"; }

# step NAME LIMIT COMMAND...: runs COMMAND under `timeout`, its whole output
# into the results file (and $work/NAME.log), a one-line verdict on stdout.
step() {
    local name=$1 limit=$2 var left rc t0 t
    shift 2
    var=LIMIT_${name//-/_}
    limit=${!var:-$limit}
    left=$((deadline - $(date +%s)))
    if [ "$left" -lt 10 ]; then
        say "== $name: SKIPPED (the call's budget of $budget s is spent)"
        failed="$failed $name"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit $limit s)" >>"$results"
    t0=$(date +%s)
    # a function of this script runs in a second instance of it, so that
    # `timeout` can stop it with everything it started
    if [ "$(type -t "$1")" = function ]; then set -- "$0" --call "$@"; fi
    timeout -k 5 "$limit" "$@" >"$work/$name.log" 2>&1
    rc=$?
    t=$(($(date +%s) - t0))
    cat "$work/$name.log" >>"$results"
    if [ $rc -eq 0 ]; then
        say "== $name: ok ($t s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        say "== $name: TIMED OUT after $limit s"
        failed="$failed $name"
    else
        say "== $name: FAILED (exit $rc, $t s): $(grep -v '^$' "$work/$name.log" | tail -1 | cut -c1-200)"
        failed="$failed $name"
    fi
    return $rc
}

# ---- what runs: the bundle's native binaries, or the emulated ones ----
if [ $rehearse = 1 ]; then
    bld=${ANATOMY_BUILD:-$repo/build}
    ANATOMY=$bld/anatomy-emu
    PARITY=$bld/tests/test_cuda_ops
    SEQ_PARITY=$bld/tests/test_cuda_seq_ops
    BENCH_ATT=$bld/bench-emu/bench_attention
    BENCH_OPS=$bld/bench-emu/bench_ops
    KERNEL_TESTS=$(ls "$bld"/emu/tests/test_emu_* 2>/dev/null | grep -v '\.out$')
    MODEL="--preset d2 --vocab-size 512 --max-seq 64"
    VOCAB="--vocab 512"
    B=2 T=32 STEPS=4
    TORCH_DEV="--device cpu --tiny"
    ATT_ARGS="--bh 2 --T 64 --hs 64 --iters 1"
    SDPA_ARGS="--device cpu --backends math --bh 2 --T 64 --hs 64 --iters 1"
    OPS_ARGS="--N 64 --C 64 --V 500 --params 4096 --iters 1"
    # the ViT recipe at width 16, one block, on 64 training and 32 test images
    VIT_SHAPE="WIDTH=16 LAYERS=1 HEADS=2 BATCH=16" VIT_EPOCHS=${VIT_EPOCHS:-2}
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0}
else
    ANATOMY=$here/bin/anatomy-cuda
    PARITY=$here/bin/test_cuda_ops
    SEQ_PARITY=$here/bin/test_cuda_seq_ops
    BENCH_ATT=$here/bin/bench_attention
    BENCH_OPS=$here/bin/bench_ops
    KERNEL_TESTS=$(ls "$here"/native/* 2>/dev/null)
    MODEL="--preset gpt2-124m"
    VOCAB=""
    TORCH_DEV=""
    ATT_ARGS="--bh 192 --T 1024 4096 --hs 64 128 --iters 10"
    SDPA_ARGS="--bh 192 --T 1024 4096 --hs 64 128 --iters 10"
    OPS_ARGS="--iters 20"
    # 100 epochs: 50 gave 92.63% over three CPU seeds (bench/RESULTS.md), short
    # of 93%; a step that runs out of time still ends with each seed's curve
    VIT_SHAPE="WIDTH=128 BATCH=128" VIT_EPOCHS=${VIT_EPOCHS:-100}
fi
VIT_DATA=${FMNIST_DIR:-$repo/build/gpu-fmnist}
VIT_SEEDS=${VIT_SEEDS:-1 2 3}
LLMC=$here/bin/llmc_train_gpt2cu

# ---- the libraries: the bundle's, then CUDA's from the toolkit or from pip ----
if [ "${1:-}" != --call ]; then
    [ -f "$here/BUILD_INFO" ] && say "bundle: $(tr '\n' ';' <"$here/BUILD_INFO")"
    say "run.sh $mode: $(date -u +%FT%TZ), budget $budget s, results in $results"
    [ $rehearse = 1 ] && say "REHEARSAL on $(hostname): the device emulator stands in for the GPU; no figure here is a GPU measurement"
    libdir=$work/lib
    mkdir -p "$libdir"
    [ -f "$here/lib.tar.xz" ] && tar -C "$libdir" -xJf "$here/lib.tar.xz"
    search="$libdir $here/lib"
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && search="$search $d"
    done
    sites=$($py -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
    for s in $sites; do
        for d in "$s"/nvidia/*/lib "$s"/nvidia/lib; do [ -d "$d" ] && search="$search $d"; done
    done
    # only our binaries get this path (through the wrappers below): PyTorch
    # keeps finding its own CUDA libraries first, as it does without us
    GPU_RUN_LIBS=$(echo $search | tr ' ' ':')
    export GPU_RUN_LIBS
    mkdir -p "$work/bin"
    for f in "$ANATOMY" "$PARITY" "$SEQ_PARITY" "$BENCH_ATT" "$BENCH_OPS" "$LLMC" "$here/bin/allreduce_bench" \
        $KERNEL_TESTS; do
        printf '#!/bin/sh\nLD_LIBRARY_PATH="$GPU_RUN_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' "$f" \
            >"$work/bin/$(basename "$f")"
        chmod +x "$work/bin/$(basename "$f")"
    done
fi
# the binaries as the steps run them: through their wrappers; RAW_* as built
RAW_PARITY=$PARITY RAW_BINS="$ANATOMY $PARITY $SEQ_PARITY $BENCH_ATT $BENCH_OPS $LLMC $KERNEL_TESTS"
RAW_BINS="$RAW_BINS $(ls "$here"/bin/* "$here"/lib/*.so 2>/dev/null | tr '\n' ' ')"
w() { echo "$work/bin/$(basename "$1")"; }
ANATOMY=$(w "$ANATOMY") PARITY=$(w "$PARITY") SEQ_PARITY=$(w "$SEQ_PARITY") BENCH_ATT=$(w "$BENCH_ATT")
BENCH_OPS=$(w "$BENCH_OPS") LLMC=$(w "$LLMC") ALLREDUCE=$(w "$here/bin/allreduce_bench")
KERNEL_TESTS=$(for t in $KERNEL_TESTS; do w "$t"; done)

env_check() {
    echo "host: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    grep -qw avx2 /proc/cpuinfo || echo "MISSING: the host CPU has no AVX2: the bundle's host code (x86-64-v3) cannot run here"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader
    else
        echo "nvidia-smi: not found (no GPU driver here)"
    fi
    echo "library search path of our binaries: $GPU_RUN_LIBS"
    local f miss=0 lib
    export LD_LIBRARY_PATH="$GPU_RUN_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for f in $RAW_BINS; do
        [ -e "$f" ] || { echo "MISSING: $f (not built)"; miss=1; continue; }
        lib=$(ldd "$f" 2>&1 | grep 'not found')
        [ -z "$lib" ] || { echo "$lib" | sed "s|^[[:space:]]*|MISSING: $(basename "$f") needs |"; miss=1; }
    done
    for lib in libcudnn.so.9 libnccl.so.2 libcublasLt.so.13 libnvrtc.so.13; do
        echo "$lib: $(ldd "$here/lib/libanatomy_gpu.so" "$here/bin/llmc_train_gpt2cu" 2>/dev/null |
            awk -v l=$lib '$1 == l { print $3; exit }')"
    done
    return $miss
}

# ---- kernels: the emulator's assumptions checked on the hardware ----
kernel_tests() {
    local t n rc=0 ref
    for t in $KERNEL_TESTS; do
        n=$(basename "$t")
        TEST_SEED=12345 ANATOMY_EMU_SEED=1 "$t" >"$work/$n.out" 2>&1 || rc=1
        tail -3 "$work/$n.out"
        ref=$here/emu-out/$n.out
        if [ ! -f "$ref" ]; then
            echo "$n: no emulator digest to compare with ($ref)"
            rc=1
        elif [ "$(grep 'digest:' "$work/$n.out")" = "$(grep 'digest:' "$ref")" ]; then
            echo "$n: $(grep -c 'digest:' "$ref") digests equal the emulator's"
        else
            echo "$n: DIGESTS DIFFER from the emulator's:"
            diff <(grep 'digest:' "$ref") <(grep 'digest:' "$work/$n.out") | head -20
            rc=1
        fi
    done
    return $rc
}

parity() {
    local rc=0
    ANATOMY_TEST_SEED=12345 "$PARITY" || rc=1
    ANATOMY_TEST_SEED=12345 "$SEQ_PARITY" || rc=1
    return $rc
}

memcheck() {
    if [ $rehearse = 1 ]; then
        echo "rehearsal: no compute-sanitizer; the emulator's own race and bounds checks stand in"
        CK_FORK=no CK_RUN_CASE=ops ANATOMY_TEST_SEED=12345 "$PARITY"
    elif command -v compute-sanitizer >/dev/null 2>&1; then
        CK_FORK=no CK_RUN_CASE=ops ANATOMY_TEST_SEED=12345 LD_LIBRARY_PATH="$GPU_RUN_LIBS" \
            compute-sanitizer --tool memcheck --error-exitcode 3 "$RAW_PARITY"
    else
        echo "compute-sanitizer: not found"
        return 1
    fi
}

racecheck() {
    CK_FORK=no CK_RUN_CASE=attention ANATOMY_TEST_SEED=12345 LD_LIBRARY_PATH="$GPU_RUN_LIBS" \
        compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 3 "$RAW_PARITY"
}

# ---- GPT-2 124M, one shape for all three ----
tokens() { # random GPT-2 token ids, llm.c's shard layout (train and val)
    $py "$here/py/torch_gpt2_gpu.py" --write-shard "$work/tok_train_000000.bin" --ntokens $(((STEPS + 2) * B * T + 1)) $VOCAB &&
        $py "$here/py/torch_gpt2_gpu.py" --write-shard "$work/tok_val_000000.bin" --ntokens $((4 * B * T + 1)) $VOCAB
}
gpt2_anatomy() {
    local prec=bf16
    "$ANATOMY" train $MODEL --data "$work/tok_train_000000.bin" --batch $B --seq $T --steps $STEPS \
        --lr 6e-4 --warmup 0 --device cuda --precision $prec --out "$work/run-anatomy"
}
gpt2_llmc() {
    [ $rehearse = 1 ] && echo "rehearsal: llm.c runs only on a GPU; its failure here shows that later steps still run"
    (cd "$work" && "$LLMC" -i "$work/tok_train_*.bin" -j "$work/tok_val_*.bin" -e d12 -b $B -t $T -d $((B * T)) \
        -x $STEPS -v 1000000 -s 1000000 -h 0 -l 6e-4)
}
gpt2_torch() { $py "$here/py/torch_gpt2_gpu.py" --data "$work/tok_train_000000.bin" --batch $B --seq $T --steps $STEPS $TORCH_DEV "$@"; }

# ---- the Fashion-MNIST ViT recipe, VIT_SEEDS side by side on the one GPU ----
# (a step is a few small kernels: three processes keep the GPU busier than one)
vit_recipe() {
    local s rc=0 pids="" data=$VIT_DATA
    if [ $rehearse = 1 ]; then # the first 64 training and 32 test images, in the same layout
        data=$work/fmnist-tiny
        $py - "${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}" "$data" <<'PY' || return 1
import gzip, os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
for split, n in (("train", 64), ("t10k", 32)):
    for kind, magic, head, size in (("images-idx3", 0x803, 16, 784), ("labels-idx1", 0x801, 8, 1)):
        raw = gzip.open(f"{src}/{split}-{kind}-ubyte.gz").read()
        dims = struct.pack(">II", 28, 28) if kind.startswith("images") else b""
        with gzip.open(f"{dst}/{split}-{kind}-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", magic, n) + dims + raw[head:head + n * size])
PY
    fi
    [ -f "$data/train-images-idx3-ubyte.gz" ] || {
        echo "$data: no Fashion-MNIST here (make gpu-bundle copies it to build/gpu-fmnist; carry that too)"
        return 1; }
    for s in $VIT_SEEDS; do
        env $VIT_SHAPE SEED=$s DEVICE=cuda THREADS=1 PRECISION=${VIT_PRECISION:-bf16} CROP_PAD=2 FMNIST_DIR="$data" \
            sh "$repo/bench/vit_fmnist_recipe.sh" "$ANATOMY" "$VIT_EPOCHS" "$work/vit-s$s" >"$work/vit-s$s.out" 2>&1 &
        pids="$pids $!"
    done
    for s in $pids; do wait "$s" || rc=1; done
    for s in $VIT_SEEDS; do
        echo "-- seed $s"
        grep -v '^val' "$work/vit-s$s.out" | tail -6
    done
    return $rc
}

if [ "${1:-}" = --call ]; then
    shift
    "$@"
    exit
fi

step env 30 env_check
if [ $call = first ]; then
    step kernels 45 kernel_tests
    step parity 150 parity
    step memcheck 90 memcheck
    step ceilings 40 $py "$here/py/torch_gpt2_gpu.py" --ceilings $TORCH_DEV
    step tokens 20 tokens
    step gpt2-anatomy 75 gpt2_anatomy
    step gpt2-llmc 60 gpt2_llmc
    step gpt2-torch 75 gpt2_torch --compile 0
    step attention-ours 50 "$BENCH_ATT" $ATT_ARGS
    step attention-sdpa 50 $py "$here/py/torch_sdpa.py" $SDPA_ARGS
    step ops 40 "$BENCH_OPS" $OPS_ARGS
    if [ $rehearse = 1 ] || [ $((deadline - $(date +%s))) -gt 120 ]; then
        step gpt2-torch-compile 110 gpt2_torch --compile 1
    else
        say "== gpt2-torch-compile: left for the second call (under 120 s left)"
    fi
elif [ $call = vit ]; then
    step vit 500 vit_recipe
elif [ $call = second ]; then
    # the two-kernel attention backward beside the fused default (first call)
    step attention-split 40 env ANATOMY_ATTN_BWD=split "$BENCH_ATT" $ATT_ARGS
    step nccl 90 env ALLREDUCE_BENCH="$ALLREDUCE" sh "$repo/bench/bench_allreduce.sh" "$ANATOMY"
    step racecheck 120 racecheck
    # 500 steps of the loss-curve comparison (PARITY_STEPS), PyTorch eager, in what is left
    step loss-parity 400 env -u B -u T ANATOMY="$ANATOMY" ANATOMY_CPU="$ANATOMY" STEPS=${PARITY_STEPS:-500} \
        COMPILE=0 DATA="$here/data/tinyshakespeare_train_000000.bin" \
        VAL="$here/data/tinyshakespeare_val_000000.bin" RESULTS="$OUT/parity.md" IMG="$OUT/parity.png" sh "$repo/bench/gpt2_parity.sh"
fi

# ---- summary: the figures, side by side ----
summary() {
    local L="$work"
    # the median of a column of numbers after the first 3 (warm-up) values
    median() { tail -n +4 | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%s", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    median_ms() { awk '/^step +[0-9]+\// { for (i = 1; i < NF; i++) if ($(i+1) == "ms") print $i }' "$1" 2>/dev/null | median; }
    local peak copy ours_ms llmc_tok torch_ms comp_ms fpt
    peak=$(sed -n 's/^peak_bf16_tflops: //p' "$L/ceilings.log" 2>/dev/null)
    copy=$(sed -n 's/^copy_tbps: //p' "$L/ceilings.log" 2>/dev/null)
    # FLOPs per token: 6N + 12 L C T (GPT-2 124M: N = 124,439,808, L 12, C 768)
    fpt=$(awk -v t=$T 'BEGIN { print 6 * 124439808 + 12 * 12 * 768 * t }')
    ours_ms=$(median_ms "$L/gpt2-anatomy.log")
    llmc_tok=$(grep -oE '[0-9.]+ tok/s' "$L/gpt2-llmc.log" 2>/dev/null | awk '{ print $1 }' | median)
    torch_ms=$(sed -n 's/^pytorch_ms_per_step: //p' "$L/gpt2-torch.log" 2>/dev/null)
    comp_ms=$(sed -n 's/^pytorch_ms_per_step: //p' "$L/gpt2-torch-compile.log" 2>/dev/null)
    echo "device: $(sed -n 's/^device: //p' "$L/ceilings.log" 2>/dev/null | head -1); bf16 matmul ${peak:-?} TFLOP/s, copy ${copy:-?} TB/s (measured in this run)"
    echo "GPT-2 B $B T $T bf16 ($MODEL), median step after 3 warm-up steps; MFU = tok/s x ${fpt} FLOP/token (124M's 6N + 12LCT) / measured peak:"
    row() { # name ms tok/s
        local mfu="?"
        [ -n "$3" ] && [ -n "$peak" ] && mfu=$(awk -v t="$3" -v f="$fpt" -v p="$peak" 'BEGIN { if (p + 0 > 0) printf "%.1f%%", 100 * t * f / (p * 1e12); else print "?" }')
        printf '  %-28s %10s ms/step %10s tok/s  MFU %s\n' "$1" "${2:-?}" "${3:-?}" "$mfu"
    }
    tok() { [ -n "$1" ] && awk -v m="$1" -v n=$((B * T)) 'BEGIN { printf "%.0f", n / m * 1e3 }'; }
    row "anatomy" "$ours_ms" "$(tok "$ours_ms")"
    row "llm.c (cuDNN attention)" "$([ -n "$llmc_tok" ] && awk -v t="$llmc_tok" -v n=$((B * T)) 'BEGIN { printf "%.1f", n / t * 1e3 }')" "$llmc_tok"
    row "PyTorch eager (SDPA flash)" "$torch_ms" "$(tok "$torch_ms")"
    row "PyTorch torch.compile" "$comp_ms" "$(tok "$comp_ms")"
    echo "anatomy's device memory: the plan printed before allocating, then what the device held before step 1:"
    grep -E '^memory (plan|in use)' "$L/gpt2-anatomy.log" 2>/dev/null | sed 's/^/  /'
    echo "attention (TFLOP/s; ours, then SDPA's backends):"
    cat "$L/attention-ours.log" "$L/attention-sdpa.log" 2>/dev/null | grep -E '^[a-z]+ (fwd|bwd|fwdbwd) ' | sort -k3,3 -k4,4 -k5,5 -k2,2 | sed 's/^/  /'
    echo "memory-bound ops (GB/s; the copy ceiling is ${copy:-?} TB/s):"
    grep '^ours ' "$L/ops.log" 2>/dev/null | sed 's/^/  /'
}
# ---- the ViT call's summary: each seed's curve and test figure, then their mean ----
vit_summary() {
    local s dirs=()
    echo "Fashion-MNIST ViT ($VIT_SHAPE, crop-pad 2, flips, label smoothing 0.1, cosine), $VIT_EPOCHS epochs, seeds $VIT_SEEDS side by side on one device:"
    for s in $VIT_SEEDS; do
        if [ -f "$work/vit-s$s/train.log" ]; then dirs+=("$work/vit-s$s")
        else echo "  vit-s$s: did not train (its output: $work/vit-s$s.out)"; fi
    done
    [ ${#dirs[@]} -eq 0 ] || sh "$repo/bench/vit_fmnist_summary.sh" "${dirs[@]}"
}
if [ $call = vit ]; then
    say "== summary"
    vit_summary 2>&1 | tee -a "$results"
elif [ $call = first ]; then
    say "== summary"
    summary 2>&1 | tee -a "$results"
fi
if [ -n "$failed" ]; then
    say "run.sh $mode: $(($(date +%s) - start)) s; FAILED:$failed"
    exit 1
fi
say "run.sh $mode: $(($(date +%s) - start)) s; every step passed"
