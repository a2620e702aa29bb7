// Shared argument checks for the CPU backend.
#pragma once

#include <initializer_list>

#include "engine/backend.h"

namespace llr::cpu {

// Elementwise loops longer than this run on all cores (OpenMP); shorter ones are not worth waking the threads.
constexpr int64_t kParallelMin = int64_t(1) << 15;

// Every tensor is defined, on the CPU, and of one floating dtype.
inline void require_cpu_floating(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    LLR_CHECK(t->defined(), op, ": undefined tensor argument");
    LLR_CHECK(t->device() == Device::cpu, op, ": ", t->describe(),
              " is on the GPU but this build has no CUDA backend for it");
    LLR_CHECK(is_floating(t->dtype()), op, ": expected a floating tensor, got ", t->describe());
    if (!first) first = t;
    LLR_CHECK(t->dtype() == first->dtype(), op, ": dtype mismatch, ", first->describe(), " vs ", t->describe());
  }
}

inline void require_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  LLR_CHECK(a.shape() == b.shape(), op, ": shape mismatch, ", a.describe(), " vs ", b.describe());
}

// Labels: i32 (N) on the CPU, each in [0, classes).
void require_labels(const char* op, const Tensor& labels, int64_t n, int64_t classes);

// Channel-last view: rows = numel / C, C = last axis.
struct ChannelView {
  int64_t rows;
  int64_t channels;
};
inline ChannelView channel_view(const char* op, const Tensor& x) {
  LLR_CHECK(x.rank() >= 1, op, ": needs at least one axis, got ", x.describe());
  int64_t c = x.dim(-1);
  return {c == 0 ? 0 : x.numel() / c, c};
}

// Checks that t is a vector of length c (a per-channel parameter or statistic).
inline void require_channel_vector(const char* op, const char* what, const Tensor& t, int64_t c) {
  LLR_CHECK(t.rank() == 1 && t.dim(0) == c, op, ": ", what, " must have shape [", c, "], got ", t.describe());
}

}  // namespace llr::cpu
