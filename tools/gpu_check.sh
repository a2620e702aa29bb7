#!/usr/bin/env bash
# One call on a lent GPU (H100 or H200): time-boxed stages, most information first, each printing its verdict line as
# soon as it ends (and appending it to $OUT/summary.txt), so a run cut short still says what it learned. Never builds:
# the lent machine has no Eigen, doctest, CLI11 or nlohmann-json. It runs the binaries, scripts and data that
# tools/prepare_gpu_carry.sh put into carry/ on the build machine. Every step is boxed inside LLR_TOTAL_BUDGET
# (500 s), so the whole run ends within 9 minutes on an H100.
#
# The device call, from the repository root of the checkout the session was started in (the device tool sends that
# checkout, not another worktree), after `bash tools/prepare_gpu_carry.sh` there:
#
#   run(command="bash tools/gpu_check.sh", carry=["carry"], timeout_s=540)
#
# Stages and their time boxes (seconds, H100):
#   1 environment   20  nvidia-smi; ldd of each binary (a library "not found" is searched for under the CUDA and
#                       Python folders and added to LD_LIBRARY_PATH); llrtrain --version; the CUDA device query test
#                       (CUDA runtime and driver, cuDNN and cuBLAS versions, built-with cuDNN)
#   2 CUDA tests   200  llr_tests -ts=cuda (op table vs CPU, objectives, allocator), then -ts=cuda-large (WRN-size
#                       convolutions and >1M-element kernels vs CPU, WRN-28-10 bf16 vs f32, bf16 fallback counter, PGD
#                       and LLR objective gradients bf16 vs f32); every mismatch line and every failing case's block;
#                       first of all (2e), the graph-API engine test alone: if it fails or crashes, 2a-6 run with
#                       LLR_CUDNN_ENGINES=0 (verdict engines-off), so the call still tests and measures the rest
#   2c bf16 ref     40  PyTorch's autocast bf16 against its f32 on the same net and measure as the bf16 test
#                       (tools/reference/bf16_gradient_reference.py): the reference for that test's bounds
#   3 step bench   210  llrtrain bench (bf16, batch 128: WRN-28-10 with every method, PreAct ResNet-18 with
#                       natural, PGD-10, TRADES-10, LLR-2, LLR-10), the PyTorch anchor on both nets, compare_bench.py
#                       (ours/torch), the per-phase and per-op profile, compared op by op with the last committed GPU
#                       run's (compare_profiles.py, 3-profile-compare.log) and the tensors live at each peak by
#                       phase and kernel call (--memory); natural, PGD-10, LLR-2 and LLR-10 (and TRADES-10 on
#                       PreAct ResNet-18) again with --cuda-graphs, whole steps replayed (time, replays, last loss
#                       against the eager run); LLR-2 and LLR-10 with
#                       --llr-recompute-nominal --tangent-segments 8, GradAlign with --tangent-segments 8 (time and
#                       peak memory against the default and natural training's); natural, PGD-10 and LLR-2 on
#                       WRN-28-10 with cuDNN's legacy algorithms only (LLR_CUDNN_ENGINES=0 LLR_CONV_REWRITES=0: what the
#                       graph-API engines and the rewrites of engine/conv_rewrites.h bring); LLR_JAX=1 adds the JAX
#                       anchor (+120 s, taken from memcheck: XLA compiles each step first)
#   4 conv bench    90  llr_conv_bench: every WRN-28-10 convolution, TF32 and bf16, timed and checked against the CPU;
#                       each bf16 plan's legacy algorithm against cuDNN's graph-API engines, and the pick against
#                       a rewrite where one applies (LLR_PRINT_PLANS lines)
#   5 trainings    100  short bf16 LLR-2 and PGD-7 trainings of WRN-16-4 on the carried CIFAR-10 batch, evaluated
#                       (PGD-20 from delta = 0, APGD-CE, APGD-T, gamma), and PyTorch's PGD-20 on the same images: the
#                       robust accuracies must be equal (both in full f32: LLR_NO_TF32=1 for ours)
#   6 memcheck     rest compute-sanitizer --tool memcheck on the "cuda" suite without the 4 TiB out-of-memory test
#                       and the whole-step graph test (its kernels are the other cases'), cuDNN algorithms by
#                       heuristic; boxed by what is left of the 500 s (skipped under 20 s); then, with 60 s or more
#                       left, the graph-API engine test with LLR_CUDNN_ENGINES=only and the tests of the rewritten
#                       convolutions (verdict memcheck-eng)
#
# $OUT (the device sets it; default /tmp/llr_gpu_check/out) receives at most 6 files: summary.txt (the verdicts),
# bench.jsonl, torch_anchor.jsonl, conv_bench.jsonl, [jax_anchor.jsonl], logs.tar.gz (every stage's full log,
# rewritten after each stage). Commit them under bench/results/<date>-<gpu>/. Bulky files stay in /tmp/llr_gpu_check.
#
# Environment: LLR_CARRY (default carry), LLR_STAGES (e.g. "1 2": run only these), LLR_DRY_RUN=1 (check the script on
# a machine without a GPU: tiny CPU sizes where a stage allows it; GPU-only steps fail or skip and say so).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

