// Gradient check of a whole training objective: the gradient with respect to every parameter (perturbation held
// fixed) from one reverse pass, against central finite differences of the objective's value computed from its
// definition, in f64 on the CPU. Behind `llrtrain gradcheck` and the objective tests.
#pragma once

#include <string>

#include "train/methods/method.h"

namespace llr {

struct ObjectiveCheckOptions {
  std::string model = "wrn-10-1";
  Act act = Act::softplus;
  int64_t batch = 4;
  int64_t image = 8;               // images are image x image x 3
  uint64_t seed = 1;
  int64_t samples_per_tensor = 6;  // parameters checked per tensor (every tensor of the model is sampled)
  double step = 1e-7;              // finite-difference step on the parameters
  double kink_tolerance = 1e-5;    // one-sided differences further apart than this (relative) mark a kink
  std::string dump;                // safetensors file for tools/reference/objective_reference.py
};

struct ObjectiveCheckReport {
  double max_rel_error = 0;
  std::string worst;
  int64_t checked = 0, skipped_kinks = 0, tensors = 0;
  double objective = 0;
};

// method's gradient at the perturbation its own attack or search chooses (then held fixed), robust.eps the radius.
ObjectiveCheckReport check_objective_gradient(const Method& method, const RobustSettings& robust,
                                              const ObjectiveCheckOptions& opt);

}  // namespace llr
