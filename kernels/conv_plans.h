// What the cuDNN convolutions (kernels/conv.cu) decided: one plan per direction, shapes, geometry, dtype, math mode
// and search, searched once and cached for the run. A bf16 convolution that cuDNN cannot run is computed in f32
// instead; these counters make that visible to tests and benchmarks, since the results stay correct and nothing else
// shows it. They also say which bf16 plans run a graph-API engine (conv_engines.h) rather than a legacy algorithm, and
// which convolutions run as one of the rewrites of engine/conv_rewrites.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llr::cuda {

// Which of cuDNN's interfaces a bf16 plan search times (f32 and f64 convolutions use the legacy algorithms only):
//   legacy:  the legacy algorithms (cudnnFind*AlgorithmEx) alone;
//   both:    the legacy heuristic's pick and up to 10 graph-API engines, timed on the planning call's tensors; the
//            fastest runs, or, if that is the legacy pick, the legacy benchmark's (the default);
//   engines: the fastest graph-API engine whenever one runs, the legacy pick only when none does (for the tests of
//            the engine path).
// LLR_CUDNN_ENGINES=0 (legacy), 1 (both) or only (engines) sets it at start-up; LLR_CUDNN_HEURISTIC=1 implies legacy
// whatever the mode (no timing at all).
// Plans are cached per search, so changing it plans anew.
enum class ConvSearch { legacy, both, engines };
ConvSearch conv_search();
void set_conv_search(ConvSearch s);

// Whether a convolution may run as one of the rewrites of engine/conv_rewrites.h, in any dtype: as cuBLAS matrix
// products over its unfolded input (1x1 filters with padding 0, and filters over few channels such as the stem's),
// or, for the forward of a stride-1 "same" convolution, as the backward-data of its transpose:
//   off:        never;
//   timed:      when one ran faster than the cuDNN plan's pick on the planning call's tensors (the default);
//   products:   as products wherever they apply, without timing (for the tests of that path; cuDNN elsewhere);
//   transposed: forwards as the transpose's backward-data wherever that applies, likewise.
// LLR_CONV_REWRITES=0 (off), 1 (timed), products or transposed sets it at start-up. Plans are cached per mode, so
// changing it plans anew.
enum class ConvRewrites { off, timed, products, transposed };
ConvRewrites conv_rewrites();
void set_conv_rewrites(ConvRewrites m);

// The *_plans counts say what the cached plans run now (a plan whose engine or rewrite failed counts as what replaced
// it); the others count events.
struct ConvPlanStats {
  uint64_t searches = 0;                    // algorithm searches run (one per plan key)
  uint64_t bf16_fallback_calls = 0;         // bf16 convolutions computed in f32
  std::vector<std::string> bf16_fallbacks;  // each convolution that falls back, with cuDNN's reason
  uint64_t engine_plans = 0;                // plans that run a graph-API engine
  uint64_t legacy_plans = 0;                // plans whose engines were timed and that run the legacy algorithm
  uint64_t engine_calls = 0;                // convolutions run by a graph-API engine
  uint64_t engine_failure_count = 0;         // graph-API searches that failed, and engines that refused to run
  std::vector<std::string> engine_failures; // the first 16 of those, with the reason
  uint64_t product_plans = 0;               // plans that run as cuBLAS matrix products
  uint64_t product_calls = 0;               // convolutions run that way
  uint64_t transposed_plans = 0;            // forward plans that run as the backward-data of the transpose
  uint64_t transposed_calls = 0;            // convolutions run that way
};

ConvPlanStats conv_plan_stats();

}  // namespace llr::cuda
