// Per-element math of the fused perturbation step shared by the CPU loop and the CUDA kernel: the ascent direction of
// the LLR search or a PGD attack, the Adam or sign update, and the projection onto the eps-ball and the [0, 1] box.
#pragma once

#include <cmath>

#include "engine/host_device.h"
#include "engine/rng.h"

namespace llr {

enum class PerturbationUpdate : int { sign = 0, adam = 1 };

struct PerturbationParams {
  PerturbationUpdate update = PerturbationUpdate::sign;
  double step_size = 0;  // sign: alpha; adam: learning rate
  double eps = 0;        // l_inf radius
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
  int64_t t = 1;  // Adam step count (1-based) for bias correction
};

namespace perturbation_math {

// Ascent direction for one element: the gradient of |g_i| for LLR (s_i (dl_p/dx - gx)), or of the attack loss for
// PGD (no gx): grad_weighted already carries s_i.
template <class T>
LLR_HD T direction(T grad_weighted, T gx, T sign_g) {
  return grad_weighted - sign_g * gx;
}

template <class T>
LLR_HD T sign_of(T v) {
  return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0));
}

// Updates delta in place (ascent) and returns it projected: |delta| <= eps and 0 <= x + delta <= 1.
template <class T>
LLR_HD T step(T delta, T x, T dir, T* m, T* v, T step_size, T eps, bool adam, T beta1, T beta2, T adam_eps,
              T bias1, T bias2) {
  T upd;
  if (adam) {
    *m = beta1 * *m + (T(1) - beta1) * dir;
    *v = beta2 * *v + (T(1) - beta2) * dir * dir;
    T mh = *m / bias1, vh = *v / bias2;
    upd = step_size * mh / (sqrt(vh) + adam_eps);
  } else {
    upd = step_size * sign_of(dir);
  }
  T d = delta + upd;
  d = d > eps ? eps : (d < -eps ? -eps : d);
  T xp = x + d;
  xp = xp > T(1) ? T(1) : (xp < T(0) ? T(0) : xp);
  return xp - x;
}

// Projection of an initial perturbation (uniform in the ball) onto the ball and the box.
template <class T>
LLR_HD T project(T delta, T x, T eps) {
  T d = delta > eps ? eps : (delta < -eps ? -eps : delta);
  T xp = x + d;
  xp = xp > T(1) ? T(1) : (xp < T(0) ? T(0) : xp);
  return xp - x;
}

// APGD's momentum step for one element (see Backend::apgd_step).
template <class T>
LLR_HD T apgd(T delta, T delta_prev, T x, T grad, T eta, T alpha, T eps) {
  T z = project(delta + eta * sign_of(grad), x, eps);
  return project(delta + alpha * (z - delta) + (T(1) - alpha) * (delta - delta_prev), x, eps);
}

// Initial perturbation of element i: uniform in [-eps, eps], or normal_scale * N(0, 1) (Box-Muller).
template <class T>
LLR_HD T initial(uint64_t seed, uint64_t index, T eps, T normal_scale) {
  double u1 = rng_math::uniform01(seed, 2 * index), u2 = rng_math::uniform01(seed, 2 * index + 1);
  if (normal_scale > T(0))
    return normal_scale * T(sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
  return eps * T(2.0 * u1 - 1.0);
}

}  // namespace perturbation_math
}  // namespace llr
