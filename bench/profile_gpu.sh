#!/bin/sh
# profile_gpu.sh: a few GPT-2 124M training steps (bf16, T 1024) under the
# profilers (`make profile`, on a GPU machine). Every op of the CUDA backend is
# an NVTX range named as in kernels/ops.h, so timelines and kernel reports
# read in the op table's words.
#   Nsight Systems: build/profile/anatomy.nsys-rep   (timeline; if nsys is there)
#   Nsight Compute: build/profile/kernels.ncu-rep    (the named kernels of one step)
# usage: sh bench/profile_gpu.sh [ANATOMY_CUDA_BIN]   (default build/anatomy-cuda)
#   B=N (default 8), KERNELS=regex of kernel names for ncu, EXTRA=more train
#   options (e.g. EXTRA="--dropout 0.1" to see the dropout passes)
set -u
bin=${1:-build/anatomy-cuda}
B=${B:-8}
EXTRA=${EXTRA:-}
kernels=${KERNELS:-"layernorm|softmax|dscores|crossentropy|adamw|ew_kernel|encoder|permute|colsum|sumsq|dropout"}
out=build/profile
here=$(dirname "$0")
mkdir -p "$out"
[ -x "$bin" ] || { echo "profile_gpu.sh: $bin: no such executable (make cuda)" >&2; exit 1; }
python3 "$here/torch_gpt2_gpu.py" --write-shard "$out/tokens.bin" --ntokens $((8 * B * 1024 + 1)) || exit 1
train="$bin train --preset gpt2-124m --data $out/tokens.bin --batch $B --seq 1024 --device cuda --precision bf16 $EXTRA"
nsys=$(command -v nsys || ls /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1)
if [ -n "$nsys" ]; then
    "$nsys" profile --force-overwrite true -t cuda,nvtx,cublas -o "$out/anatomy" $train --steps 4 &&
        "$nsys" stats --report nvtx_sum,cuda_gpu_kern_sum "$out/anatomy.nsys-rep" | head -60
else
    echo "profile_gpu.sh: nsys not found: no timeline"
fi
if command -v ncu >/dev/null 2>&1; then
    # kernels of the last step: the first launches (warm-up steps) are skipped
    ncu --force-overwrite --set full --kernel-name "regex:$kernels" --launch-skip 300 --launch-count 40 \
        -o "$out/kernels" $train --steps 3 &&
        ncu --import "$out/kernels.ncu-rep" --page details --csv 2>/dev/null | grep -E \
            '"(Duration|Memory Throughput|DRAM Throughput|Registers Per Thread|Achieved Occupancy)"' | head -80
else
    echo "profile_gpu.sh: ncu not found: no kernel report"
fi
