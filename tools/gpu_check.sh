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

echo "== short LLR and PGD trainings on real CIFAR-10 (carry/cifar10), evaluated; PyTorch PGD cross-check =="
robust_rc=0
if [ -f carry/cifar10/data_batch_1.bin.xz ]; then
  mkdir -p "$OUT/cifar"
  xz -dc carry/cifar10/data_batch_1.bin.xz >"$OUT/cifar/all.bin"
  for k in 1 2 3 4 5; do  # five files of 2,000 records: the reader wants data_batch_1..5
    dd if="$OUT/cifar/all.bin" of="$OUT/cifar/data_batch_$k.bin" bs=3073 skip=$(((k - 1) * 2000)) count=2000 status=none
  done
  rm "$OUT/cifar/all.bin"
  for m in llr pgd; do
    "$bin/llrtrain" train --method $m --data "$OUT/cifar" --holdout 1000 --model wrn-16-4 --act softplus --epochs 4 \
      --batch 128 --lr 0.1 --schedule cosine --llr-steps 2 --pgd-steps 7 --eps-warmup 50 --precision bf16 \
      --out "$OUT/run_$m" >"$OUT/train_$m.log" 2>&1 || robust_rc=1
    tail -1 "$OUT/train_$m.log"
    "$bin/llrtrain" eval --checkpoint "$OUT/run_$m/model.safetensors" --data "$OUT/cifar" --split val --holdout 1000 \
      --attacks pgd-ce:20x0,apgd-ce,apgd-t --gamma-steps 10 --dump-logits "$OUT/images_$m.safetensors" \
      >"$OUT/eval_$m.log" 2>&1 || robust_rc=1
    grep -E "clean|pgd-ce|apgd|worst|gamma" "$OUT/eval_$m.log"
    if python3 -c "import torch, safetensors" 2>/dev/null; then
      (cd tools/reference && python3 pgd_eval.py --checkpoint "$OUT/run_$m/model.safetensors" \
        --images "$OUT/images_$m.safetensors" --steps 20 --restarts 0) 2>&1 | tail -1
    fi
  done
else
  echo "no carry/cifar10/data_batch_1.bin.xz: skipped"
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
printf '%-28s %s\n' "robust trainings" "$([ $robust_rc = 0 ] && echo ok || echo FAILED)"
[ $tests_rc = 0 ] && [ $memcheck_rc = 0 ] && [ $bench_rc = 0 ] && [ $bench2_rc = 0 ] && [ $robust_rc = 0 ]
