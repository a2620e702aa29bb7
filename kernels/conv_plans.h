// What the cuDNN convolutions (kernels/conv.cu) decided: one plan per direction, shapes, geometry, dtype, math mode
// and search, searched once and cached for the run. A bf16 convolution that cuDNN cannot run is computed in f32
// instead; these counters make that visible to tests and benchmarks, since the results stay correct and nothing else
// shows it. They also say which bf16 plans run a graph-API engine (conv_engines.h) rather than a legacy algorithm, and
// which 1x1 convolutions run as matrix products.
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

// Whether a 1x1 convolution with padding 0 may run as cuBLAS matrix products over the pixels it reads
// (engine/conv_gemm.h), in any dtype:
//   off:   never;
//   timed: when that ran faster than the cuDNN plan's pick on the planning call's tensors (the default);
//   only:  always, without timing (for the tests of that path).
// LLR_CONV_GEMM=0 (off), 1 (timed) or only sets it at start-up. Plans are cached per mode, so changing it plans anew.
enum class ConvGemm { off, timed, only };
ConvGemm conv_gemm();
void set_conv_gemm(ConvGemm m);

struct ConvPlanStats {
  uint64_t searches = 0;                    // algorithm searches run (one per plan key)
  uint64_t bf16_fallback_calls = 0;         // bf16 convolutions computed in f32
  std::vector<std::string> bf16_fallbacks;  // each convolution that falls back, with cuDNN's reason
  uint64_t engine_plans = 0;                // plans that run a graph-API engine
  uint64_t legacy_plans = 0;                // plans whose engines were timed and the legacy algorithm kept
  uint64_t engine_calls = 0;                // convolutions run by a graph-API engine
  uint64_t engine_failure_count = 0;         // graph-API searches that failed, and engines that refused to run
  std::vector<std::string> engine_failures; // the first 16 of those, with the reason
  uint64_t gemm_plans = 0;                  // plans that run as cuBLAS matrix products (1x1, padding 0)
  uint64_t gemm_calls = 0;                  // convolutions run that way
};

ConvPlanStats conv_plan_stats();

}  // namespace llr::cuda
