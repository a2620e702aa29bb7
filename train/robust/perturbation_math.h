// Per-element math of the perturbation kernels (robust_kernels.def), shared by the CPU loops and the CUDA kernels: the
// ascent direction of the LLR search or a PGD attack, the Adam or sign update, the projection onto the eps-ball and
// the [0, 1] box, APGD's step and per-example bookkeeping, the ranking of classes by logit, GradAlign's cosine and its
// derivative, and ELLE's random triplets and coefficients.
#pragma once

#include <cmath>

#include "engine/host_device.h"
#include "engine/rng.h"

namespace llr {

enum class PerturbationUpdate : int { sign = 0, adam = 1 };
// What a step projects onto: the eps-ball and the [0, 1] box, or the box only (N-FGSM, whose start and step may
// leave the ball).
enum class Projection : int { ball_and_box = 0, box = 1 };

namespace perturbation_math {

// Ascent direction for one element: the gradient of |g_i| for LLR (s_i (dl_p/dx - gx)), or of the attack loss for
// PGD (no gx): grad_weighted already carries s_i.
template <class T>
LLR_HD T direction(T grad_weighted, T gx, T sign_g) {
  return grad_weighted - sign_g * gx;
}

// +1, -1 or 0 (also for NaN), from converted comparisons rather than branches: CPU loops over it vectorise.
template <class T>
LLR_HD T sign_of(T v) {
  return T(v > T(0)) - T(v < T(0));
}

// Adam's bias correction 1 - beta^t after t steps, in f64 on either device so the CPU and the GPU (whose pow differ
// in the last bits) agree in f32.
template <class T>
LLR_HD T adam_bias_correction(T beta, double t) {
  return T(1.0 - pow(double(beta), t));
}

// Updates delta in place (ascent) and returns it projected: |delta| <= eps (when `ball`) and 0 <= x + delta <= 1.
template <class T>
LLR_HD T step(T delta, T x, T dir, T* m, T* v, T step_size, T eps, bool ball, bool adam, T beta1, T beta2,
              T adam_eps, T bias1, T bias2) {
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
  if (ball) d = d > eps ? eps : (d < -eps ? -eps : d);
  T xp = x + d;
  xp = xp > T(1) ? T(1) : (xp < T(0) ? T(0) : xp);
  return xp - x;
}

// A length on the eps scale as a kernel reads it (robust::EpsLength): `value`, or `scale` times the radius the device
// holds at `eps` (when not null), read where the kernel runs.
struct DeviceLength {
  double value = 0, scale = 0;
  const double* eps = nullptr;
  LLR_HD double now() const { return eps ? scale * *eps : value; }
};

// Where a draw's counters start: `base`, plus `per_step` times the step count the device holds at `step` (when not
// null), read where the kernel runs (robust::RandomCounter).
LLR_HD uint64_t counter_at(uint64_t base, uint64_t per_step, const double* step) {
  return step ? base + per_step * static_cast<uint64_t>(*step) : base;
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

// APGD bookkeeping of one example after evaluating its loss (robust::apgd_track); returns 1 when the loss improved
// on the best so far.
template <class T>
LLR_HD T apgd_track(T loss, T* best, T* last, T* successes, bool first) {
  if (!first && loss > *last) *successes += T(1);
  *last = loss;
  if (!(loss > *best)) return T(0);
  *best = loss;
  return T(1);
}

// One example at an APGD checkpoint (robust::apgd_checkpoint); returns 1 when eta was halved (a restart from the best
// point).
template <class T>
LLR_HD T apgd_checkpoint(T* successes, T* eta, T* eta_at_checkpoint, T* best_at_checkpoint, T best, T threshold) {
  bool few = *successes <= threshold;  // the reference halves at equality too (12 of 16 steps, 100-step runs)
  bool stalled = *eta_at_checkpoint == *eta && *best_at_checkpoint == best;
  T restart = T(0);
  if (few || stalled) {
    *eta = *eta / T(2);
    restart = T(1);
  }
  *successes = T(0);
  *eta_at_checkpoint = *eta;
  *best_at_checkpoint = best;
  return restart;
}

// The class of 1-based rank `rank` by logit z(j) (largest first, ties to the lower class) among the k classes other
// than `exclude` (-1: none). Logits that cannot be ordered (NaN) give the first class that is not excluded.
template <class Get>
LLR_HD int32_t class_at_rank(Get z, int64_t k, int64_t exclude, int rank) {
  for (int64_t j = 0; j < k; ++j) {
    if (j == exclude) continue;
    auto zj = z(j);
    int r = 1;
    for (int64_t i = 0; i < k; ++i)
      if (i != exclude && i != j && (z(i) > zj || (z(i) == zj && i < j))) ++r;
    if (r == rank) return static_cast<int32_t>(j);
  }
  return exclude == 0 ? 1 : 0;
}

// Initial perturbation of element i: uniform in [-eps, eps], or normal_scale * N(0, 1) (Box-Muller).
template <class T>
LLR_HD T initial(uint64_t seed, uint64_t index, T eps, T normal_scale) {
  double u1 = rng_math::uniform01(seed, 2 * index), u2 = rng_math::uniform01(seed, 2 * index + 1);
  if (normal_scale > T(0))
    return normal_scale * T(sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
  return eps * T(2.0 * u1 - 1.0);
}

// GradAlign's cosine of two per-example gradients a and b: <a, b> / (n_a n_b), each norm kept at least `guard`
// (PyTorch's cosine_similarity), so a vanishing gradient gives a cosine of 0 instead of a division by zero.
template <class T>
LLR_HD T guarded_norm(T squared_norm, T guard) {
  T n = sqrt(squared_norm);
  return n > guard ? n : guard;
}

// d cos / d a_j = b_j / (n_a n_b) - cos a_j / n_a^2 while |a| > guard; below the guard n_a is the constant guard and
// only the first term remains.
template <class T>
LLR_HD T cosine_derivative(T a, T b, T n_a, T n_b, T cos, bool a_above_guard) {
  T d = b / (n_a * n_b);
  return a_above_guard ? d - cos * a / (n_a * n_a) : d;
}

// ELLE's random triplet (Abad Rocamora et al. 2024) for element j (of `numel` in the batch) of example i: x_a and x_b
// uniform in the eps-ball around x (projected onto [0, 1]) from draws counter + j and counter + numel + j, and the
// interpolation weight of example i from draw counter + 2 numel + i.
template <class T>
LLR_HD T triplet_point(uint64_t seed, uint64_t counter, uint64_t numel, uint64_t j, T x, T eps, int which, T alpha) {
  T a = x + project<T>(initial<T>(seed, counter + j, eps, T(0)), x, eps);
  if (which == 0) return a;
  T b = x + project<T>(initial<T>(seed, counter + numel + j, eps, T(0)), x, eps);
  if (which == 1) return b;
  return alpha * a + (T(1) - alpha) * b;
}

template <class T>
LLR_HD T triplet_weight(uint64_t seed, uint64_t counter, uint64_t numel, uint64_t i) {
  return T(rng_math::uniform01(seed, 2 * (counter + 2 * numel + i)));
}

// ELLE's linearity residual r = l_c - alpha l_a - (1 - alpha) l_b of one example, and the weights of its three losses
// in the gradient of lambda/N sum r^2 with r's value held: (2 lambda / N) r (-alpha, -(1 - alpha), 1).
template <class T>
LLR_HD T triplet_residual(T l_a, T l_b, T l_c, T alpha) {
  return l_c - alpha * l_a - (T(1) - alpha) * l_b;
}

// which: 0 for l_a, 1 for l_b, 2 for l_c; scale = 2 lambda / N.
template <class T>
LLR_HD T triplet_loss_weight(T residual, T alpha, int which, T scale) {
  T w = which == 0 ? -alpha : (which == 1 ? alpha - T(1) : T(1));
  return scale * residual * w;
}

}  // namespace perturbation_math
}  // namespace llr
