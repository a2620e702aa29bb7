// The op table: one small struct per op (ggml style). Each case builds its inputs from a seed and maps them to one
// output tensor; the gradient tests run finite-difference checks on every case, the f32 test compares f32 with f64.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"

namespace llr::test {

struct OpCase {
  std::string name;
  std::function<std::vector<Tensor>(Generator&)> make_inputs;
  std::vector<bool> differentiable;
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  bool is_tangent_op = false;  // vjp only: a tangent op (first-order tangents only) or kl_div
};

const std::vector<OpCase>& op_cases();

}  // namespace llr::test
