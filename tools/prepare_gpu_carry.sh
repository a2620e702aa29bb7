#!/usr/bin/env bash
# Builds the CUDA binaries here (Release; no GPU needed) and lays out carry/ (git-ignored), everything that
# tools/gpu_check.sh needs on a lent GPU machine, which cannot build (no Eigen, doctest, CLI11 or nlohmann-json):
#   carry/bin/       llrtrain, llr_tests, llr_conv_bench (stripped)
#   carry/anchors/   torch_anchor.py, jax_anchor.py (from ../shared/anchors: the device receives no ../shared)
#   carry/tools/     compare_bench.py, compare_runs.py and reference/*.py, the scripts the check runs, pinned with
#                    the binaries
#   carry/cifar10/   data_batch_1.bin.xz: 10,000 CIFAR-10 training images for the short trainings
#   carry/MANIFEST   commit, build settings, each file's size and sha256, the binaries' libraries here
# Prints the total and fails above 60 MiB: a device call carries at most 64 MiB, the working tree included.
# Run it in the checkout the session was started in: the device tool sends that checkout, whichever worktree calls.
#
#   bash tools/prepare_gpu_carry.sh          # CUDA_ARCH (default 90: H100/H200), JOBS (default 2), SHARED (../shared)
# then the device call documented at the top of tools/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
LIMIT=$((60 * 1024 * 1024))

cmake -B build-cuda -S . -DLLR_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" >/dev/null
cmake --build build-cuda -j"${JOBS:-2}" --target llrtrain llr_tests llr_conv_bench

rm -rf carry
mkdir -p carry/bin carry/anchors carry/tools/reference carry/cifar10
cp build-cuda/llrtrain build-cuda/llr_tests build-cuda/llr_conv_bench carry/bin/
# Symbols are not needed to run, and the CUDA device code lives in a data section that strip keeps.
strip --strip-unneeded carry/bin/*
cp tools/compare_bench.py tools/compare_profiles.py tools/compare_runs.py carry/tools/
# The newest committed GPU profile (bench/results/<date>-<gpu>/<run>/logs.tar.gz), for gpu_check.sh to compare its
# own with: what each change since then did, op by op.
prev=$(ls -1 bench/results/*/*/logs.tar.gz 2>/dev/null | sort | tail -1)
if [ -n "$prev" ] && tar -xzf "$prev" -O logs/3-profile.log >carry/previous-profile.log 2>/dev/null; then
  echo "# from $prev" >>carry/previous-profile.log
else
  rm -f carry/previous-profile.log
fi
cp tools/reference/*.py carry/tools/reference/
for f in anchors/torch_anchor.py anchors/jax_anchor.py data/cifar10/data_batch_1.bin.xz; do
  [ -f "$SHARED/$f" ] || { echo "prepare_gpu_carry: $SHARED/$f not found (set SHARED=...)" >&2; exit 1; }
done
cp "$SHARED/anchors/torch_anchor.py" "$SHARED/anchors/jax_anchor.py" carry/anchors/
cp "$SHARED/data/cifar10/data_batch_1.bin.xz" carry/cifar10/

{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' plus uncommitted changes')"
  echo "built $(date -u +%FT%TZ) on $(hostname): Release, CUDA architectures ${CUDA_ARCH:-90}, $(nvcc --version | tail -1)"
  echo "cuDNN headers $(awk '/define CUDNN_(MAJOR|MINOR|PATCHLEVEL) / {printf "%s%s", sep, $3; sep="."}' \
    "$(find /usr/local/cuda/ /usr/include -name cudnn_version.h 2>/dev/null | head -1)")"
  echo
  (cd carry && find . -type f ! -name MANIFEST | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
  done)
  echo
  echo "libraries of llrtrain here (the device must provide the CUDA ones):"
  ldd carry/bin/llrtrain | awk '{print "  " $1}'
} >carry/MANIFEST

total=$(du -sb carry | cut -f1)
awk -v t="$total" 'BEGIN {printf "carry/: %d bytes (%.1f MiB) of at most 60 MiB\n", t, t / 1048576}'
du -sh carry/* | sed 's/^/  /'
if [ "$total" -gt "$LIMIT" ]; then
  echo "prepare_gpu_carry: carry/ exceeds 60 MiB; a device call carries 64 MiB with the working tree" >&2
  exit 1
fi
