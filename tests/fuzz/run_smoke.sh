#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz and runs each for a few seconds from seed
# corpora the engine writes (plus three real CIFAR-10 records when ../shared/data has them). Exits non-zero when a
# target crashes; the input that did it is left in build-fuzz/crashes/.
# Usage: tests/fuzz/run_smoke.sh [SECONDS_PER_TARGET (default 5)]   Build jobs: $LLR_FUZZ_JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-5}
build=build-fuzz

# -O1 with line tables: what libFuzzer recommends (symbolized reports), and a build half as long as -O2 -g.
cmake -B "$build" -S . -DLLR_FUZZ=ON -DLLR_CUDA=OFF -DBUILD_TESTING=OFF -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" >/dev/null
cmake --build "$build" -j"${LLR_FUZZ_JOBS:-$(nproc)}" --target fuzz_safetensors fuzz_cifar fuzz_checkpoint fuzz_seeds

seeds="$build/seeds"
rm -rf "$seeds"
"$build/fuzz_seeds" "$seeds"
xz=../shared/data/cifar10/data_batch_1.bin.xz
if [ -f "$xz" ]; then
  # xz stops early when head has its bytes, so this is quick.
  xz -dc "$xz" | head -c $((3 * 3073)) >"$seeds/cifar/real.bin" || true
fi

# A fresh corpus each run, so the smoke test is the same seeded run every time.
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
mkdir -p "$build/crashes"
for target in safetensors cifar checkpoint; do
  options=(-max_total_time="$seconds" -seed=1 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1
           -artifact_prefix="$build/crashes/$target-")
  [ "$target" = cifar ] || options+=(-dict=tests/fuzz/safetensors.dict)
  [ "$target" = safetensors ] && options+=(-max_len=4096)
  mkdir -p "$corpus/$target"
  echo "== fuzz_$target for ${seconds}s"
  if ! "$build/fuzz_$target" "${options[@]}" "$corpus/$target" "$seeds/$target" >"$corpus/$target.log" 2>&1; then
    tail -40 "$corpus/$target.log"
    echo "FAILED: fuzz_$target crashed; the input is in $build/crashes/"
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^Done" "$corpus/$target.log" || true
done
echo "fuzz smoke test passed"
