#!/bin/sh
# GPT-2 124M on FineWeb 10B, 2 nodes x 8 GPUs, launched by OpenMPI's mpirun
# (no Slurm): one rank per GPU, rank/world/local rank from OMPI_COMM_WORLD_*.
#
#   HOSTS=node1:8,node2:8 sh scripts/mpirun_gpt2_124m.sh
#
# Every node needs the same repository path, binary and data (a shared
# filesystem, or copies); mpirun reaches the nodes over ssh. Each rank picks
# its GPU from its local rank (the local_rank-th entry of CUDA_VISIBLE_DEVICES,
# default 0..7). The global batch is --total-batch tokens whatever the number
# of GPUs (524,288 = 16 x 32 x 1024: one micro-batch per step here).
#
# Variables (environment, all optional):
#   HOSTS     mpirun host list, host:slots,...  (default node1:8,node2:8)
#   NP        ranks in all                      (default 16)
#   ANATOMY   the binary                        (default ./build/anatomy)
#   DATA      FineWeb 10B shards directory      (default .cache/data/fineweb10B)
#   OUT       run directory on a shared filesystem (default runs/gpt2-124m)
#   STEPS     optimizer steps                   (default 19073: ~10B tokens)
#   BATCH     sequences per GPU micro-batch     (default 32)
#   THREADS   CPU threads per rank              (default 8)
#   TIMEOUT   seconds a collective may wait before the job is ended (default 600)
# Add MPIRUN_ARGS (e.g. "--mca btl_tcp_if_include ib0") for the network.
set -eu
HOSTS=${HOSTS:-node1:8,node2:8}
NP=${NP:-16}
ANATOMY=${ANATOMY:-./build/anatomy}
DATA=${DATA:-.cache/data/fineweb10B}
OUT=${OUT:-runs/gpt2-124m}
STEPS=${STEPS:-19073}
BATCH=${BATCH:-32}
THREADS=${THREADS:-8}
TIMEOUT=${TIMEOUT:-600}

if ls "$OUT"/step_*.safetensors >/dev/null 2>&1; then
    model="--resume $OUT"
else
    model="--preset gpt2-124m"
fi

# shellcheck disable=SC2086 # $model and $MPIRUN_ARGS are word lists
exec mpirun -np "$NP" -H "$HOSTS" --bind-to none --map-by slot \
    -x PATH -x LD_LIBRARY_PATH -x OMP_NUM_THREADS="$THREADS" ${MPIRUN_ARGS:-} \
    "$ANATOMY" train $model \
    --device cuda --precision bf16 --threads "$THREADS" \
    --data "$DATA/fineweb_train_*.bin" --val-data "$DATA/fineweb_val_*.bin" \
    --batch "$BATCH" --seq 1024 --total-batch 524288 \
    --steps "$STEPS" --lr 6e-4 --warmup 700 --lr-min-frac 0.0 --weight-decay 0.1 \
    --grad-clip 1.0 --val-every 250 --val-batches 20 --sample-every 5000 \
    --ckpt-every 1000 --dist-timeout "$TIMEOUT" --out "$OUT"