T0=$(date +%s)
TOTAL=${LLR_TOTAL_BUDGET:-500}
CARRY=${LLR_CARRY:-carry}
BIN=$CARRY/bin
STAGES=${LLR_STAGES:-1 2 3 4 5 6}
DRY=${LLR_DRY_RUN:-0}
WORK=/tmp/llr_gpu_check
OUT=${OUT:-$WORK/out}
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS"
rm -f "$OUT/summary.txt" "$OUT"/*.jsonl "$OUT/logs.tar.gz" "$LOGS"/*
export PYTHONUNBUFFERED=1

elapsed() { echo $(($(date +%s) - T0)); }
STAGE_END=$TOTAL
# A time box: the seconds asked for, cut to what is left of the current stage and of the total (never below 5 s).
box() {
  local now b=$1
  now=$(elapsed)
  [ "$b" -gt $((STAGE_END - now)) ] && b=$((STAGE_END - now))
  [ "$b" -gt $((TOTAL - now)) ] && b=$((TOTAL - now))
  [ "$b" -lt 5 ] && b=5
  echo "$b"
}
# VERDICT lines: printed at once and kept in summary.txt, which comes back even if the call is cut short.
verdict() {
  local line
  line=$(printf 'VERDICT %s %-12s %s' "$1" "$2" "$3")
  echo "$line"
  echo "$line" >>"$OUT/summary.txt"
}
archive_logs() { tar -czf "$OUT/logs.tar.gz.part" -C "$WORK" logs 2>/dev/null && mv "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"; }
# Starts a stage with its budget in seconds; box() then keeps every step inside it.
begin_stage() {
  STAGE_END=$(($(elapsed) + $3))
  [ "$STAGE_END" -gt "$TOTAL" ] && STAGE_END=$TOTAL
  echo
  echo "== stage $1: $2 (until $STAGE_END s, now at $(elapsed) s) =="
}
want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# rc of a timed command as words.
status_word() {
  case $1 in
    0) echo "ok" ;;
    124 | 137) echo "TIMED OUT" ;;
    127) echo "NOT RUN" ;;
    *) echo "FAILED (rc $1)" ;;
  esac
}

echo "gpu_check: $(date -u +%FT%TZ) on $(hostname), carry $CARRY, stages $STAGES$([ "$DRY" = 1 ] && echo ', DRY RUN')"
if [ ! -x "$BIN/llr_tests" ] || [ ! -x "$BIN/llrtrain" ] || [ ! -x "$BIN/llr_conv_bench" ]; then
  verdict 0 carry "MISSING: $BIN/{llrtrain,llr_tests,llr_conv_bench}; run tools/prepare_gpu_carry.sh on the build machine and pass carry=[\"carry\"]"
  exit 2
fi
[ -f "$CARRY/MANIFEST" ] && sed -n '1,3p' "$CARRY/MANIFEST"

# Sizes: the real ones, or tiny CPU ones for a dry run of the script itself.
if [ "$DRY" = 1 ]; then
  BENCH=(--model wrn-10-1 --batch 8 --precision fp32 --device cpu --warmup 1 --iters 2 --methods "natural,pgd-3,llr-1")
  BENCH_SMALL=(--model wrn-10-1 --act softplus --batch 8 --precision fp32 --device cpu --warmup 0 --iters 1
    --methods "natural")
  PROFILE=(--model wrn-10-1 --batch 8 --precision fp32 --device cpu --warmup 0 --iters 1 --methods "llr-1")
  PROFILE_SMALL=(--model wrn-10-1 --batch 8 --precision fp32 --device cpu --warmup 0 --iters 1 --methods "natural")
  LOWMEM=(--model wrn-10-1 --batch 8 --precision fp32 --device cpu --warmup 0 --iters 1 --methods "llr-1")
  GRAPHS=(--model wrn-10-1 --batch 8 --precision fp32 --device cpu --warmup 1 --iters 2 --methods "natural,pgd-3")
  GRAPHS_SMALL=(--model wrn-10-1 --batch 8 --precision fp32 --device cpu --warmup 1 --iters 2 --methods "llr-1")
  LEGACY=(--model wrn-10-1 --batch 8 --precision fp32 --device cpu --warmup 0 --iters 1 --methods "natural")
  ANCHOR=(--quick --methods "natural,pgd-10,llr-2-dbp")
  CONV=(--batch 2 --iters 1)
  TRAIN=(--model wrn-10-1 --steps 2 --batch 16 --precision fp32 --device cpu)
  EVAL=(--n 32 --batch 32 --device cpu --attacks "pgd-ce:2x0,apgd-ce:2,apgd-t:1" --gamma-steps 1)
else
  BENCH=(--model wrn-28-10 --batch 128 --precision bf16 --warmup 2 --iters 5
    --methods "natural,pgd-10,trades-10,llr-2,llr-10,fgsm-rs,n-fgsm,gradalign,elle")
  BENCH_SMALL=(--model preact-rn18 --batch 128 --precision bf16 --warmup 3 --iters 10
    --methods "natural,pgd-10,trades-10,llr-2,llr-10")
  # LLR with the nominal pass recorded twice and the tangent pass in 8 recomputed segments (GradAlign: its two
  # tangent passes): memory against time.
  LOWMEM=(--model wrn-28-10 --batch 128 --precision bf16 --warmup 2 --iters 5 --methods "llr-2,llr-10,gradalign")
  # The same methods with --cuda-graphs: the second step recorded whole, the timed ones replayed.
  GRAPHS=(--model wrn-28-10 --batch 128 --precision bf16 --warmup 2 --iters 5 --methods "natural,pgd-10,llr-2,llr-10")
  GRAPHS_SMALL=(--model preact-rn18 --batch 128 --precision bf16 --warmup 3 --iters 10
    --methods "natural,pgd-10,trades-10,llr-2,llr-10")
  # The same steps with cuDNN's legacy algorithms only (LLR_CUDNN_ENGINES=0 LLR_CONV_REWRITES=0): what the graph-API
  # engines and the rewritten convolutions bring.
  LEGACY=(--model wrn-28-10 --batch 128 --precision bf16 --warmup 2 --iters 5 --methods "natural,pgd-10,llr-2")
  PROFILE=(--model wrn-28-10 --batch 128 --precision bf16 --warmup 1 --iters 2 --methods "natural,pgd-10,llr-2,llr-10")
  PROFILE_SMALL=(--model preact-rn18 --batch 128 --precision bf16 --warmup 1 --iters 3 --methods "llr-2")
  ANCHOR=(--models wrn-28-10,preact-rn18 --prec bf16 --methods "natural,pgd-10,trades-10,llr-2-dbp,llr-10-dbp"
    --warm 2 --iters 5)
  CONV=(--batch 128 --iters 10)
  TRAIN=(--model wrn-16-4 --epochs 3 --batch 128 --precision bf16 --lr 0.1 --schedule cosine)
  EVAL=(--n 1000 --batch 500 --attacks "pgd-ce:20x0,apgd-ce:50,apgd-t:20" --gamma-steps 10)
fi

# ---------------------------------------------------------------------------------------------------------------
if want 1; then
  begin_stage 1 environment 20
  log=$LOGS/1-environment.log
  gpu=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 |
    head -1)
  echo "nvidia-smi: $gpu"
  { timeout 10 nvidia-smi 2>&1; echo; } >"$log"
  missing_libs() { for f in "$BIN"/*; do ldd "$f" 2>&1; done | awk '/not found/ {print $1}' | sort -u; }
  missing=$(missing_libs)
  found_in=""
  if [ -n "$missing" ]; then
    site=$(timeout 10 python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
    for lib in $missing; do
      # shellcheck disable=SC2086  # $site is a list of folders
      dir=$(timeout "$(box 20)" find /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets $site /usr/local /opt \
        -name "$lib" -print -quit 2>/dev/null | head -1)
      if [ -n "$dir" ]; then
        found_in="$found_in $lib=$(dirname "$dir")"
        LD_LIBRARY_PATH="$(dirname "$dir")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export LD_LIBRARY_PATH
      fi
    done
  fi
  still=$(missing_libs | tr '\n' ' ')
  for f in "$BIN"/*; do echo "-- ldd $f"; ldd "$f" 2>&1; done >>"$log"
  [ -n "$found_in" ] && echo "libraries found outside the loader's path:$found_in (LD_LIBRARY_PATH set)"
  [ -n "$still" ] && echo "libraries NOT FOUND: $still"
  version=$(timeout "$(box 20)" "$BIN/llrtrain" --version 2>&1 | tee -a "$log")
  echo "$version"
  query=$(timeout "$(box 20)" "$BIN/llr_tests" -tc='CUDA device query' 2>&1 | tee -a "$log" | grep -E '^CUDA|^SKIPPED')
  echo "$query"
  verdict 1 environment "gpu: ${gpu:-nvidia-smi failed}; libs: ${still:+NOT FOUND $still}${still:-ok}${found_in:+ (via LD_LIBRARY_PATH)}; llrtrain: $(echo "$version" | grep '^gpu:' | head -1); $(echo "$query" | head -1)"
  archive_logs
fi

# ---------------------------------------------------------------------------------------------------------------
# Prints a doctest log's own lines (mismatches, summaries, versions, skips) and every failing case's whole block.
report_tests() {
  local log=$1
  grep -E 'MISMATCH|^  mismatch:|^cuda vs cpu[^ ]*:|^cuda vs cpu (WRN|large)|^cuda (WRN|PGD|LLR)|relative L2|bf16 fallback|worst parameter|LLR signs|^SKIPPED|^device:|^CUDA ' "$log"
  awk '/^=+$/ && length($0) >= 70 { if (block ~ /ERROR|FATAL|THREW|CRASHED|SIG[A-Z]+|exception/) printf "%s", block; block = $0 "\n"; next }
       { block = block $0 "\n" }
       END { if (block ~ /ERROR|FATAL|THREW|CRASHED|SIG[A-Z]+|exception/) printf "%s", block }' "$log"
  grep -E '^\[doctest\] (test cases|assertions)' "$log"
  echo "slowest cases:"
  grep -E '^[0-9]+\.[0-9]+ s: ' "$log" | sort -rn | head -5
}
cases_line() { grep -E '^\[doctest\] test cases' "$1" | sed 's/\[doctest\] //' | tr -s ' '; }

if want 2; then
  begin_stage 2 "CUDA tests" 200
  # The graph-API engine test first, in a process of its own: its engines have never run on a GPU (and the device's
  # cuDNN may be older than the headers we built with), and a fault inside one is sticky, so it would take down every
  # later case of its process. If it fails or crashes, every later stage (2a and 2b included) plans its convolutions
  # with cuDNN's legacy algorithms (LLR_CUDNN_ENGINES=0, verdict engines-off), so the call still tests and measures the
  # rest.
  engine_case='bf16 convolutions through cuDNN graph-API engines*'
  log=$LOGS/2e-tests-engines.log
  timeout -k 5 "$(box 60)" "$BIN/llr_tests" -tc="$engine_case" --duration=true >"$log" 2>&1
  rc_eng=$?
  report_tests "$log"
  verdict 2e engines "$(status_word "$rc_eng"): $(cases_line "$log"); $(grep -E '^graph-API engines: ' "$log" | cut -d';' -f1 || echo 'graph-API engines: not run')"
  if [ "$rc_eng" != 0 ] && [ -z "${LLR_CUDNN_ENGINES:-}" ]; then
    export LLR_CUDNN_ENGINES=0
    verdict 2e engines-off "the graph-API engine test failed (rc $rc_eng): stages 2a-6 run with LLR_CUDNN_ENGINES=0"
  fi
  archive_logs
  small=$(box 50)
  log=$LOGS/2a-tests-cuda.log
  timeout -k 5 "$small" "$BIN/llr_tests" -ts=cuda --duration=true >"$log" 2>&1
  rc_small=$?
  report_tests "$log"
  [ "$rc_small" = 124 ] && { echo "-- timed out after $small s; the log ends with:"; tail -15 "$log"; }
  verdict 2a cuda-tests "$(status_word "$rc_small"): $(cases_line "$log"); $(grep -E '^cuda vs cpu: ' "$log" | sed 's/^cuda vs cpu: //')"
  archive_logs
  large=$(box 200)
  log=$LOGS/2b-tests-cuda-large.log
  timeout -k 5 "$large" "$BIN/llr_tests" -ts=cuda-large -tce="$engine_case" --duration=true >"$log" 2>&1
  rc_large=$?
  report_tests "$log"
  [ "$rc_large" = 124 ] && { echo "-- timed out after $large s; the log ends with:"; tail -15 "$log"; }
  verdict 2b cuda-large "$(status_word "$rc_large"): $(cases_line "$log"); $(grep -cE 'MISMATCH' "$log") mismatch lines; fallbacks: $(grep -E '^cuda WRN-28-10 bf16 forward' "$log" | grep -oE '[0-9]+ convolutions computed in f32' || echo 'not measured')"
  archive_logs
  begin_stage 2c "PyTorch bf16 reference" 40
  log=$LOGS/2c-bf16-reference.log
  if python3 -c "import torch" 2>/dev/null; then
    ref_args=()
    [ "$DRY" = 1 ] && ref_args=(--model wrn-10-1 --batch 8)
    (cd "$CARRY/tools/reference" && timeout -k 5 "$(box 40)" python3 bf16_gradient_reference.py "${ref_args[@]}") \
      >"$log" 2>&1
    rc=$?
    cat "$log"
    verdict 2c bf16-ref "$(status_word "$rc"): $(grep -E '^REFERENCE' "$log" | sed 's/^REFERENCE //'); ours: $(grep -E 'WRN-28-10: .*(within twice|together)' "$LOGS/2b-tests-cuda-large.log" | sed 's/^ *WRN-28-10: //' | tr '\n' ' ')"
  else
    verdict 2c bf16-ref "not run: no torch"
  fi
  archive_logs
fi

# ---------------------------------------------------------------------------------------------------------------
if want 3; then
  # The JAX anchor (opt-in) brings its own two minutes, taken from memcheck's.
  begin_stage 3 "step benchmark" $((210 + 120 * ${LLR_JAX:-0}))
  log=$LOGS/3-bench.log
  # LLR_PRINT_PLANS: the convolution plans the steps run (legacy algorithm or graph-API engine) go to the log.
  LLR_PRINT_PLANS=1 timeout -k 5 "$(box 50)" "$BIN/llrtrain" bench "${BENCH[@]}" --json "$OUT/bench.jsonl" >"$log" 2>&1
  rc_ours=$?
  timeout -k 5 "$(box 20)" "$BIN/llrtrain" bench "${BENCH_SMALL[@]}" --json "$OUT/bench.jsonl" >>"$log" 2>&1
  [ "$rc_ours" = 0 ] && rc_ours=$?
  grep -vE '^\{|^plan ' "$log" | tail -16
  echo "convolution plans of the steps: $(grep -cE '^plan .* -> engine' "$log") graph-API engines, $(grep -cE '^plan .* -> legacy' "$log") legacy; rewritten: $(grep -cE '^plan .* -> products' "$log") of $(grep -cE '^plan .*cuBLAS products' "$log") as cuBLAS products, $(grep -cE '^plan .* -> transposed' "$log") of $(grep -cE '^plan .*transposed backward-data' "$log") forwards as the transpose's backward-data"
  # CUDA graphs: whole steps replayed, against the eager runs above (time, replays, and the last step's loss, which
  # should be the eager one up to the GPU's non-deterministic sums: atomics in the batch statistics).
  glog=$LOGS/3-graphs.log
  timeout -k 5 "$(box 30)" "$BIN/llrtrain" bench "${GRAPHS[@]}" --cuda-graphs --json "$WORK/graphs.jsonl" >"$glog" 2>&1
  rc_graphs=$?
  timeout -k 5 "$(box 18)" "$BIN/llrtrain" bench "${GRAPHS_SMALL[@]}" --cuda-graphs --json "$WORK/graphs.jsonl" \
    >>"$glog" 2>&1
  [ "$rc_graphs" = 0 ] && rc_graphs=$?
  grep -iE 'warning|error' "$glog" | head -5
  cp "$WORK/graphs.jsonl" "$LOGS/3-graphs.jsonl" 2>/dev/null
  graphs_line=$(python3 "$CARRY/tools/compare_runs.py" graphs "$OUT/bench.jsonl" "$WORK/graphs.jsonl" 2>&1)
  echo "cuda graphs: $graphs_line"
  timeout -k 5 "$(box 20)" "$BIN/llrtrain" bench "${LOWMEM[@]}" --llr-recompute-nominal --tangent-segments 8 \
    --json "$OUT/bench.jsonl" >"$LOGS/3-lowmem.log" 2>&1
  lowmem_line=$(python3 "$CARRY/tools/compare_runs.py" lowmem "$OUT/bench.jsonl" 2>&1)
  echo "low-memory LLR: $lowmem_line"
  LLR_CUDNN_ENGINES=0 LLR_CONV_REWRITES=0 timeout -k 5 "$(box 20)" "$BIN/llrtrain" bench "${LEGACY[@]}" \
    --json "$WORK/legacy.jsonl" >"$LOGS/3-legacy-conv.log" 2>&1
  cp "$WORK/legacy.jsonl" "$LOGS/3-legacy-conv.jsonl" 2>/dev/null
  engines_line=$(python3 "$CARRY/tools/compare_runs.py" legacy "$OUT/bench.jsonl" "$WORK/legacy.jsonl" 2>&1)
  echo "legacy algorithms -> with graph-API engines and rewrites: $engines_line"
  anchor=$CARRY/anchors/torch_anchor.py
  if [ -f "$anchor" ] && python3 -c "import torch" 2>/dev/null; then
    OUT="$OUT" timeout -k 5 "$(box 60)" python3 "$anchor" "${ANCHOR[@]}" >"$LOGS/3-torch-anchor.log" 2>&1
    rc_torch=$?
    grep -vE '^\{' "$LOGS/3-torch-anchor.log" | tail -12
  else
    rc_torch=127
    echo "PyTorch anchor not run: $anchor missing or no torch"
  fi
  if [ "${LLR_JAX:-0}" = 1 ] && [ -f "$CARRY/anchors/jax_anchor.py" ]; then
    timeout -k 5 "$(box 120)" python3 "$CARRY/anchors/jax_anchor.py" natural,pgd-10,llr-2-dbp bf16 \
      >"$LOGS/3-jax-anchor.log" 2>&1
    grep -E '^\{' "$LOGS/3-jax-anchor.log" >"$OUT/jax_anchor.jsonl"
    tail -4 "$LOGS/3-jax-anchor.log"
  fi
  # Where the time goes (per phase and per op, CUDA events): a separate run, so the events do not touch the timings.
  # --memory: what the tensors live at each method's peak are, by phase and kernel call (3-profile.log).
  timeout -k 5 "$(box 25)" "$BIN/llrtrain" bench "${PROFILE[@]}" --profile --memory >"$LOGS/3-profile.log" 2>&1
  timeout -k 5 "$(box 10)" "$BIN/llrtrain" bench "${PROFILE_SMALL[@]}" --profile --memory >>"$LOGS/3-profile.log" 2>&1
  grep -E '^== |^profile over' "$LOGS/3-profile.log"
  grep -A4 'tensors live at the peak' "$LOGS/3-profile.log" | grep -vE '^phase|^--' | head -24
  if [ -f "$CARRY/previous-profile.log" ]; then  # the last committed GPU run's profile (prepare_gpu_carry.sh)
    echo "against $(tail -1 "$CARRY/previous-profile.log" | sed 's/^# from //'):"
    python3 "$CARRY/tools/compare_profiles.py" "$CARRY/previous-profile.log" "$LOGS/3-profile.log" \
      >"$LOGS/3-profile-compare.log" 2>&1
    grep -E '^== ' "$LOGS/3-profile-compare.log"
  fi
  python3 "$CARRY/tools/compare_bench.py" "$OUT/bench.jsonl" "$OUT/torch_anchor.jsonl" | tee "$LOGS/3-compare.log"
  verdict 3 step-bench "ours $(status_word "$rc_ours"), torch $(status_word "$rc_torch"): $(grep '^summary: ' "$LOGS/3-compare.log" | sed 's/^summary: //')"
  verdict 3 cuda-graphs "$(status_word "$rc_graphs"): $graphs_line"
  verdict 3 llr-memory "$lowmem_line"
  verdict 3 conv-engines "legacy algorithms -> with graph-API engines and rewrites: $engines_line"
  archive_logs
fi

# ---------------------------------------------------------------------------------------------------------------
if want 4; then
  begin_stage 4 "convolution benchmark" 90
  b=$(box 90)
  log=$LOGS/4-conv-bench.log
  # LLR_PRINT_PLANS: each bf16 plan's candidates (the legacy pick and the graph-API engines) with their times, and
  # the pick against a rewrite where one applies.
  LLR_PRINT_PLANS=1 timeout -k 5 "$b" "$BIN/llr_conv_bench" "${CONV[@]}" --json "$OUT/conv_bench.jsonl" >"$log" 2>&1
  rc=$?
  grep -v '^plan ' "$log"
  grep -E '^plan .*legacy algo .* -> ' "$log" | sed -E 's/^plan conv2d ([a-z-]+) x\[([0-9,]+)\] w\[([0-9,]+)\].*legacy algo ([0-9]+) ([0-9.]+) ms.* -> (.*)$/\1 x[\2] w[\3]: legacy \5 ms -> \6/'
  grep -E '^plan .*(cuBLAS products|transposed backward-data) .* -> ' "$log" | sed -E 's/^plan conv2d ([a-z-]+) x\[([0-9,]+)\] w\[([0-9,]+)\][^:]*: (.*)$/\1 x[\2] w[\3]: \4/'
  if [ "$rc" = 0 ] || grep -q '^values: ' "$log"; then
    verdict 4 conv-bench "$(status_word "$rc"): values $(grep -E '^values: ' "$log" | cut -d' ' -f2- | cut -d'(' -f1)$(grep -c 'fell back' "$log") layers fell back to f32; $(grep -E '^cuDNN plans' "$log" | sed 's/^cuDNN plans: //'); totals $(grep -E '^total' "$log" | awk '{print $2 " " $(NF-3) " ms"}' | tr '\n' ' ')"
  else
    verdict 4 conv-bench "$(status_word "$rc"): $(tail -1 "$log")"
  fi
  archive_logs
fi

# ---------------------------------------------------------------------------------------------------------------
# One method's training, evaluation and PyTorch PGD cross-check; prints its verdict text.
train_and_check() {
  local m=$1 data=$2 run=$WORK/run_$1
  local extra=(--llr-steps 2)
  [ "$m" = pgd ] && extra=(--pgd-steps 7)
  rm -rf "$run"
  timeout -k 5 "$(box 35)" "$BIN/llrtrain" train --method "$m" --data "$data" --holdout 1000 --act softplus \
    --eps-warmup 50 "${extra[@]}" "${TRAIN[@]}" --out "$run" >"$LOGS/5-train-$m.log" 2>&1
  local rc=$?
  tail -1 "$LOGS/5-train-$m.log" >&2
  if [ "$rc" != 0 ]; then
    echo "$m: training $(status_word "$rc"): $(tail -1 "$LOGS/5-train-$m.log")"
    return
  fi
  LLR_NO_TF32=1 timeout -k 5 "$(box 25)" "$BIN/llrtrain" eval --checkpoint "$run/model.safetensors" --data "$data" \
    --split val --holdout 1000 "${EVAL[@]}" --dump-logits "$WORK/images_$m.safetensors" \
    --json "$LOGS/5-eval-$m.json" >"$LOGS/5-eval-$m.log" 2>&1
  rc=$?
  grep -E 'clean|pgd-ce|apgd|worst|gamma' "$LOGS/5-eval-$m.log" >&2
  if [ "$rc" != 0 ]; then
    echo "$m: eval $(status_word "$rc"): $(tail -1 "$LOGS/5-eval-$m.log")"
    return
  fi
  local torch_line=""
  if python3 -c "import torch, safetensors" 2>/dev/null; then
    local steps=20
    [ "$DRY" = 1 ] && steps=2
    torch_line=$( (cd "$CARRY/tools/reference" && timeout -k 5 "$(box 25)" python3 pgd_eval.py \
      --checkpoint "$run/model.safetensors" --images "$WORK/images_$m.safetensors" --steps "$steps" --restarts 0) \
      2>&1 | tee "$LOGS/5-pgd-eval-$m.log" | tail -1)
    echo "$torch_line" >&2
  fi
  python3 - "$LOGS/5-eval-$m.json" "$m" "$torch_line" <<'PY'
import json, re, sys
e = json.load(open(sys.argv[1]))
n = e["n"]
parts = [f"{sys.argv[2]}: clean {e['clean_accuracy']:.3f}"]
ours = None
for a in e.get("attacks", []):
    parts.append(f"{a['attack']} {a['robust_accuracy']:.3f}")
    if a["attack"].startswith("pgd-ce:") and a["attack"].endswith("x0"):
        ours = a["robust_accuracy"]
if "robust_accuracy_worst_case" in e:
    parts.append(f"worst {e['robust_accuracy_worst_case']:.3f}")
if "gamma" in e:
    parts.append(f"gamma mean {e['gamma']['mean']:.3g}")
m = re.search(r"robust accuracy ([0-9.]+)", sys.argv[3])
if m and ours is not None:
    theirs = float(m.group(1))
    k = round(abs(theirs - ours) * n)
    parts.append(f"torch PGD {theirs:.3f}: " + ("EQUAL" if k == 0 else f"DIFFERS by {k} of {n} images"))
else:
    parts.append("torch PGD not run")
print(", ".join(parts))
PY
}

if want 5; then
  begin_stage 5 "trainings on CIFAR-10" 100
  xz_file=$CARRY/cifar10/data_batch_1.bin.xz
  data=$WORK/cifar
  if [ -f "$xz_file" ]; then
    mkdir -p "$data"
    if command -v xz >/dev/null; then
      xz -dc "$xz_file" >"$data/all.bin"
    else
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$xz_file" "$data/all.bin"
    fi
    for k in 1 2 3 4 5; do # the reader wants data_batch_1..5: five files of 2,000 records (3,073 bytes each)
      dd if="$data/all.bin" of="$data/data_batch_$k.bin" bs=3073 skip=$(((k - 1) * 2000)) count=2000 status=none
    done
    rm -f "$data/all.bin"
    v_llr=$(train_and_check llr "$data")
    echo "$v_llr"
    v_pgd=$(train_and_check pgd "$data")
    echo "$v_pgd"
    verdict 5 trainings "$v_llr | $v_pgd"
  else
    verdict 5 trainings "not run: $xz_file missing"
  fi
  archive_logs
fi

# ---------------------------------------------------------------------------------------------------------------
if want 6; then
  b=$((TOTAL - $(elapsed)))
  begin_stage 6 "compute-sanitizer memcheck" "$b"
  log=$LOGS/6-memcheck.log
  if [ "$b" -lt 20 ]; then
    verdict 6 memcheck "not run: only $b s left"
  elif command -v compute-sanitizer >/dev/null 2>&1; then
    LLR_CUDNN_HEURISTIC=1 timeout -k 5 "$b" compute-sanitizer --tool memcheck --error-exitcode 1 --leak-check no \
      --print-limit 20 "$BIN/llr_tests" -ts=cuda -tce='*4 TiB request*,*training steps replayed*' >"$log" 2>&1
    rc=$?
    grep -E '^========= (Invalid|Program hit|Address|ERROR SUMMARY)' "$log" | head -20
    # --error-exitcode and a failing test both give rc 1: the ERROR SUMMARY line tells them apart.
    errors=$(grep -E 'ERROR SUMMARY' "$log" | tail -1 | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      text="TIMED OUT after $b s with $(grep -c '^========= Invalid' "$log") errors so far; it reached: $(grep -E '^cuda vs cpu' "$log" | tail -1)"
    elif [ -z "$errors" ]; then
      text="FAILED (rc $rc) without an error summary: $(tail -1 "$log")"
    elif [ "$errors" = 0 ]; then
      text="clean (0 errors); tests $(status_word "$rc"): $(cases_line "$log")"
    else
      text="$errors ERRORS; first: $(grep -m1 -E '^========= (Invalid|Program hit)' "$log")"
    fi
    verdict 6 memcheck "$text"
    # The bf16 convolutions through cuDNN's graph-API engines and the rewritten convolutions (as cuBLAS products,
    # forwards as the transpose's backward-data; the run above plans by the legacy heuristic, which times neither), if
    # the time allows: workspaces and pointers as the engine path hands them to cuDNN, and the copies' reads and writes.
    b2=$((TOTAL - $(elapsed)))
    if [ "$b2" -ge 60 ]; then
      cases='*graph-API engines*,*rewritten as*'
      [ "${LLR_CUDNN_ENGINES:-}" = 0 ] && cases='*rewritten as*'  # the engine test failed in 2e
      LLR_CUDNN_ENGINES=only timeout -k 5 "$b2" compute-sanitizer --tool memcheck --error-exitcode 1 --leak-check no \
        --print-limit 20 "$BIN/llr_tests" -tc="$cases" >"$LOGS/6-memcheck-engines.log" 2>&1
      rc=$?
      errors=$(grep -E 'ERROR SUMMARY' "$LOGS/6-memcheck-engines.log" | tail -1 | grep -oE '[0-9]+ error' |
        grep -oE '[0-9]+')
      verdict 6 memcheck-eng "rc $rc, ${errors:-no summary (timed out?)} errors: $(cases_line "$LOGS/6-memcheck-engines.log")"
    fi
  else
    verdict 6 memcheck "not run: compute-sanitizer not found"
  fi
  archive_logs
fi

echo
echo "== summary ($(elapsed) s; results in $OUT) =="
cat "$OUT/summary.txt"
