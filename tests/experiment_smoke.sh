#!/usr/bin/env bash
# tools/experiments/tiny.json end to end (about a minute on 2 cores): every run trained to its budget and evaluated,
# one result line each, the frontier plot written, and a rerun that trains nothing. Usage: experiment_smoke.sh LLRTRAIN
set -euo pipefail
bin=$1
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "FAILED: $*"; exit 1; }

"$bin" experiment "$here/tools/experiments/tiny.json" --out "$out" >"$out/log" 2>&1 || fail "experiment: $(tail -3 "$out/log")"
runs=$(wc -l <"$out/results.jsonl")
[ "$runs" -eq 8 ] || fail "results.jsonl has $runs lines, expected 8 (4 methods x 2 budgets)"
! grep -q '"error"' "$out/results.jsonl" || fail "a run failed: $(grep '"error"' "$out/results.jsonl" | head -1)"
for key in '"clean_accuracy"' '"robust_accuracy"' '"pgd-ce:5x1"' '"apgd-ce:5"' '"gamma_mean"' '"train_s"'; do
  [ "$(grep -c "$key" "$out/results.jsonl")" -eq 8 ] || fail "not every line of results.jsonl has $key"
done
grep -q '<polyline' "$out/frontier.svg" || fail "frontier.svg has no lines"
"$bin" experiment "$here/tools/experiments/tiny.json" --out "$out" >"$out/rerun.log" 2>&1 || fail "rerun: $(tail -3 "$out/rerun.log")"
grep -q "8 already done" "$out/rerun.log" || fail "the rerun did not skip the finished runs: $(head -1 "$out/rerun.log")"
[ "$(wc -l <"$out/results.jsonl")" -eq 8 ] || fail "the rerun added result lines"
echo "experiment smoke test passed"
