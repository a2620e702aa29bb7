// Per-example math of FAB (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
// boundary attack", l_inf), shared by the CPU loops (cpu_robust_kernels.cpp) and the CUDA kernels (kernels/robust.cu,
// one block per example): the l_inf projection of a point onto a hyperplane within the [0, 1] box, FAB's biased step
// between the projections of the current and the original point, and its bookkeeping of the smallest adversarial
// perturbation. Each function takes `reduce` and `each`, the two ways of visiting an example's elements: the CPU
// passes plain loops, the CUDA kernel a strided loop with a block reduction that every thread of the block calls,
// so both run the same algorithm.
#pragma once

#include <cstdint>
#include <cstring>

#include "engine/host_device.h"

namespace llr::fab_math {

// What one pass over an example's elements accumulates: up to six values (each summed, or maximised over
// non-negative values: zero is the identity of both).
struct Partial {
  double v[6];
};

struct Sum {
  LLR_HD Partial operator()(Partial a, const Partial& b) const {
    for (int k = 0; k < 6; ++k) a.v[k] += b.v[k];
    return a;
  }
};
// Sums in the even slots, maxima in the odd ones.
struct SumMax {
  LLR_HD Partial operator()(Partial a, const Partial& b) const {
    for (int k = 0; k < 6; k += 2) {
      a.v[k] += b.v[k];
      a.v[k + 1] = a.v[k + 1] > b.v[k + 1] ? a.v[k + 1] : b.v[k + 1];
    }
    return a;
  }
};

// The projection moves coordinate i of point t towards the face of the box that lowers side * <w, .>, by at most
// its room there: the l_inf ball of radius lambda around t, intersected with the box, lowers side * <w, .> by
// lowering(lambda) = sum_i |w_i| min(lambda, room_i), a piecewise linear increasing function. The projection is the
// smallest lambda at which that reaches the hyperplane; the reference sorts the rooms to find it, we bisect.
template <class T>
LLR_HD T magnitude(T v) {
  return v < T(0) ? -v : v;
}

template <class T>
LLR_HD T room(T t, T w, T side) {
  return side * w < T(0) ? T(1) - t : t;
}

template <class T>
LLR_HD T moved(T t, T w, T side, T lambda) {
  if (w == T(0)) return T(0);
  T r = room(t, w, side);
  T m = lambda < r ? lambda : r;
  return side * w < T(0) ? m : -m;
}

template <class T>
struct BitsOf;
template <>
struct BitsOf<float> {
  using type = uint32_t;
};
template <>
struct BitsOf<double> {
  using type = uint64_t;
};

// Non-negative floating values order as their bit patterns do, so bisecting the patterns ends after at most 32 (f32)
// or 64 (f64) halvings, at two neighbouring values, whatever the scale of the rooms.
template <class T>
LLR_HD typename BitsOf<T>::type to_bits(T v) {
  typename BitsOf<T>::type b;
  memcpy(&b, &v, sizeof b);
  return b;
}
template <class T>
LLR_HD T from_bits(typename BitsOf<T>::type b) {
  T v;
  memcpy(&v, &b, sizeof v);
  return v;
}

// The radius lambda for one point: lowering(lambda) = need, or the largest room (the box corner, the reference's
// answer) when the box cannot reach the hyperplane.
template <class T>
struct Radius {
  using Bits = typename BitsOf<T>::type;
  double need = 0;  // how far side * <w, .> must come down
  T side = T(1);
  T widest = T(0);  // the largest room of a coordinate with w_i != 0
  Bits lo = 0, hi = 0;  // lowering(lo) <= need < lowering(hi), no room strictly between once `bracketed`
  bool bracketed = false, solved = false;
  T lambda = T(0);

