// Learning-rate schedules over training progress (the fraction of the steps, or of a time budget, done): constant,
// piecewise constant (multiplied by `decay_factor` at each decay point), or cosine to zero; all with an optional linear
// warm-up from 0 over the first `warmup_steps` steps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"

namespace llr {

struct Schedule {
  enum class Kind { constant, piecewise, cosine };
  Kind kind = Kind::piecewise;
  double base_lr = 0.1;
  int64_t warmup_steps = 0;
  std::vector<double> decay_at;  // piecewise: fractions of progress at which the rate is multiplied by decay_factor
  double decay_factor = 0.1;

  // The rate at `step` when `progress` (in [0, 1]) of training is done.
  double lr(int64_t step, double progress) const {
    double r = base_lr;
    switch (kind) {
      case Kind::constant: break;
      case Kind::piecewise:
        for (double d : decay_at)
          if (progress >= d) r *= decay_factor;
        break;
      case Kind::cosine:
        r = base_lr * 0.5 * (1.0 + std::cos(3.14159265358979323846 * std::clamp(progress, 0.0, 1.0)));
        break;
    }
    if (step < warmup_steps) r *= double(step + 1) / double(warmup_steps);
    return r;
  }

  static Kind parse_kind(const std::string& s) {
    if (s == "constant") return Kind::constant;
    if (s == "piecewise") return Kind::piecewise;
    if (s == "cosine") return Kind::cosine;
    LLR_FAIL("unknown schedule '", s, "' (constant, piecewise or cosine)");
  }
};

}  // namespace llr
