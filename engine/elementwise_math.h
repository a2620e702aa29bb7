// Per-element formulas shared by the CPU loops and the CUDA kernels (LLR_HD = __host__ __device__ under nvcc).
// Keeping them in one place means the CPU tests check the arithmetic the GPU runs.
#pragma once

#include <cmath>

#include "engine/host_device.h"

namespace llr {

enum class Act : int { relu = 0, softplus = 1, abs = 2, identity = 3 };

namespace math {

// 1 / (1 + e^-a) for a >= 0, e^a / (1 + e^a) below (never overflows), both from one exp(-|a|) and a select instead of
// an if/else on the sign. `e` keeps the type exp returns (double on the host for f32, whose C library exp is double;
// float on the GPU), so each branch rounds exactly as the if/else did: the first in that type, the second after
// rounding e to T.
template <class T>
LLR_HD T sigmoid(T a) {
  auto e = exp(-fabs(a));
  return a >= T(0) ? T(T(1) / (T(1) + e)) : T(T(e) / (T(1) + T(e)));
}

// log(1 + e^a) without overflow.
template <class T>
LLR_HD T softplus(T a) {
  return (a > T(0) ? a : T(0)) + log1p(exp(-fabs(a)));
}

// The order-th derivative of the activation at a (order 0 = the activation). ReLU and abs are treated as smooth
// away from 0 (their second derivative is 0); softplus has phi' = s, phi'' = s(1-s), phi''' = s(1-s)(1-2s).
template <class T>
LLR_HD T activation_derivative(Act act, int order, T a) {
  switch (act) {
    case Act::relu:
      if (order == 0) return a > T(0) ? a : T(0);
      if (order == 1) return T(a > T(0));  // a converted comparison, not a branch: CPU loops vectorise
      return T(0);
    case Act::abs:
      if (order == 0) return fabs(a);
      if (order == 1) return T(a > T(0)) - T(a < T(0));
      return T(0);
    case Act::identity:
      if (order == 0) return a;
      return order == 1 ? T(1) : T(0);
    case Act::softplus: {
      if (order == 0) return softplus(a);
      T s = sigmoid(a);
      if (order == 1) return s;
      if (order == 2) return s * (T(1) - s);
      return s * (T(1) - s) * (T(1) - T(2) * s);
    }
  }
  return T(0);
}

// Whether the activation's second derivative is ever nonzero (softplus); ReLU, abs and identity are piecewise linear.
LLR_HD bool has_second_derivative(Act act) { return act == Act::softplus; }

// Batch-norm normalisation y = scale (x - mean) r + shift with r = 1/sqrt(var + eps).
// On the GPU, where the kernels compute it for every element, the device's reciprocal square root (within 2 ulp in
// f32, 1 in f64) instead of a correctly rounded division and square root (about 20 instructions more per element,
// as many as the rest of a bf16 normalisation).
template <class T>
LLR_HD T bn_inv_std(T var, T eps) {
#ifdef __CUDA_ARCH__
  return rsqrt(var + eps);
#else
  return T(1) / sqrt(var + eps);
#endif
}
template <class T>
LLR_HD T bn_normalize(T x, T mean, T inv_std, T scale, T shift) {
  return scale * (x - mean) * inv_std + shift;
}

// Tangent of the normalisation along (xdot, mean_dot, var_dot) with scale and shift fixed:
// scale r (xdot - mean_dot) - scale r^3 (x - mean) var_dot / 2.
template <class T>
LLR_HD T bn_tangent(T x, T mean, T inv_std, T scale, T xdot, T mean_dot, T var_dot) {
  return scale * inv_std * ((xdot - mean_dot) - T(0.5) * inv_std * inv_std * (x - mean) * var_dot);
}

// The tangent of phi(batch norm) along (xdot, mean_dot, var_dot, scale_dot, shift_dot), before phi'(a): the
// normalisation's tangent plus the affine part scale_dot (x - mean) r + shift_dot.
template <class T>
LLR_HD T bn_affine_tangent(T x, T mean, T inv_std, T scale, T xdot, T mean_dot, T var_dot, T scale_dot, T shift_dot) {
  return bn_tangent(x, mean, inv_std, scale, xdot, mean_dot, var_dot) + scale_dot * (x - mean) * inv_std + shift_dot;
}

// The first index of a row's maximum; at(j) reads entry j of the row.
template <class T, class At>
LLR_HD int64_t row_argmax(At at, int64_t k) {
  int64_t best = 0;
  T best_v = at(0);
  for (int64_t j = 1; j < k; ++j) {
    T v = at(j);
    if (v > best_v) best = j, best_v = v;
  }
  return best;
}

// The flat NHWC index of the first maximum of output pixel (n, p, q) channel c of a k x k max pool, or -1 if the
// window lies entirely in the padding. at(i) reads x[i].
template <class T, class At>
LLR_HD int64_t max_pool_argmax(At at, int64_t n, int64_t p, int64_t q, int64_t c, int64_t h, int64_t w, int64_t ch,
                               int k, int stride, int pad) {
  int64_t best = -1;
  T best_v = T(0);
  for (int r = 0; r < k; ++r) {
    int64_t hh = p * stride - pad + r;
    if (hh < 0 || hh >= h) continue;
    for (int s = 0; s < k; ++s) {
      int64_t ww = q * stride - pad + s;
      if (ww < 0 || ww >= w) continue;
      int64_t i = ((n * h + hh) * w + ww) * ch + c;
      T v = at(i);
      if (best < 0 || v > best_v) best = i, best_v = v;
    }
  }
  return best;
}

}  // namespace math
}  // namespace llr
