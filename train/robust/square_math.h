// Per-element and per-example math of the Square attack (Andriushchenko et al. 2020, l_inf), shared by the CPU loops
// (cpu_robust_kernels.cpp) and the CUDA kernels (kernels/robust.cu): the vertical-stripe start, the random square
// of +-eps per channel that each query tries, and the acceptance of a query by the margin loss. Random draws are
// counter-based per (example, query), so an example's queries do not depend on which other examples are still
// being attacked.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/elementwise_math.h"
#include "engine/host_device.h"
#include "engine/rng.h"
#include "train/robust/perturbation_math.h"

namespace llr::square_math {

// The fraction of the image a square covers at query i (0-based) of a run, as AutoAttack schedules it for 5,000
// queries (not rescaled to the budget): p_init up to query 10, then halved after queries 10, 50, 200, 500, 1000,
// 2000, 4000, 6000 and 8000.
inline double fraction(int query, double p_init) {
  static const int halvings_after[] = {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000};
  double p = p_init;
  for (int at : halvings_after)
    if (query > at) p /= 2;
  return p;
}

// The square's side for an h x w image: round(sqrt(p h w)) (halves to even, as Python's round), at least 1, at most
// min(h, w).
inline int64_t side(double p, int64_t h, int64_t w) {
  int64_t s = static_cast<int64_t>(std::nearbyint(std::sqrt(p * double(h) * double(w))));
  s = s < 1 ? 1 : s;
  int64_t m = h < w ? h : w;
  return s > m ? m : s;
}

// Where element i of an NHWC batch [n, h, w, c] lies.
struct Place {
  int64_t example, row, column, channel;
};
LLR_HD Place place_of(int64_t i, int64_t h, int64_t w, int64_t c) {
  int64_t per_example = h * w * c;
  int64_t in = i % per_example;
  return {i / per_example, in / (w * c), (in / c) % w, in % c};
}

LLR_HD double sign_from(double u) { return u < 0.5 ? -1.0 : 1.0; }

// The start: each example, column and channel gets +-eps (vertical stripes), projected into the box. Example `id`
// (its row in the batch the attack was given) draws from (seed, counter + (id w + column) c + channel).
template <class T>
LLR_HD T stripe_start(T x, int64_t id, const Place& at, int64_t w, int64_t c, T eps, uint64_t seed,
                      uint64_t counter) {
  double u = rng_math::uniform01(seed, counter + static_cast<uint64_t>((id * w + at.column) * c + at.channel));
  return perturbation_math::project<T>(eps * T(sign_from(u)), x, eps);
}

// The first counter of query `query` of example `id` among `examples`: after the start's draws, 2 + c per query
// and example (the square's corner, then one sign per channel).
LLR_HD uint64_t query_counter(uint64_t counter, int64_t query, int64_t id, int64_t examples, int64_t w, int64_t c) {
  return counter + static_cast<uint64_t>(examples * w * c) +
         static_cast<uint64_t>((query * examples + id) * (2 + c));
}

// The square's corner along an axis of length `length`: uniform in [0, length - side) as the reference draws it
// (which never places it at the last offset), 0 when the square spans the axis.
LLR_HD int64_t corner(double u, int64_t length, int64_t side) {
  return length > side ? static_cast<int64_t>(u * double(length - side)) : 0;
}

// A query's perturbation of one element: inside the example's square, the best perturbation plus 2 eps times the
// channel's sign, projected onto the ball and the box (so x +- eps there); the best perturbation elsewhere.
template <class T>
LLR_HD T proposal(T best, T x, const Place& at, int64_t id, int64_t query, int64_t examples, int64_t h, int64_t w,
                  int64_t c, int64_t side, T eps, uint64_t seed, uint64_t counter) {
  uint64_t base = query_counter(counter, query, id, examples, w, c);
  int64_t top = corner(rng_math::uniform01(seed, base), h, side);
  int64_t left = corner(rng_math::uniform01(seed, base + 1), w, side);
  if (at.row < top || at.row >= top + side || at.column < left || at.column >= left + side) return best;
  T s = T(sign_from(rng_math::uniform01(seed, base + 2 + static_cast<uint64_t>(at.channel))));
  return perturbation_math::project<T>(best + T(2) * eps * s, x, eps);
}

// One example after a query, given its logits z(j) (k classes) and label y: while the example is robust, the query
// is accepted when it lowers the margin z_y - max_{j != y} z_j below the best so far or misclassifies the example
// (which then stops being robust and keeps this perturbation). Returns 1 when accepted.
template <class T, class Get>
LLR_HD T accept(Get z, int64_t k, int64_t y, T* best_margin, T* robust) {
  if (*robust == T(0)) return T(0);
  T other = T(0);
  bool any = false;
  for (int64_t j = 0; j < k; ++j)
    if (j != y && (!any || T(z(j)) > other)) {
      other = T(z(j));
      any = true;
    }
  T margin = T(z(y)) - other;
  bool wrong = math::row_argmax<T>(z, k) != y;
  if (!(margin < *best_margin) && !wrong) return T(0);
  *best_margin = margin;
  if (wrong) *robust = T(0);
  return T(1);
}

}  // namespace llr::square_math
