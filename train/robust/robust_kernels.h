// The perturbation kernels' interface (robust_kernels.def): one implementation per device, cpu_robust_kernels.cpp
// for the CPU and kernels/robust.cu for CUDA (registered by llr::cuda::init()). Call sites write
// robust::perturbation_step(...); the picking tensor's device chooses the implementation after the checks.
#pragma once

#include "engine/dispatch.h"
#include "engine/profile.h"
#include "engine/tensor.h"
#include "train/robust/perturbation_math.h"

namespace llr {

// Where a random draw's counters start (element i draws from (seed, counter + i)): `base`, plus `per_step` times the
// step count the device holds in `step` (one f64 element) when that is defined. The kernel reads the step where it
// runs, so a recorded training step (train/step.h) draws new numbers at each replay, as the eager steps do. A plain
// number converts to a counter without a device step.
struct RandomCounter {
  RandomCounter(uint64_t b = 0) : base(b) {}  // NOLINT(google-explicit-constructor): a plain counter
  RandomCounter(uint64_t b, uint64_t per, Tensor device_step) : base(b), per_step(per), step(std::move(device_step)) {}
  RandomCounter plus(uint64_t offset) const { return {base + offset, per_step, step}; }

  uint64_t base = 0, per_step = 0;
  Tensor step;
};

// A length on the eps scale (a radius, a step size) as the kernels take it: `scale` times a radius, the host's
// `radius` or, with `eps` defined (one f64 element on the device: a training step's radius, written there before each
// replay of a recorded step, so that its replays follow the eps warm-up), the radius the device holds, read where the
// kernel runs. Both sides form the same product of two doubles, scale * radius, so an eager step and a replayed one
// compute alike; value() is the host's (its checks read it). A plain number v converts to v times a radius of 1.
struct EpsLength {
  EpsLength(double v = 0) : scale(v) {}  // NOLINT(google-explicit-constructor): a plain length
  EpsLength(double s, double r, Tensor device_eps) : scale(s), radius(r), eps(std::move(device_eps)) {}
  double value() const { return scale * radius; }
  // k times this length: (k scale) times the same radius.
  EpsLength times(double k) const { return {k * scale, radius, eps}; }

  double scale = 0, radius = 1;
  Tensor eps;
};

// The fused perturbation step's settings (robust::perturbation_step).
struct PerturbationParams {
  PerturbationUpdate update = PerturbationUpdate::sign;
  EpsLength step_size;  // sign: alpha; adam: learning rate
  EpsLength eps;        // l_inf radius
  Projection projection = Projection::ball_and_box;
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
};

// LLR per-example coefficients (robust::llr_coefficients).
struct LlrCoefficients {
  Tensor nominal_weight;    // w_nom - lambda sign(g_i): weight of l_i(x)
  Tensor perturbed_weight;  // lambda sign(g_i): weight of l_i(x + delta)
  Tensor tangent_weight;    // c_i = mu sign(d_i) - lambda sign(g_i): v = c_i delta_i
  Tensor abs_g;             // |g_i|, the local-linearity estimate
  Tensor sign_g;            // sign(g_i)
};

// GradAlign's per-example cosine and its derivatives (robust::gradient_alignment).
struct GradientAlignment {
  Tensor cos;         // [N]
  Tensor d_cos_d_g1;  // like g1
  Tensor d_cos_d_g2;  // like g2
};

// ELLE's random points (robust::elle_triplets).
struct ElleTriplets {
  Tensor points;  // [3N, ...]: x_a, then x_b, then x_c
  Tensor labels;  // [3N] i32
  Tensor alpha;   // [N]
};

// ELLE's residuals and loss weights (robust::elle_coefficients).
struct ElleCoefficients {
  Tensor residual;     // [N]: l_c - alpha l_a - (1 - alpha) l_b
  Tensor loss_weight;  // [3N]: the cotangent of the triplet batch's losses
};

// Their tensors (a CPU replay writes them back, engine/dispatch.h) and bytes (the profile).
inline std::vector<Tensor> tensors_of(const LlrCoefficients& c) {
  return {c.nominal_weight, c.perturbed_weight, c.tangent_weight, c.abs_g, c.sign_g};
}
inline std::vector<Tensor> tensors_of(const GradientAlignment& a) { return {a.cos, a.d_cos_d_g1, a.d_cos_d_g2}; }
inline std::vector<Tensor> tensors_of(const ElleTriplets& t) { return {t.points, t.labels, t.alpha}; }
inline std::vector<Tensor> tensors_of(const ElleCoefficients& c) { return {c.residual, c.loss_weight}; }
inline double bytes_of(const LlrCoefficients& c) { return bytes_of(tensors_of(c)); }
inline double bytes_of(const GradientAlignment& a) { return bytes_of(tensors_of(a)); }
inline double bytes_of(const ElleTriplets& t) { return bytes_of(tensors_of(t)); }
inline double bytes_of(const ElleCoefficients& c) { return bytes_of(tensors_of(c)); }

class RobustKernels {
 public:
  virtual ~RobustKernels() = default;
#define LLR_KERNEL LLR_DECLARE_PURE
#include "train/robust/robust_kernels.def"
#undef LLR_KERNEL
};

RobustKernels& robust_kernels_for(Device device);

namespace robust_check {
#define LLR_KERNEL LLR_DECLARE_CHECK
#include "train/robust/robust_kernels.def"
#undef LLR_KERNEL
}  // namespace robust_check

namespace robust {
#define LLR_KERNEL(ret, name, params, args, dev)                          \
  inline ret name params {                                                \
    ::llr::profile::Scope llr_op_scope_(#name, ::llr::profile::Kind::op, dev.device()); \
    ::llr::dispatch::check_devices(#name, dev.device(), LLR_UNPACK args); \
    ::llr::robust_check::name args;                                       \
    return ::llr::dispatch::measured<ret>(                                \
        llr_op_scope_, [&]() -> ret { return ::llr::robust_kernels_for(dev.device()).name args; }, LLR_UNPACK args); \
  }
#include "train/robust/robust_kernels.def"
#undef LLR_KERNEL
}  // namespace robust

}  // namespace llr
