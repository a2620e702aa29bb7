// Helpers shared by the CPU backend's files. Argument checks are the dispatch's (engine/backend_checks.cpp).
#pragma once

#include <type_traits>

#include "engine/backend.h"

namespace llr::cpu {

// Elementwise loops longer than this run on all cores (OpenMP); shorter ones are not worth waking the threads.
constexpr int64_t kParallelMin = int64_t(1) << 15;

// Labels (or column indices) in [0, classes): a value check the dispatch leaves to the CPU, which can read them.
void require_in_range(const char* op, const char* what, const Tensor& idx, int64_t classes);

// Channel-last view: rows = numel / C, C = last axis.
struct ChannelView {
  int64_t rows;
  int64_t channels;
};
inline ChannelView channel_view(const Tensor& x) {
  int64_t c = x.dim(-1);
  return {c == 0 ? 0 : x.numel() / c, c};
}

// f(act_c) with act_c() the activation as a compile-time constant, so a loop calling math::activation_derivative
// has no branch on it and vectorises.
template <class F>
void with_act(Act act, F&& f) {
  switch (act) {
    case Act::relu: return f(std::integral_constant<Act, Act::relu>{});
    case Act::softplus: return f(std::integral_constant<Act, Act::softplus>{});
    case Act::abs: return f(std::integral_constant<Act, Act::abs>{});
    case Act::identity: return f(std::integral_constant<Act, Act::identity>{});
  }
}

// How the CPU convolutions are computed: `automatic` picks per layer (engine/cpu/conv.cpp); tests and benchmarks
// force one to compare them.
enum class ConvAlgorithm { automatic, im2col, direct };
void set_conv_algorithm(ConvAlgorithm algorithm);

}  // namespace llr::cpu
