// Evaluation attacks (l_inf, [0, 1] pixel space, batch norm in evaluation mode) and the local-linearity measure.
// Every attack returns, per example, whether it is still classified correctly after the attack, and the
// perturbation that broke it (or the last one tried); examples an attack has broken are dropped from its later
// iterations, restarts and targets.
//
//   pgd-ce:STEPSxRESTARTS   PGD on cross-entropy, sign steps of eps/4, random starts (x0: one run from delta = 0)
//   pgd-margin:STEPS        PGD on the margin loss with Adam, lr 0.1 (the official LLR evaluation)
//   mt:STEPS                MultiTargeted (Gowal et al. 2019): PGD on z_t - z_y towards each other class in turn
//   apgd-ce[:STEPS]         APGD on cross-entropy (Croce & Hein 2020): step-size halving at checkpoints, momentum
//   apgd-t[:STEPS]          APGD-T on the targeted DLR loss, 9 target classes
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "nets/model.h"

namespace llr {

struct AttackSpec {
  std::string kind;  // pgd-ce, pgd-margin, mt, apgd-ce, apgd-t
  int steps = 0;
  int restarts = 1;
  std::string label;  // as given on the command line
  static std::vector<AttackSpec> parse_list(const std::string& s);
};

struct AttackResult {
  std::vector<char> robust;  // per example: still classified correctly
  Tensor delta;              // [N, H, W, C] (f32)
};

// x: images [N, H, W, C] (f32), y: labels; only examples with correct[i] are attacked (others count as broken).
AttackResult run_attack(nets::Model& model, const Tensor& x, const Tensor& y, const std::vector<char>& correct,
                        const AttackSpec& spec, double eps, uint64_t seed, DType compute);

// gamma(eps, x_i) = max over the eps-ball (and the [0, 1] box) of |l_i(x_i + delta) - l_i(x_i) - <delta,
// grad l_i(x_i)>|, estimated by `steps` Adam steps (lr 0.1) from `restarts` random starts, batch norm in evaluation
// mode. loss(x) gives per-example losses [N] (cross-entropy of the model for llrtrain eval).
using PerExampleLoss = std::function<Tensor(const Tensor&)>;
std::vector<double> measure_gamma(const PerExampleLoss& loss, const Tensor& x, double eps, int steps, int restarts,
                                  uint64_t seed);
PerExampleLoss model_cross_entropy(nets::Model& model, const Tensor& y, DType compute);

// Per example: model's prediction equals the label (batch norm in evaluation mode).
std::vector<char> correctly_classified(nets::Model& model, const Tensor& x, const Tensor& y, DType compute);

}  // namespace llr
