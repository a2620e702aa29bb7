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
"$bin" eval --checkpoint "$dir/run/model.safetensors" --data synthetic --split val --n 8 \
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
check_error "widen factor 99999999999 is too large" train --model wrn-10-99999999999 --data synthetic --out "$dir/y1"
check_error "6n + 4" train --model wrn-12-1 --data synthetic --out "$dir/y2"
mkdir -p "$dir/cifar_folder/data_batch_1.bin" "$dir/cifar_device"
ln -s /dev/zero "$dir/cifar_device/data_batch_1.bin"
check_error "data_batch_1.bin is a folder" train --data "$dir/cifar_folder" --out "$dir/y3"
check_error "data_batch_1.bin is not a regular file" train --data "$dir/cifar_device" --out "$dir/y4"
# A checkpoint of no tensors whose metadata says classes "abc" (the header is shorter than 256 bytes).
header='{"__metadata__":{"model":"wrn-10-1","act":"relu","classes":"abc","dtype":"f32"}}'
printf "\\x$(printf %02x ${#header})\\0\\0\\0\\0\\0\\0\\0%s" "$header" >"$dir/abc.safetensors"
check_error "abc.safetensors: metadata 'classes' is 'abc'" eval --checkpoint "$dir/abc.safetensors"
for x in y1 y2 y3 y4; do [ ! -e "$dir/$x" ] || fail "the refused run $x left a folder behind"; done
# Every flag is validated before any work (no data read, no folder made).
n=5
for bad in "--eps nan" "--eps -1" "--pgd-steps -3" "--llr-steps 0" "--momentum nan" "--wd -1" "--lr -0.1" "--lr nan" \
           "--steps -5" "--n-train -5" "--seed -1" "--eval-batch 0" "--batch 0" "--decay-at 1.5" "--act tanh"; do
  flag=${bad%% *}
  # shellcheck disable=SC2086
  check_error "$flag" train --data "$dir/no_such_folder" $bad --out "$dir/x$n"
  n=$((n + 1))
done
check_error "--gamma-restarts" eval --checkpoint "$dir/missing.safetensors" --gamma-restarts 0
check_error "needs at least one step" eval --checkpoint "$dir/missing.safetensors" --attacks pgd-ce:0
for x in $(seq 1 $((n - 1))); do [ ! -e "$dir/x$x" ] || fail "the refused run x$x left a folder behind"; done

# A fresh run into a folder that holds a run is refused; on --resume, flags the run's config.json fixes are ignored
# with a warning, and an --epochs extension is saved for later resumptions.
check_error "is not empty" train --data synthetic --synthetic-train 64 --model wrn-10-1 --out "$dir/run"
"$bin" train --resume "$dir/run" --epochs 3 --lr 0.5 >"$dir/extend.log" 2>&1 || fail "extend: $(tail -1 "$dir/extend.log")"
grep -q -- "--lr ignored on --resume" "$dir/extend.log" || fail "no warning for an ignored --lr: $(head -3 "$dir/extend.log")"
grep -q '"epochs": 3' "$dir/run/config.json" || fail "the --epochs extension was not saved"
grep -q "after 6 steps" "$dir/extend.log" || fail "the extension did not run 6 steps: $(tail -1 "$dir/extend.log")"

# SIGINT stops at a step boundary with a checkpoint and exit status 130; the run then resumes.
"$bin" train --data synthetic --synthetic-train 640 --synthetic-val 32 --model wrn-10-1 --epochs 50 --batch 32 \
  --log-every 1 --out "$dir/sig" >"$dir/sig.log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do [ -s "$dir/sig/metrics.jsonl" ] && break; sleep 0.1; done
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 130 ] || fail "SIGINT: exit status $rc, expected 130: $(tail -1 "$dir/sig.log")"
grep -q "stopped by SIGINT after step" "$dir/sig.log" || fail "SIGINT: $(tail -1 "$dir/sig.log")"
step=$(sed -n 's/.*"step": *\([0-9]*\).*/\1/p' "$dir/sig/checkpoint.json")
[ -n "$step" ] || fail "SIGINT left no checkpoint"
"$bin" train --resume "$dir/sig" --stop-after $((step + 1)) >"$dir/sig2.log" 2>&1 || fail "resume after SIGINT: $(tail -1 "$dir/sig2.log")"

# A metrics write that fails (here: a file size limit) stops the run with an error naming the file.
( trap '' XFSZ; ulimit -f 2; exec "$bin" train --data synthetic --synthetic-train 640 --synthetic-val 32 \
    --model wrn-10-1 --epochs 1 --batch 32 --log-every 1 --out "$dir/full" ) >"$dir/full.log" 2>&1 &&
  fail "a failing metrics write exited 0"
grep -q "metrics.jsonl failed" "$dir/full.log" || fail "metrics write error: $(tail -1 "$dir/full.log")"
echo "cli smoke test passed"
