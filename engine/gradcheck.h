// Finite-difference gradient checker: central differences in f64, relative error against max(|a|, |b|, 1).
// Kink-aware: where the one-sided differences on the two sides disagree (the step straddles a ReLU/abs kink or a
// max tie), the element is skipped and counted instead of compared.
//
// Three checks for a function f(inputs) -> output:
//   check_vjp: <u, f>'s gradient from one reverse pass vs finite differences, for a random cotangent u;
//   check_jvp: the forward-mode tangent of f along random tangents vs (f(x + h t) - f(x - h t)) / 2h;
//   check_jvp_vjp: check_vjp applied to the jvp map (x, t) -> f'(x) t, i.e. the reverse pass through the recorded
//                  tangent computation (reverse-over-forward, what the exact LLR gradient relies on).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace llr::gradcheck {

using Function = std::function<Tensor(const std::vector<Tensor>&)>;

struct Options {
  double step = 1e-6;
  double kink_tolerance = 1e-3;  // relative gap between one-sided differences that marks a kink
  uint64_t seed = 1;
  int64_t max_elements_per_input = -1;  // -1: every element; else a seeded random sample
};

struct Report {
  double max_rel_error = 0.0;
  std::string worst;  // where the worst element is, with both values
  int64_t checked = 0;
  int64_t skipped_kinks = 0;
  bool passed(double tolerance) const { return checked > 0 && max_rel_error <= tolerance; }
};

// differentiable[i]: whether input i is perturbed and checked (labels and other constants are not).
Report check_vjp(const Function& f, const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable,
                 const Options& options = {});
Report check_jvp(const Function& f, const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable,
                 const Options& options = {});
Report check_jvp_vjp(const Function& f, const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable,
                     const Options& options = {});

double relative_error(double a, double b);

}  // namespace llr::gradcheck
