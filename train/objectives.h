// Training objectives: natural, PGD-k adversarial training (Madry et al.), TRADES (Zhang et al.) and LLR (Qin et al.).
// Each builds, for one batch, the recorded computation whose reverse pass gives the objective's exact gradient with
// the perturbation held constant (objective_gradients).
//
// LLR (DESIGN.md): L = (1/N) sum_i [w l_i(x) + lambda |g_i| + mu |d_i|] with d_i = <delta_i, [grad_X S]_i>,
// g_i = l_i(x + delta) - l_i(x) - d_i. With the signs fixed it equals
// (1/N) sum_i [(w - lambda s_i) l_i(x) + lambda s_i l_i(x + delta)] + (1/N) D_v S, v = (mu sign(d_i) - lambda s_i)
// delta_i; D_v S comes from one tangent pass over the recorded nominal computation (exact), or from
// (S(x + h v) - S(x - h v)) / 2h (the finite-difference variant). Perturbed and search passes normalise with the
// nominal pass's batch statistics. The perturbed pass is reverse-differentiated as soon as it is built (with the
// nominal statistics as leaves, whose cotangents join the final pass), so its activations are freed before the
// tangent pass allocates its own.
#pragma once

#include <map>
#include <string>

#include "engine/backend.h"
#include "nets/model.h"

namespace llr {

enum class Method { natural, pgd, trades, llr };
enum class LlrGrad { exact, fd };

struct ObjectiveConfig {
  Method method = Method::natural;
  double eps = 8.0 / 255.0;
  int64_t eps_warmup_steps = 0;  // eps grows linearly from 0 over these steps (-1: 500 for LLR, else 0)
  // PGD and TRADES attacks.
  int pgd_steps = 10;
  double pgd_alpha = 2.0 / 255.0;
  nets::BnMode attack_bn = nets::BnMode::eval;  // eval (running averages) or train (the batch's own statistics)
  double trades_beta = 6.0;
  // LLR.
  int llr_steps = 10;
  PerturbationUpdate llr_search = PerturbationUpdate::adam;
  double llr_step_size = 0.1;  // Adam learning rate (sign steps: the step size)
  double lambda = 4.0, mu = 1.2, nominal_weight = 2.0;
  LlrGrad llr_grad = LlrGrad::exact;
  double fd_step = 1e-2;  // h of the finite-difference variant (relative to v)

  static Method parse_method(const std::string& s);
};

struct ObjectiveResult {
  Tensor loss;  // the objective's value (a one-element tensor, for logging; not for differentiation)
  // The gradient is that of sum_k <cotangents[k], outputs[k]> (recorded on the tape) plus partial_grads (gradients
  // of parts already reverse-differentiated and freed, in model.parameters() order); objective_gradients() adds
  // them up.
  std::vector<Tensor> outputs, cotangents, partial_grads;
  Tensor delta;                           // the perturbation used (undefined for natural training)
  Tensor logits_for_accuracy;             // clean logits (natural, LLR) or adversarial logits (PGD, TRADES)
  // Batch means on the device (one-element tensors, read only when logging): llr_gamma (mean |g_i|), llr_abs_d,
  // adv_accuracy (PGD, TRADES).
  std::map<std::string, Tensor> metrics;
};

struct ObjectiveOptions {
  DType compute = DType::f32;
  uint64_t seed = 0;
  uint64_t step = 0;
  bool update_running = true;     // the nominal (or, for PGD, adversarial) pass updates batch-norm running averages
  const Tensor* fixed_delta = nullptr;  // skip the attack or search and use this perturbation (gradient checks)
};

// x: images in [0, 1] (f32 or f64, NHWC), y: labels. Leaves the recorded graph on the tape for the caller's
// reverse pass (objective_gradients).
ObjectiveResult build_objective(nets::Model& model, const Tensor& x, const Tensor& y, const ObjectiveConfig& cfg,
                                const ObjectiveOptions& opt);

// The objective's gradient with respect to params (= model.parameters()): one reverse pass over what r recorded,
// plus the parts already reduced to partial gradients.
std::vector<Tensor> objective_gradients(const ObjectiveResult& r, const std::vector<Tensor>& params);

// A one-element tensor's value on the host (synchronises with the device).
double host_value(const Tensor& t);

// The objective's value computed directly from its definition (no surrogate): for LLR, (1/N) sum_i [w l_i +
// lambda |g_i| + mu |d_i|] with d_i from an input-gradient pass. Used by the gradient checks.
double objective_value(nets::Model& model, const Tensor& x, const Tensor& y, const Tensor& delta,
                       const ObjectiveConfig& cfg, DType compute);

}  // namespace llr
