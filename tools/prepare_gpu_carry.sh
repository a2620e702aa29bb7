#!/usr/bin/env bash
# Builds the CUDA binaries on this (GPU-less) machine and copies them to carry/bin/, so a lent GPU machine can run
# tools/gpu_check.sh without building, with the PyTorch anchor script beside them:
#   device run, carry ["carry"]:  LLR_BIN_DIR=carry/bin OUT=$OUT bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -B build-cuda -S . -DLLR_CUDA=ON >/dev/null
cmake --build build-cuda -j"$(nproc)"
mkdir -p carry/bin carry/anchors
cp build-cuda/llr_tests build-cuda/llr_conv_bench build-cuda/llrtrain carry/bin/
# The PyTorch anchor, run in the same call as our benchmark (the GPU machine does not receive ../shared).
if [ -f ../shared/anchors/torch_anchor.py ]; then cp ../shared/anchors/torch_anchor.py carry/anchors/; fi
# One compressed CIFAR-10 batch (23 MB) for the short robust trainings.
if [ -f ../shared/data/cifar10/data_batch_1.bin.xz ]; then
  mkdir -p carry/cifar10 && cp ../shared/data/cifar10/data_batch_1.bin.xz carry/cifar10/
fi
du -sh carry
