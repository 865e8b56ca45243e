#!/bin/sh
# gpu_bundle_libs.sh BUNDLE: packs into BUNDLE/lib.tar.xz every shared library
# that BUNDLE's binaries load here and that the GPU image may lack: all but
# glibc's, libstdc++/libgcc_s (the image has them), the CUDA libraries
# (run.sh finds the image's own: /usr/local/cuda or python3's nvidia-*
# packages) and the bundle's own lib/. Compressed, because OpenBLAS alone is
# about 35 MB. Prints what it packed.
set -eu
b=$1
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for f in "$b"/bin/* "$b"/native/* "$b"/lib/*.so; do
    ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r name path; do
    case "$name" in
    linux-vdso* | ld-linux* | libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | \
    libstdc++.so* | libgcc_s.so* | libanatomy_gpu.so) continue ;;
    libcuda.so* | libcudart.so* | libcublas* | libcudnn* | libnccl.so* | libnvrtc* | libnvidia-ml.so*) continue ;;
    esac
    cp -L "$path" "$stage/$name"
done
n=$(ls "$stage" | wc -l)
tar -C "$stage" -cJf "$b/lib.tar.xz" .
echo "gpu-bundle: lib.tar.xz holds $n libraries ($(ls "$stage" | tr '\n' ' ')), $(du -h "$b/lib.tar.xz" | cut -f1)"
