#!/usr/bin/env bash
# Builds the CUDA binaries on this (GPU-less) machine and copies them to carry/bin/, so a lent GPU machine can run
# tools/gpu_check.sh without building:  device run, carry ["carry"]:  LLR_BIN_DIR=carry/bin bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -B build-cuda -S . -DLLR_CUDA=ON >/dev/null
cmake --build build-cuda -j"$(nproc)"
mkdir -p carry/bin
cp build-cuda/llr_tests build-cuda/llr_conv_bench build-cuda/llrtrain carry/bin/
du -sh carry/bin
