#!/usr/bin/env bash
# Where does bf16 lose precision? Reruns the bf16-against-f32 gradient tests (tests/test_cuda_large.cpp) with the
# convolutions of one direction at a time computed in f32 from the same bf16 inputs (LLR_CONV_F32), and with cuDNN's
# heuristic algorithm choice instead of benchmarking (LLR_CUDNN_HEURISTIC). One short device call (about 90 s on an
# H100) after tools/prepare_gpu_carry.sh:
#
#   run(command="bash tools/gpu_diag_bf16.sh", carry=["carry"], timeout_s=150)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
B=${LLR_CARRY:-carry}/bin/llr_tests
OUT=${OUT:-/tmp/llr_gpu_diag}
mkdir -p "$OUT"
run() { # $1: label, $2: test-case filter, rest: environment
  local label=$1 filter=$2
  shift 2
  echo "=== $label: $*"
  env "$@" timeout -k 5 60 "$B" -ts=cuda-large "-tc=$filter" >"$OUT/diag-$label.log" 2>&1
  grep -E 'mismatch|error/spread|together|input gradient|logits|LLR signs|test cases|^plan ' "$OUT/diag-$label.log" |
    grep -vE '^plan ' | sed 's/(a-priori [0-9.e-]*, /(/'
}
OBJ='PGD and LLR objective*'
WRN='WRN-28-10 at batch 128: bf16*'
run baseline "$OBJ" LLR_PRINT_PLANS=1
run f32-all "$OBJ" LLR_CONV_F32=all
run f32-filter "$OBJ" LLR_CONV_F32=backward-filter
run f32-data "$OBJ" LLR_CONV_F32=backward-data
run f32-forward "$OBJ" LLR_CONV_F32=forward
run heuristic "$OBJ" LLR_CUDNN_HEURISTIC=1
run wrn-baseline "$WRN" LLR_PRINT_PLANS=1
run wrn-f32-all "$WRN" LLR_CONV_F32=all
grep -h '^plan ' "$OUT"/diag-wrn-baseline.log | sort -u >"$OUT/plans.txt"
echo "plans picked for WRN-28-10 at batch 128 (bf16 and f32): $(wc -l <"$OUT/plans.txt") in plans.txt"
tar -czf "$OUT/diag-logs.tar.gz" -C "$OUT" $(cd "$OUT" && ls diag-*.log) && rm -f "$OUT"/diag-*.log
