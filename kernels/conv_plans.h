// What the cuDNN convolutions (kernels/conv.cu) decided: one plan per direction, shapes, geometry, dtype and math
// mode, searched once and cached for the run. A bf16 convolution that cuDNN cannot run is computed in f32 instead;
// these counters make that visible to tests and benchmarks, since the results stay correct and nothing else shows it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llr::cuda {

struct ConvPlanStats {
  uint64_t searches = 0;                    // algorithm searches run (one per plan key)
  uint64_t bf16_fallback_calls = 0;         // bf16 convolutions computed in f32
  std::vector<std::string> bf16_fallbacks;  // each convolution that falls back, with cuDNN's reason
};

ConvPlanStats conv_plan_stats();

}  // namespace llr::cuda
