#!/usr/bin/env bash
# The llrtrain command line end to end on the synthetic data set: train (LLR, a few steps), resume, evaluate with
# every attack and gamma, and one-line errors (exit 1 or 2) for bad input. Usage: cli_smoke.sh PATH/TO/llrtrain
set -u
bin=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAILED: $*"; exit 1; }

"$bin" train --method llr --llr-steps 2 --data synthetic --synthetic-train 64 --synthetic-val 32 --model wrn-10-1 \
  --act softplus --epochs 2 --batch 32 --stop-after 3 --out "$dir/run" >"$dir/train.log" 2>&1 || fail "train: $(tail -1 "$dir/train.log")"
grep -q '"llr_gamma"' "$dir/run/metrics.jsonl" || fail "no llr_gamma in metrics.jsonl"
"$bin" train --resume "$dir/run" >"$dir/resume.log" 2>&1 || fail "resume: $(tail -1 "$dir/resume.log")"
grep -q "after 4 steps" "$dir/resume.log" || fail "resume did not finish the 4 steps: $(tail -1 "$dir/resume.log")"
"$bin" eval --checkpoint "$dir/run/model.safetensors" --data synthetic --split val --n 16 --batch 16 \
  --attacks pgd-ce:3x1,pgd-margin:3,mt:2,apgd-ce:3,apgd-t:2 --gamma-steps 2 --json "$dir/eval.json" >"$dir/eval.log" 2>&1 ||
  fail "eval: $(tail -1 "$dir/eval.log")"
for key in clean_accuracy robust_accuracy_worst_case '"gamma"' '"apgd-t:2"'; do
  grep -q "$key" "$dir/eval.json" || fail "eval.json lacks $key"
done
"$bin" eval --checkpoint "$dir/run/model.safetensors" --data synthetic --split val --n 16 \
  --attacks autoattack,fab-t:2,square:20 --json "$dir/eval_aa.json" >"$dir/eval_aa.log" 2>&1 ||
  fail "eval autoattack: $(tail -1 "$dir/eval_aa.log")"
for key in '"stages"' '"fab-t:2"' '"square:20"'; do
  grep -q "$key" "$dir/eval_aa.json" || fail "eval_aa.json lacks $key"
done

# Bad input: a clear one-line error on stderr, a non-zero exit, nothing written.
check_error() {
  local expect=$1; shift
  "$bin" "$@" >"$dir/out.log" 2>"$dir/err.log"
  local rc=$?
  [ $rc -ne 0 ] || fail "'$*' exited 0"
  grep -qF -- "$expect" "$dir/err.log" || fail "'$*': expected '$expect', got: $(head -2 "$dir/err.log")"
}
check_error "fraction such as 8/255" train --method llr --eps abc --data synthetic --out "$dir/x1"
check_error "--method must be" train --method fgsm --data synthetic --synthetic-train 64 --out "$dir/x2"
check_error "does not exist" train --data "$dir/no_such_folder" --out "$dir/x3"
check_error "unknown model" train --model vgg-16 --data synthetic --synthetic-train 64 --out "$dir/x4"
check_error "cannot open checkpoint" eval --checkpoint "$dir/missing.safetensors"
head -c 1000 "$dir/run/model.safetensors" >"$dir/cut.safetensors"
check_error "truncated" eval --checkpoint "$dir/cut.safetensors"
check_error "unknown attack" eval --checkpoint "$dir/run/model.safetensors" --attacks fab --n 4
for x in x1 x2 x3 x4; do [ ! -e "$dir/$x" ] || fail "the refused run $x left a folder behind"; done
echo "cli smoke test passed"
