#!/usr/bin/env bash
# One chunk of the time-to-robustness experiment on a lent GPU (after tools/prepare_gpu_experiment.sh here):
#   run(command="bash tools/gpu_experiment.sh", carry=["carry-exp"], timeout_s=570)
# Starts only the runs that end within LLR_DEADLINE seconds (default 480; llrtrain experiment --deadline) and skips
# those in carry-exp/results.jsonl, so successive sessions complete the experiment. $OUT gets results.jsonl (all
# finished runs, old and new), frontier.svg, experiment.log and runs.tar.gz (each new run's config, metrics and
# evaluation; no checkpoints).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
CARRY=${LLR_CARRY:-carry-exp}
BIN=$(pwd)/$CARRY/bin/llrtrain
WORK=/tmp/llr_experiment
OUT=${OUT:-$WORK/result}
mkdir -p "$WORK/data/cifar10" "$WORK/out" "$OUT"
[ -x "$BIN" ] || { echo "MISSING $CARRY/bin/llrtrain: run tools/prepare_gpu_experiment.sh"; exit 2; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1
# 20,000 images as the five files the reader wants (4,000 records of 3,073 bytes each).
all=$WORK/all.bin
: >"$all"
for k in 1 2; do
  if command -v xz >/dev/null; then xz -dc "$CARRY/cifar10/data_batch_$k.bin.xz" >>"$all"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "ab"))' \
      "$CARRY/cifar10/data_batch_$k.bin.xz" "$all"
  fi
done
for k in 1 2 3 4 5; do
  dd if="$all" of="$WORK/data/cifar10/data_batch_$k.bin" bs=3073 skip=$(((k - 1) * 4000)) count=4000 status=none
done
rm -f "$all"
[ -f "$CARRY/results.jsonl" ] && cp "$CARRY/results.jsonl" "$WORK/out/results.jsonl"
cp "$CARRY/experiment.json" "$WORK/experiment.json"
start=$(date +%s)
(cd "$WORK" && "$BIN" experiment experiment.json --out out --deadline "${LLR_DEADLINE:-480}") \
  >"$OUT/experiment.log" 2>&1
rc=$?
echo "llrtrain experiment: rc $rc after $(($(date +%s) - start)) s"
grep -E '^== |already done|left for a rerun|failed|^wrote' "$OUT/experiment.log"
sed -n '/^method /,/^wrote/p' "$OUT/experiment.log"
cp "$WORK/out/results.jsonl" "$OUT/" 2>/dev/null
cp "$WORK/out/frontier.svg" "$OUT/" 2>/dev/null
(cd "$WORK/out" && find . -name '*.json' -o -name '*.jsonl' -o -name '*.log' | grep -v '^./results.jsonl$' |
  tar -czf "$OUT/runs.tar.gz" -T -) 2>/dev/null
exit $rc