  // From sum_i |w_i| room_i and the widest room.
  LLR_HD void start(double total, T widest_room) {
    widest = widest_room;
    if (!(need < total)) {
      lambda = widest;
      solved = true;
      return;
    }
    lo = 0;
    hi = to_bits(widest);
    bracketed = hi - lo <= 1;
  }
  LLR_HD bool searching() const { return !solved && !bracketed; }
  LLR_HD T mid() const { return from_bits<T>(lo + (hi - lo) / 2); }
  // After one pass at mid(): the lowering there, and how many rooms lie strictly inside (lo, mid) and (mid, hi).
  LLR_HD void narrow(double lowering_at_mid, double rooms_below, double rooms_above) {
    Bits m = lo + (hi - lo) / 2;
    bool up = lowering_at_mid <= need;
    if (up)
      lo = m;
    else
      hi = m;
    bracketed = hi - lo <= 1 || (up ? rooms_above : rooms_below) == 0;
  }
  // Within the bracket lowering is linear: saturated = sum of |w_i| room_i over rooms <= lo, slope = sum of |w_i|
  // over the others.
  LLR_HD void finish(double saturated, double slope) {
    if (solved) return;
    T l = from_bits<T>(lo), h = from_bits<T>(hi);
    T v = slope > 0 ? T((need - saturated) / slope) : l;
    lambda = v < l ? l : (v > h ? h : v);
    solved = true;
  }
  // The l_inf norm of the projection.
  LLR_HD T norm() const { return lambda < widest ? lambda : widest; }
};

// One FAB step of one example, in place on its perturbation delta (the current point is x0 + delta): with f the
// targeted logit difference z_t - z_y at the current point and w its gradient, the hyperplane <w, z> = <w, x1> - f
// (f linearised) is projected onto from the current point x1 and from the original point x0 (d1, d2), and
//   x1 <- clip_[0,1]((x1 + overshoot d1)(1 - alpha) + (x0 + overshoot d2) alpha),
//   alpha = min(max(|d1| / (|d1| + |d2|), 0), alpha_max), |d| the l_inf norms floored at 1e-8.
// reduce(f(i) -> Partial, combine) -> Partial over the example's elements; each(f(i)) visits them.
template <class T, class Reduce, class Each>
LLR_HD void step(T* delta, const T* x0, const T* w, T f, T overshoot, T alpha_max, Reduce reduce, Each each) {
  // Side k = 0: the current point, 1: the original point. <w, x1> - b = f and <w, x0> - b = f - <w, delta>.
  Partial p = reduce([&](int64_t i) { return Partial{{double(w[i]) * double(delta[i]), 0, 0, 0, 0, 0}}; }, Sum());
  Radius<T> r[2];
  double offset[2] = {double(f), double(f) - p.v[0]};
  for (int k = 0; k < 2; ++k) {
    r[k].side = offset[k] >= 0 ? T(1) : T(-1);
    r[k].need = offset[k] >= 0 ? offset[k] : -offset[k];
  }
  auto point = [&](int k, int64_t i) { return k == 0 ? x0[i] + delta[i] : x0[i]; };
  p = reduce(
      [&](int64_t i) {
        Partial q{{0, 0, 0, 0, 0, 0}};
        if (w[i] == T(0)) return q;
        for (int k = 0; k < 2; ++k) {
          T rm = room(point(k, i), w[i], r[k].side);
          q.v[2 * k] = double(magnitude(w[i])) * double(rm);
          q.v[2 * k + 1] = double(rm);
        }
        return q;
      },
      SumMax());
  for (int k = 0; k < 2; ++k) r[k].start(p.v[2 * k], T(p.v[2 * k + 1]));
  while (r[0].searching() || r[1].searching()) {
    T mid[2] = {r[0].mid(), r[1].mid()};
    T lo[2] = {from_bits<T>(r[0].lo), from_bits<T>(r[1].lo)}, hi[2] = {from_bits<T>(r[0].hi), from_bits<T>(r[1].hi)};
    p = reduce(
        [&](int64_t i) {
          Partial q{{0, 0, 0, 0, 0, 0}};
          if (w[i] == T(0)) return q;
          for (int k = 0; k < 2; ++k) {
            if (!r[k].searching()) continue;
            T rm = room(point(k, i), w[i], r[k].side);
            q.v[3 * k] = double(magnitude(w[i])) * double(rm < mid[k] ? rm : mid[k]);
            q.v[3 * k + 1] = rm > lo[k] && rm < mid[k] ? 1.0 : 0.0;
            q.v[3 * k + 2] = rm > mid[k] && rm < hi[k] ? 1.0 : 0.0;
          }
          return q;
        },
        Sum());
    for (int k = 0; k < 2; ++k)
      if (r[k].searching()) r[k].narrow(p.v[3 * k], p.v[3 * k + 1], p.v[3 * k + 2]);
  }
  if (!r[0].solved || !r[1].solved) {
    T lo[2] = {from_bits<T>(r[0].lo), from_bits<T>(r[1].lo)};
    p = reduce(
        [&](int64_t i) {
          Partial q{{0, 0, 0, 0, 0, 0}};
          if (w[i] == T(0)) return q;
          for (int k = 0; k < 2; ++k) {
            T rm = room(point(k, i), w[i], r[k].side);
            if (rm <= lo[k])
              q.v[2 * k] = double(magnitude(w[i])) * double(rm);
            else
              q.v[2 * k + 1] = double(magnitude(w[i]));
          }
          return q;
        },
        Sum());
    for (int k = 0; k < 2; ++k) r[k].finish(p.v[2 * k], p.v[2 * k + 1]);
  }
  T a1 = r[0].norm() > T(1e-8) ? r[0].norm() : T(1e-8), a2 = r[1].norm() > T(1e-8) ? r[1].norm() : T(1e-8);
  T alpha = a1 / (a1 + a2);
  alpha = alpha < T(0) ? T(0) : (alpha > alpha_max ? alpha_max : alpha);
  each([&](int64_t i) {
    T x1 = x0[i] + delta[i];
    T d1 = moved(x1, w[i], r[0].side, r[0].lambda), d2 = moved(x0[i], w[i], r[1].side, r[1].lambda);
    T v = (x1 + overshoot * d1) * (T(1) - alpha) + (x0[i] + overshoot * d2) * alpha;
    v = v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
    delta[i] = v - x0[i];
  });
}

template <class T>
struct Best {
  T norm, robust;
};

// FAB's bookkeeping for one example after the step, given whether the new point is still classified correctly: an
// adversarial point whose l_inf norm beats the best so far becomes the best (norm and best_delta), the example stops
// being robust once that norm is within eps, and an adversarial point is pulled back towards x0 by `backstep`
// (beta). Returns the new best norm and robust flag, for the caller to store (once per example).
template <class T, class Reduce, class Each>
LLR_HD Best<T> track(T* delta, T correct, T* best_delta, Best<T> best, T backstep, T eps, Reduce reduce, Each each) {
  if (correct != T(0)) return best;
  Partial p = reduce([&](int64_t i) { return Partial{{0, double(magnitude(delta[i])), 0, 0, 0, 0}}; }, SumMax());
  T norm = T(p.v[1]);
  bool better = norm < best.norm;
  each([&](int64_t i) {
    if (better) best_delta[i] = delta[i];
    delta[i] = delta[i] * backstep;
  });
  if (better) best.norm = norm;
  if (!(best.norm > eps)) best.robust = T(0);
  return best;
}

}  // namespace llr::fab_math
