#!/usr/bin/env bash
# One call on a lent GPU: build (or use carried binaries), run the tests (CUDA against CPU), run the CUDA tests again
# under compute-sanitizer memcheck, then benchmark the WRN-28-10 convolution layers; a short table comes last.
# Designed to finish within 6 minutes on an H100.
#
#   bash tools/gpu_check.sh                   # configure and build in build-gpu/ (16 cores), then check
#   LLR_BIN_DIR=carry/bin bash tools/gpu_check.sh   # use binaries built elsewhere (llr_tests, llr_conv_bench)
#
# Results go to $OUT (default /tmp/llr_gpu_check): tests.log, memcheck.log, conv_bench.*, bench.*, torch_anchor.*.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/llr_gpu_check}
mkdir -p "$OUT"
start=$(date +%s)
cuda_tests='*GPU*,*CUDA*,*caching allocator*,*host-device*,*larger convolution*'
bench_methods=natural,pgd-7,pgd-10,trades-10,llr-2,llr-10

bin=${LLR_BIN_DIR:-}
if [ -z "$bin" ] || [ ! -x "$bin/llr_tests" ]; then
  bin=build-gpu
  echo "== build ($bin) =="
  cmake -B "$bin" -S . -DLLR_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} >"$OUT/build.log" 2>&1 &&
    cmake --build "$bin" -j"$(nproc)" >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

echo "== tests =="
"$bin/llr_tests" -s >"$OUT/tests.log" 2>&1
tests_rc=$?
grep -E "^cuda vs cpu|^SKIPPED|^device:" "$OUT/tests.log" | tail -5
grep -E "test cases:" "$OUT/tests.log"

echo "== compute-sanitizer memcheck (CUDA tests, heuristic algorithm choice) =="
if command -v compute-sanitizer >/dev/null 2>&1; then
  LLR_CUDNN_HEURISTIC=1 timeout 240 compute-sanitizer --tool memcheck --leak-check no \
    "$bin/llr_tests" -tc="$cuda_tests" >"$OUT/memcheck.log" 2>&1
  memcheck_rc=$?
  grep -E "ERROR SUMMARY|test cases:" "$OUT/memcheck.log" | tail -2
else
  memcheck_rc=127
  echo "compute-sanitizer not found"
fi

echo "== WRN-28-10 convolution benchmark =="
"$bin/llr_conv_bench" --batch 128 --iters 20 --json "$OUT/conv_bench.jsonl" | tee "$OUT/conv_bench.txt"
bench_rc=${PIPESTATUS[0]}

echo "== training-step benchmark: WRN-28-10, batch 128, bf16 (ours, then PyTorch from carry/anchors) =="
rm -f "$OUT/bench.jsonl" "$OUT/torch_anchor.jsonl"
"$bin/llrtrain" bench --model wrn-28-10 --methods "$bench_methods" --batch 128 --precision bf16 --warmup 3 \
  --iters 10 --json "$OUT/bench.jsonl" >"$OUT/bench.txt" 2>&1
bench2_rc=$?
tail -8 "$OUT/bench.txt"
anchor=${LLR_ANCHOR:-carry/anchors/torch_anchor.py}
if [ -f "$anchor" ] && python3 -c "import torch" 2>/dev/null; then
  OUT="$OUT" timeout 200 python3 "$anchor" --models wrn-28-10 --prec bf16 --warm 3 --iters 10 \
    --methods natural,pgd-7,pgd-10,trades-10,llr-2-dbp,llr-10-dbp >"$OUT/torch_anchor.txt" 2>&1
  tail -8 "$OUT/torch_anchor.txt"
else
  echo "no PyTorch anchor ($anchor or torch missing)"
fi

echo
echo "== summary ($(($(date +%s) - start)) s) =="
printf '%-28s %s\n' "tests" "$([ $tests_rc = 0 ] && echo passed || echo "FAILED (rc $tests_rc)") $(grep -E 'test cases:' "$OUT/tests.log" | tr -s ' ')"
printf '%-28s %s\n' "cuda vs cpu" "$(grep -E '^cuda vs cpu: ' "$OUT/tests.log")"
printf '%-28s %s\n' "memcheck" "$([ $memcheck_rc = 0 ] && echo clean || echo "rc $memcheck_rc") $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" 2>/dev/null | tail -1)"
printf '%-28s %s\n' "conv benchmark" "$([ $bench_rc = 0 ] && echo ok || echo "FAILED (rc $bench_rc)")"
grep -E '^total' "$OUT/conv_bench.txt" 2>/dev/null
printf '%-28s %s\n' "step benchmark" "$([ $bench2_rc = 0 ] && echo ok || echo "FAILED (rc $bench2_rc)")"
python3 tools/compare_bench.py "$OUT/bench.jsonl" "$OUT/torch_anchor.jsonl" 2>/dev/null
[ $tests_rc = 0 ] && [ $memcheck_rc = 0 ] && [ $bench_rc = 0 ] && [ $bench2_rc = 0 ]
