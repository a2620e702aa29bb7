#!/usr/bin/env bash
# Lays out carry-exp/ (git-ignored) for tools/gpu_experiment.sh: the time-to-robustness experiment on a lent GPU, a
# chunk per device session. The device cannot build and receives no ../shared:
#   carry-exp/bin/llrtrain            the CUDA build (Release, stripped)
#   carry-exp/cifar10/                data_batch_1 and _2 (xz): 20,000 images, the first 10,000 train, the last 1,000
#                                     are the held-out evaluation images (the test split is not available there)
#   carry-exp/experiment.json         EXPERIMENT (default tools/experiments/cifar10-preact-rn18-holdout.json)
#   carry-exp/results.jsonl           the runs already done, from RESULTS (default: the newest
#                                     bench/results/*/experiment/results.jsonl), which the rerun skips
# Then: run(command="bash tools/gpu_experiment.sh", carry=["carry-exp"], timeout_s=570), and commit what comes back
# under bench/results/<date>-<gpu>/experiment/.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
EXPERIMENT=${EXPERIMENT:-tools/experiments/cifar10-preact-rn18-holdout.json}
cmake -B build-cuda -S . -DLLR_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" >/dev/null
cmake --build build-cuda -j"${JOBS:-2}" --target llrtrain
rm -rf carry-exp
mkdir -p carry-exp/bin carry-exp/cifar10
cp build-cuda/llrtrain carry-exp/bin/
strip --strip-unneeded carry-exp/bin/llrtrain
for k in 1 2; do cp "$SHARED/data/cifar10/data_batch_$k.bin.xz" carry-exp/cifar10/; done
cp "$EXPERIMENT" carry-exp/experiment.json
RESULTS=${RESULTS:-$(ls -1 bench/results/*/experiment/results.jsonl 2>/dev/null | sort | tail -1 || true)}
if [ -n "$RESULTS" ] && [ -f "$RESULTS" ]; then
  cp "$RESULTS" carry-exp/results.jsonl
  echo "carrying $(grep -vc '"error"' "$RESULTS") finished runs from $RESULTS"
fi
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' plus uncommitted changes')" >carry-exp/MANIFEST
du -sh carry-exp | sed 's/^/carry-exp: /'
