// CUDA backend: batch-norm statistics, normalisation, their tangents and vjps (statistics over all but the last axis,
// accumulated in f32, or f64 for f64 data). Per-element formulas come from engine/elementwise_math.h.
#include "engine/autograd.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

namespace {

// Kernel names (see for_each_pack in cuda_common.cuh).
struct batch_stats_backward_k {};
struct batch_stats_tangent_backward_k {};
struct bn_act_forward_k {};
struct bn_act_backward_input_k {};
struct bn_act_train_backward_k {};
struct bn_act_tangent_k {};
struct bn_tangent_k {};
struct bn_tangent_backward_k {};

struct View {
  int64_t rows, channels;
};

View bn_view(const Tensor& x) {
  View v{};
  channel_view(x, v.rows, v.channels);
  return v;
}

Tensor scratch(int64_t n, const Tensor& data) {
  return Tensor::empty({n}, stat_dtype(data.dtype()), Layout::plain, Device::cuda);
}

// One pass over x about a per-channel shift K: with d = x - K, mean = K + E[d] and var = E[d^2] - E[d]^2. K is the
// mean of 16 rows, one in each sixteenth of the tensor (so over its images) at a scrambled offset within it (so not
// always an image's corner pixel, which zero padding makes atypical): |E[d]| is then a fraction of the standard
// deviation and the subtraction costs a bit or two (unshifted, E[x^2] - E[x]^2 would lose everything when
// |mean| >> std). A two-pass mean-then-centred-squares reads x twice.
template <class T>
std::pair<Tensor, Tensor> batch_stats_impl(const Tensor& x, View v) {
  using S = acc_t<T>;
  Tensor mean = new_stat(v.channels, x), var = new_stat(v.channels, x);
  const T* px = ptr<T>(x);
  S* pm = ptr<S>(mean);
  S* pv = ptr<S>(var);
  int64_t C = v.channels, rows = v.rows;
  S inv = S(1) / S(rows);
  if (rows <= 0) return {mean, var};
  Tensor shift = scratch(C, x), sums = scratch(2 * C, x);
  S* pk = ptr<S>(shift);
  S* ps = ptr<S>(sums);
  constexpr int64_t kSamples = 16;
  int64_t samples = std::min(kSamples, rows);
  int64_t segment = rows / samples;  // >= 1; s * rows / samples + segment - 1 < rows for every s < samples
  for_each(C, [=] __device__(int64_t c) {
    S k = S(0);
    for (int64_t s = 0; s < samples; ++s) {
      int64_t offset = int64_t((uint64_t(s) * 2654435761u) % uint64_t(segment));
      k += ld(px, (s * rows / samples + offset) * C + c);
    }
    pk[c] = k / S(samples);
  });
  channel_sum<2, S>(rows, C, [=] __device__(int64_t i, int64_t c, int n, PackSums<2, S>& o) {
    Pack<T> xs = load_pack(px, i, n);
    Pack<S> ks = load_channels(pk, c, C);
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      S d = xs[j] - ks[j];
      o.v[0][j] = d;
      o.v[1][j] = d * d;
    }
  }, ps);
  for_each(C, [=] __device__(int64_t c) {
    S m = ps[c] * inv, q = ps[C + c] * inv - m * m;
    pm[c] = pk[c] + m;
    pv[c] = q < S(0) ? S(0) : q;  // rounding can leave a tiny negative; NaN (an inf in x) stays NaN
  });
  return {mean, var};
}

// The per-channel values a pass reads, NP arrays of them, for the kPack elements of a pack (load_channels).
template <int NP, class S>
struct PackParams {
  Pack<S> p[NP];
};

template <int NP, class S>
__device__ __forceinline__ PackParams<NP, S> load_params(const S* const* arrays, int64_t c, int64_t C) {
  PackParams<NP, S> out;
#pragma unroll
  for (int a = 0; a < NP; ++a) out.p[a] = load_channels(arrays[a], c, C);
  return out;
}

// NP per-channel arrays (null: zeros), captured by value in a kernel's closure.
template <int NP, class S>
struct ParamArrays {
  const S* a[NP];
};

// dx = value(x, gy, params, k) plus the addend (in A; null: none), written in D, in one packed pass over x and gy
// (null: not read, value gets 0); params holds the pack's values of the per-channel arrays `arrays`, k the element's
// place in the pack.
template <class Name, int NP, class T, class D, class A, class S, class F>
void dx_pass(int64_t n, int64_t C, const T* px, const T* pg, const A* pa, D* dx, ParamArrays<NP, S> arrays,
             F value) {
  for_each_pack<Name>(n, [=] __device__(int64_t i, int count) {
    Pack<T> xs = load_pack(px, i, count), gs;
    if (pg) gs = load_pack(pg, i, count);
    Pack<A> as;
    if (pa) as = load_pack(pa, i, count);
    Pack<D> out;
    const PackParams<NP, S> params = load_params<NP, S>(arrays.a, channel_of(i, C), C);
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      acc_t<T> d = value(xs[k], pg ? gs[k] : acc_t<T>(0), params, k);
      out[k] = pa ? d + as[k] : d;
    }
    store_pack(dx, i, out, count);
  });
}

// dx (in D) plus the addend (in A; null: none) in one pass; see backend_functions.def.
template <class T, class D, class A>
Tensor batch_stats_backward_as(const Tensor& x, const Tensor& mean, const Tensor& gm, const Tensor& gv,
                               const Tensor& addend, View v) {
  using S = acc_t<T>;
  Tensor dx = Tensor::empty(x.shape(), dtype_of_storage<D>(), x.layout(), Device::cuda);
  const T* px = ptr<T>(x);
  const S *pm = ptr<S>(mean), *pgm = ptr<S>(gm), *pgv = ptr<S>(gv);
  const A* pa = addend.defined() ? ptr<A>(addend) : nullptr;
  int64_t C = v.channels;
  S inv = S(1) / S(v.rows);
  dx_pass<batch_stats_backward_k>(x.numel(), C, px, static_cast<const T*>(nullptr), pa, ptr<D>(dx),
                                  ParamArrays<3, S>{{pgm, pm, pgv}},
                                  [=] __device__(S xi, S, const PackParams<3, S>& q, int k) {
                                    return inv * (q.p[0][k] + S(2) * (xi - q.p[1][k]) * q.p[2][k]);
                                  });
  return dx;
}

// dx in x's dtype, or in the statistics dtype when the addend is in it (the dispatch checked it is one of the two).
template <class T>
Tensor batch_stats_backward_impl(const Tensor& x, const Tensor& mean, const Tensor& gm, const Tensor& gv,
                                 const Tensor& addend, View v) {
  using S = acc_t<T>;
  if (addend.defined() && addend.dtype() != x.dtype()) return batch_stats_backward_as<T, S, S>(x, mean, gm, gv, addend, v);
  return batch_stats_backward_as<T, T, T>(x, mean, gm, gv, addend, v);
}

template <class T>
std::pair<Tensor, Tensor> batch_stats_tangent_impl(const Tensor& x, const Tensor& mean, const Tensor& xdot, View v) {
  using S = acc_t<T>;
  Tensor sums = scratch(2 * v.channels, x);
  const T *px = ptr<T>(x), *pd = ptr<T>(xdot);
  const S* pm = ptr<S>(mean);
  int64_t C = v.channels;
  S* ps = ptr<S>(sums);
  channel_sum<2, S>(v.rows, C, [=] __device__(int64_t i, int64_t c, int n, PackSums<2, S>& o) {
    Pack<T> xs = load_pack(px, i, n), ds = load_pack(pd, i, n);
    Pack<S> ms = load_channels(pm, c, C);
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      o.v[0][j] = ds[j];
      o.v[1][j] = (xs[j] - ms[j]) * ds[j];
    }
  }, ps);
  Tensor md = new_stat(C, x), vd = new_stat(C, x);
  S *pmd = ptr<S>(md), *pvd = ptr<S>(vd);
  S inv = S(1) / S(v.rows);
  for_each(C, [=] __device__(int64_t c) {
    pmd[c] = ps[c] * inv;
    pvd[c] = S(2) * ps[C + c] * inv;
  });
  return {md, vd};
}

// dx (in DX, plus the addend in AX) and dxdot (in DD, plus the addend in AD) in one pass; the cotangent of the mean
// from the forward's mean_dot. An addend is null when not given.
template <class T, class DX, class AX, class DD, class AD>
BatchStatsTangentGrads batch_stats_tangent_backward_as(const Tensor& x, const Tensor& mean, const Tensor& xdot,
                                                       const Tensor& mean_dot, const Tensor& ga, const Tensor& gb,
                                                       const Tensor& addend_x, const Tensor& addend_xdot, View v) {
  using S = acc_t<T>;
  BatchStatsTangentGrads out;
  out.x = Tensor::empty(x.shape(), dtype_of_storage<DX>(), x.layout(), Device::cuda);
  out.xdot = Tensor::empty(x.shape(), dtype_of_storage<DD>(), x.layout(), Device::cuda);
  out.mean = new_stat(v.channels, x);
  const T *px = ptr<T>(x), *pd = ptr<T>(xdot);
  const S *pm = ptr<S>(mean), *pmd = ptr<S>(mean_dot), *pa = ptr<S>(ga), *pb = ptr<S>(gb);
  const AX* pax = addend_x.defined() ? ptr<AX>(addend_x) : nullptr;
  const AD* pad = addend_xdot.defined() ? ptr<AD>(addend_xdot) : nullptr;
  DX* dx = ptr<DX>(out.x);
  DD* dd = ptr<DD>(out.xdot);
  S* dm = ptr<S>(out.mean);
  int64_t C = v.channels;
  S inv = S(1) / S(v.rows);
  for_each_pack<batch_stats_tangent_backward_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> xs = load_pack(px, i, n), ds = load_pack(pd, i, n);
    Pack<AX> axs;
    Pack<AD> ads;
    if (pax) axs = load_pack(pax, i, n);
    if (pad) ads = load_pack(pad, i, n);
    Pack<DX> ox;
    Pack<DD> od;
    const int64_t c = channel_of(i, C);
    Pack<S> as = load_channels(pa, c, C), bs = load_channels(pb, c, C), ms = load_channels(pm, c, C);
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      S d = inv * (as[k] + S(2) * bs[k] * (xs[k] - ms[k]));
      S e = inv * S(2) * bs[k] * ds[k];
      od[k] = pad ? d + ads[k] : d;
      ox[k] = pax ? e + axs[k] : e;
    }
    store_pack(dd, i, od, n);
    store_pack(dx, i, ox, n);
  });
  for_each(C, [=] __device__(int64_t c) { dm[c] = S(-2) * pb[c] * pmd[c]; });
  return out;
}

template <class T>
BatchStatsTangentGrads batch_stats_tangent_backward_impl(const Tensor& x, const Tensor& mean, const Tensor& xdot,
                                                         const Tensor& mean_dot, const Tensor& ga, const Tensor& gb,
                                                         const Tensor& addend_x, const Tensor& addend_xdot, View v) {
  using S = acc_t<T>;
  bool wide_x = addend_x.defined() && addend_x.dtype() != x.dtype();
  bool wide_d = addend_xdot.defined() && addend_xdot.dtype() != x.dtype();
  auto run = [&](auto fn) { return fn(x, mean, xdot, mean_dot, ga, gb, addend_x, addend_xdot, v); };
  if (wide_x && wide_d) return run(batch_stats_tangent_backward_as<T, S, S, S, S>);
  if (wide_x) return run(batch_stats_tangent_backward_as<T, S, S, T, T>);
  if (wide_d) return run(batch_stats_tangent_backward_as<T, T, T, S, S>);
  return run(batch_stats_tangent_backward_as<T, T, T, T, T>);
}

template <class T>
Tensor bn_act_forward_impl(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                           const Tensor& shift, double eps, Act act, View v) {
  using S = acc_t<T>;
  Tensor y = new_like(x);
  const T* px = ptr<T>(x);
  const S *pm = ptr<S>(mean), *pv = ptr<S>(var), *pg = ptr<S>(scale), *pb = ptr<S>(shift);
  T* o = ptr<T>(y);
  int64_t C = v.channels;
  S e = static_cast<S>(eps);
  for_each_pack<bn_act_forward_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> v = load_pack(px, i, n);
    const int64_t c = channel_of(i, C);
    Pack<S> ms = load_channels(pm, c, C), vs = load_channels(pv, c, C), gs = load_channels(pg, c, C),
                   bs = load_channels(pb, c, C);
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      S a = math::bn_normalize<S>(v[k], ms[k], math::bn_inv_std<S>(vs[k], e), gs[k], bs[k]);
      v[k] = math::activation_derivative<S>(act, 0, a);
    }
    store_pack(o, i, v, n);
  });
  return y;
}

// One pass over x and gy: the direct part of dx and, when asked for, the per-channel sums of g' and g' (x - mean)
// that the statistics' and parameters' cotangents need (g' = phi'(a) gy, a recomputed). The direct part is written
// in D: the statistics dtype when need_stats (see backend_functions.def), x's dtype otherwise.
template <class T, class D, class A>
BnNormalizeGrads bn_act_backward_as(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                    const Tensor& shift, const Tensor& gy, double eps, Act act, bool need_stats,
                                    bool need_params, const Tensor& addend, View v) {
  using S = acc_t<T>;
  int64_t C = v.channels;
  const T *px = ptr<T>(x), *pg = ptr<T>(gy);
  const S *pm = ptr<S>(mean), *pv = ptr<S>(var), *ps = ptr<S>(scale), *pb = ptr<S>(shift);
  BnNormalizeGrads out;
  out.x = Tensor::empty(x.shape(), dtype_of_storage<D>(), x.layout(), Device::cuda);
  D* dx = ptr<D>(out.x);
  const A* pa = addend.defined() ? ptr<A>(addend) : nullptr;
  S e = static_cast<S>(eps);
  // g' = phi'(a) gy and the direct part of dx (without the addend) for x = xi, gy = gi in a channel of mean m,
  // variance var, scale s and shift b.
  auto direct_part = [=] __device__(S xi, S gi, S m, S var, S s, S b, S* gp) {
    S r = math::bn_inv_std<S>(var, e);
    *gp = math::activation_derivative<S>(act, 1, math::bn_normalize<S>(xi, m, r, s, b)) * gi;
    return s * r * *gp;
  };
  if (!need_stats && !need_params) {  // every attack and search step: element-wise only
    dx_pass<bn_act_backward_input_k>(x.numel(), C, px, pg, pa, dx, ParamArrays<4, S>{{pm, pv, ps, pb}},
                                     [=] __device__(S xi, S gi, const PackParams<4, S>& q, int k) {
                                       S gp;
                                       return direct_part(xi, gi, q.p[0][k], q.p[1][k], q.p[2][k], q.p[3][k], &gp);
                                     });
    return out;
  }
  ++op_counters().bn_channel_reductions;
  Tensor sums = scratch(2 * C, x);
  S* sp = ptr<S>(sums);
  channel_sum<2, S>(v.rows, C, [=] __device__(int64_t i, int64_t c, int n, PackSums<2, S>& o) {
    Pack<T> xs = load_pack(px, i, n), gs = load_pack(pg, i, n);
    Pack<A> as;
    if (pa) as = load_pack(pa, i, n);
    Pack<D> out;
    Pack<S> ms = load_channels(pm, c, C), vs = load_channels(pv, c, C), ss = load_channels(ps, c, C),
                   bs = load_channels(pb, c, C);
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      S gp, d = direct_part(xs[j], gs[j], ms[j], vs[j], ss[j], bs[j], &gp);
      out[j] = pa ? d + as[j] : d;
      o.v[0][j] = gp;
      o.v[1][j] = gp * (xs[j] - ms[j]);
    }
    store_pack(dx, i, out, n);
  }, sp);
  if (need_stats) out.mean = new_stat(C, x), out.var = new_stat(C, x);
  if (need_params) out.scale = new_stat(C, x), out.shift = new_stat(C, x);
  S *dm = ptr_or_null_mut<S>(out.mean), *dv = ptr_or_null_mut<S>(out.var), *dg = ptr_or_null_mut<S>(out.scale),
    *db = ptr_or_null_mut<S>(out.shift);
  for_each(C, [=] __device__(int64_t c) {
    S r = math::bn_inv_std<S>(pv[c], e);
    if (dm) {
      dm[c] = -ps[c] * r * sp[c];
      dv[c] = S(-0.5) * ps[c] * r * r * r * sp[C + c];
    }
    if (dg) {
      dg[c] = r * sp[C + c];
      db[c] = sp[c];
    }
  });
  return out;
}

// dx in the statistics dtype when need_stats or when the addend is in it, else in x's dtype.
template <class T>
BnNormalizeGrads bn_act_backward_impl(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                      const Tensor& shift, const Tensor& gy, double eps, Act act, bool need_stats,
                                      bool need_params, const Tensor& addend, View v) {
  using S = acc_t<T>;
  if (addend.defined() && addend.dtype() != x.dtype())
    return bn_act_backward_as<T, S, S>(x, mean, var, scale, shift, gy, eps, act, need_stats, need_params, addend, v);
  if (need_stats)
    return bn_act_backward_as<T, S, T>(x, mean, var, scale, shift, gy, eps, act, need_stats, need_params, addend, v);
  return bn_act_backward_as<T, T, T>(x, mean, var, scale, shift, gy, eps, act, need_stats, need_params, addend, v);
}

// See backend_functions.def: one reduction (sum g' and g' (x - mean) per channel), a per-channel step that turns the
// sums and the statistics' own cotangents into dx = direct g' + stats_b + stats_d (x - mean), and one element-wise
// pass that recomputes g' and writes dx (in D) plus the addend (in A).
template <class T, class D, class A>
BnNormalizeGrads bn_act_train_backward_as(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                          const Tensor& shift, const Tensor& gy, const Tensor& g_mean,
                                          const Tensor& g_var, double eps, Act act, bool need_params,
                                          const Tensor& addend, View v) {
  using S = acc_t<T>;
  int64_t C = v.channels;
  const T *px = ptr<T>(x), *pg = ptr<T>(gy);
  const S *pm = ptr<S>(mean), *pv = ptr<S>(var), *ps = ptr<S>(scale), *pb = ptr<S>(shift), *gm = ptr<S>(g_mean),
          *gv = ptr<S>(g_var);
  const A* pa = addend.defined() ? ptr<A>(addend) : nullptr;
  S e = static_cast<S>(eps);
  // g' = phi'(a) gy in a channel of mean m, variance var, scale s and shift b.
  auto gprime = [=] __device__(S xi, S gi, S m, S var, S s, S b) {
    S r = math::bn_inv_std<S>(var, e);
    return math::activation_derivative<S>(act, 1, math::bn_normalize<S>(xi, m, r, s, b)) * gi;
  };
  ++op_counters().bn_channel_reductions;
  Tensor sums = scratch(2 * C, x), coef = scratch(3 * C, x);
  S *sp = ptr<S>(sums), *cf = ptr<S>(coef);
  channel_sum<2, S>(v.rows, C, [=] __device__(int64_t i, int64_t c, int n, PackSums<2, S>& o) {
    Pack<T> xs = load_pack(px, i, n), gs = load_pack(pg, i, n);
    Pack<S> ms = load_channels(pm, c, C), vs = load_channels(pv, c, C), ss = load_channels(ps, c, C),
                   bs = load_channels(pb, c, C);
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      S gp = gprime(xs[j], gs[j], ms[j], vs[j], ss[j], bs[j]);
      o.v[0][j] = gp;
      o.v[1][j] = gp * (xs[j] - ms[j]);
    }
  }, sp);
  BnNormalizeGrads out;
  if (need_params) out.scale = new_stat(C, x), out.shift = new_stat(C, x);
  S *dg = ptr_or_null_mut<S>(out.scale), *db = ptr_or_null_mut<S>(out.shift);
  S inv = S(1) / S(v.rows);
  for_each(C, [=] __device__(int64_t c) {
    S r = math::bn_inv_std<S>(pv[c], e), s = ps[c];
    S big_m = gm[c] - s * r * sp[c];
    S big_v = gv[c] - S(0.5) * s * r * r * r * sp[C + c];
    cf[c] = s * r;                    // direct
    cf[C + c] = big_m * inv;          // stats_b
    cf[2 * C + c] = S(2) * big_v * inv;  // stats_d
    if (dg) {
      dg[c] = r * sp[C + c];
      db[c] = sp[c];
    }
  });
  out.x = Tensor::empty(x.shape(), dtype_of_storage<D>(), x.layout(), Device::cuda);
  const S* cfc = cf;  // direct, stats_b and stats_d per channel, as above
  dx_pass<bn_act_train_backward_k>(
      x.numel(), C, px, pg, pa, ptr<D>(out.x), ParamArrays<7, S>{{cfc, cfc + C, cfc + 2 * C, pm, pv, ps, pb}},
      [=] __device__(S xi, S gi, const PackParams<7, S>& q, int k) {
        const S m = q.p[3][k];
        return q.p[0][k] * gprime(xi, gi, m, q.p[4][k], q.p[5][k], q.p[6][k]) + q.p[1][k] + q.p[2][k] * (xi - m);
      });
  return out;
}

template <class T>
BnNormalizeGrads bn_act_train_backward_impl(const Tensor& x, const Tensor& mean, const Tensor& var,
                                            const Tensor& scale, const Tensor& shift, const Tensor& gy,
                                            const Tensor& g_mean, const Tensor& g_var, double eps, Act act,
                                            bool need_params, const Tensor& addend, View v) {
  using S = acc_t<T>;
  if (addend.defined() && addend.dtype() != x.dtype())
    return bn_act_train_backward_as<T, S, S>(x, mean, var, scale, shift, gy, g_mean, g_var, eps, act, need_params,
                                             addend, v);
  return bn_act_train_backward_as<T, T, T>(x, mean, var, scale, shift, gy, g_mean, g_var, eps, act, need_params,
                                           addend, v);
}

template <class T>
Tensor bn_act_tangent_impl(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                           const Tensor& shift, const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot,
                           const Tensor& scale_dot, const Tensor& shift_dot, double eps, Act act, View v) {
  using S = acc_t<T>;
  Tensor y = new_like(x);
  const T *px = ptr<T>(x), *pd = ptr<T>(xdot);
  const S *pm = ptr<S>(mean), *pv = ptr<S>(var), *ps = ptr<S>(scale), *pb = ptr<S>(shift);
  const S *pmd = ptr_or_null<S>(mean_dot), *pvd = ptr_or_null<S>(var_dot), *psd = ptr_or_null<S>(scale_dot),
          *pbd = ptr_or_null<S>(shift_dot);
  T* o = ptr<T>(y);
  int64_t C = v.channels;
  S e = static_cast<S>(eps);
  for_each_pack<bn_act_tangent_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> xs = load_pack(px, i, n), ds = load_pack(pd, i, n);
    const int64_t c = channel_of(i, C);
    Pack<S> ms = load_channels(pm, c, C), vs = load_channels(pv, c, C), ss = load_channels(ps, c, C),
                   bs = load_channels(pb, c, C), mds = load_channels(pmd, c, C), vds = load_channels(pvd, c, C),
                   sds = load_channels(psd, c, C), bds = load_channels(pbd, c, C);
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      S r = math::bn_inv_std<S>(vs[k], e), xi = xs[k];
      S a = math::bn_normalize<S>(xi, ms[k], r, ss[k], bs[k]);
      S t = math::bn_affine_tangent<S>(xi, ms[k], r, ss[k], ds[k], mds[k], vds[k], sds[k], bds[k]);
      xs[k] = math::activation_derivative<S>(act, 1, a) * t;
    }
    store_pack(o, i, xs, n);
  });
  return y;
}

template <class T>
Tensor bn_tangent_impl(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                       const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot, double eps, View v) {
  using S = acc_t<T>;
  Tensor t = new_like(x);
  const T *px = ptr<T>(x), *pd = ptr<T>(xdot);
  const S *pm = ptr<S>(mean), *pv = ptr<S>(var), *ps = ptr<S>(scale);
  const S *pmd = ptr_or_null<S>(mean_dot), *pvd = ptr_or_null<S>(var_dot);
  T* o = ptr<T>(t);
  int64_t C = v.channels;
  S e = static_cast<S>(eps);
  for_each_pack<bn_tangent_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> xs = load_pack(px, i, n), ds = load_pack(pd, i, n);
    const int64_t c = channel_of(i, C);
    Pack<S> ms = load_channels(pm, c, C), vs = load_channels(pv, c, C), ss = load_channels(ps, c, C),
                   mds = load_channels(pmd, c, C), vds = load_channels(pvd, c, C);
#pragma unroll
    for (int k = 0; k < kPack; ++k)
      xs[k] = math::bn_tangent<S>(xs[k], ms[k], math::bn_inv_std<S>(vs[k], e), ss[k], ds[k], mds[k], vds[k]);
    store_pack(o, i, xs, n);
  });
  return t;
}

// The same formulas as the CPU backend (engine/cpu/batchnorm.cpp, bn_tangent_backward).
// dxdot in DD plus the addend (in AD; null: none).
template <class T, class DD, class AD>
BnTangentGrads bn_tangent_backward_as(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                      const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot,
                                      const Tensor& gt, double eps, const Tensor& addend_xdot, View v) {
  using S = acc_t<T>;
  int64_t C = v.channels;
  Tensor sums = scratch(3 * C, x);
  const T *px = ptr<T>(x), *pd = ptr<T>(xdot), *pg = ptr<T>(gt);
  const S *pm = ptr<S>(mean), *pv = ptr<S>(var), *ps = ptr<S>(scale);
  const S *pmd = ptr_or_null<S>(mean_dot), *pvd = ptr_or_null<S>(var_dot);
  S* sp = ptr<S>(sums);
  channel_sum<3, S>(v.rows, C, [=] __device__(int64_t i, int64_t c, int n, PackSums<3, S>& o) {
    Pack<T> gs = load_pack(pg, i, n), xs = load_pack(px, i, n), ds = load_pack(pd, i, n);
    Pack<S> ms = load_channels(pm, c, C), mds = load_channels(pmd, c, C);
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      o.v[0][j] = gs[j];
      o.v[1][j] = gs[j] * (xs[j] - ms[j]);
      o.v[2][j] = gs[j] * (ds[j] - mds[j]);
    }
  }, sp);
  BnTangentGrads out;
  out.x = new_like(x);
  out.xdot = Tensor::empty(x.shape(), dtype_of_storage<DD>(), x.layout(), Device::cuda);
  for (Tensor* t : {&out.mean, &out.var, &out.scale, &out.mean_dot, &out.var_dot}) *t = new_stat(C, x);
  T* dx = ptr<T>(out.x);
  DD* dd = ptr<DD>(out.xdot);
  const AD* pad = addend_xdot.defined() ? ptr<AD>(addend_xdot) : nullptr;
  S e = static_cast<S>(eps);
  for_each_pack<bn_tangent_backward_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> gs = load_pack(pg, i, n), b;
    Pack<AD> as;
    if (pad) as = load_pack(pad, i, n);
    Pack<DD> a;
    const int64_t c = channel_of(i, C);
    Pack<S> vs = load_channels(pv, c, C), ss = load_channels(ps, c, C), vds = load_channels(pvd, c, C);
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      S r = math::bn_inv_std<S>(vs[k], e), g = gs[k];
      S d = ss[k] * r * g;
      a[k] = pad ? d + as[k] : d;
      b[k] = S(-0.5) * ss[k] * r * r * r * vds[k] * g;
    }
    store_pack(dd, i, a, n);
    store_pack(dx, i, b, n);
  });
  S *dm = ptr<S>(out.mean), *dv = ptr<S>(out.var), *dsc = ptr<S>(out.scale), *dmd = ptr<S>(out.mean_dot),
    *dvd = ptr<S>(out.var_dot);
  for_each(C, [=] __device__(int64_t c) {
    S s = ps[c], r = math::bn_inv_std<S>(pv[c], e), r3 = r * r * r, vd = pvd ? pvd[c] : S(0);
    S sum_g = sp[c], sum_gxc = sp[C + c], sum_gdd = sp[2 * C + c];
    dmd[c] = -s * r * sum_g;
    dvd[c] = S(-0.5) * s * r3 * sum_gxc;
    dm[c] = S(0.5) * s * r3 * vd * sum_g;
    dv[c] = S(-0.5) * s * r3 * sum_gdd + S(0.75) * s * r3 * r * r * vd * sum_gxc;
    dsc[c] = r * sum_gdd - S(0.5) * r3 * vd * sum_gxc;
  });
  return out;
}

template <class T>
BnTangentGrads bn_tangent_backward_impl(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                        const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot,
                                        const Tensor& gt, double eps, const Tensor& addend_xdot, View v) {
  using S = acc_t<T>;
  if (addend_xdot.defined() && addend_xdot.dtype() != x.dtype())
    return bn_tangent_backward_as<T, S, S>(x, mean, var, scale, xdot, mean_dot, var_dot, gt, eps, addend_xdot, v);
  return bn_tangent_backward_as<T, T, T>(x, mean, var, scale, xdot, mean_dot, var_dot, gt, eps, addend_xdot, v);
}

template <class S>
void update_running_impl(Tensor& rm, Tensor& rv, const Tensor& m, const Tensor& v, double momentum, double unbias) {
  S *prm = ptr<S>(rm), *prv = ptr<S>(rv);
  const S *pm = ptr<S>(m), *pv = ptr<S>(v);
  S mo = static_cast<S>(momentum), ub = static_cast<S>(unbias);
  for_each(rm.numel(), [=] __device__(int64_t c) {
    prm[c] = (S(1) - mo) * prm[c] + mo * pm[c];
    prv[c] = (S(1) - mo) * prv[c] + mo * ub * pv[c];
  });
}

}  // namespace

std::pair<Tensor, Tensor> CudaBackend::batch_stats(const Tensor& x) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "batch_stats", batch_stats_impl, x, v);
}

Tensor CudaBackend::batch_stats_backward(const Tensor& x, const Tensor& mean, const Tensor& g_mean,
                                         const Tensor& g_var, const Tensor& addend) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "batch_stats_backward", batch_stats_backward_impl, x, mean, g_mean, g_var,
                           addend, v);
}

std::pair<Tensor, Tensor> CudaBackend::batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& xdot) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "batch_stats_tangent", batch_stats_tangent_impl, x, mean, xdot, v);
}

BatchStatsTangentGrads CudaBackend::batch_stats_tangent_backward(const Tensor& x, const Tensor& mean,
                                                                 const Tensor& xdot, const Tensor& mean_dot,
                                                                 const Tensor& g_mean_dot, const Tensor& g_var_dot,
                                                                 const Tensor& addend_x, const Tensor& addend_xdot) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "batch_stats_tangent_backward", batch_stats_tangent_backward_impl, x, mean,
                           xdot, mean_dot, g_mean_dot, g_var_dot, addend_x, addend_xdot, v);
}

Tensor CudaBackend::bn_act_forward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                   const Tensor& shift, double eps, Act act) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "bn_act_forward", bn_act_forward_impl, x, mean, var, scale, shift, eps, act, v);
}

BnNormalizeGrads CudaBackend::bn_act_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                              const Tensor& scale, const Tensor& shift, const Tensor& gy, double eps,
                                              Act act, bool need_stats, bool need_params, const Tensor& addend) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "bn_act_backward", bn_act_backward_impl, x, mean, var, scale, shift, gy, eps,
                           act, need_stats, need_params, addend, v);
}

BnNormalizeGrads CudaBackend::bn_act_train_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                                    const Tensor& scale, const Tensor& shift, const Tensor& gy,
                                                    const Tensor& g_mean, const Tensor& g_var, double eps, Act act,
                                                    bool need_params, const Tensor& addend) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "bn_act_train_backward", bn_act_train_backward_impl, x, mean, var, scale, shift,
                           gy, g_mean, g_var, eps, act, need_params, addend, v);
}

Tensor CudaBackend::bn_act_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                   const Tensor& shift, const Tensor& xdot, const Tensor& mean_dot,
                                   const Tensor& var_dot, const Tensor& scale_dot, const Tensor& shift_dot, double eps,
                                   Act act) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "bn_act_tangent", bn_act_tangent_impl, x, mean, var, scale, shift, xdot,
                           mean_dot, var_dot, scale_dot, shift_dot, eps, act, v);
}

Tensor CudaBackend::bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                               const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot, double eps) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "bn_tangent", bn_tangent_impl, x, mean, var, scale, xdot, mean_dot, var_dot,
                           eps, v);
}

BnTangentGrads CudaBackend::bn_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                                const Tensor& scale, const Tensor& xdot, const Tensor& mean_dot,
                                                const Tensor& var_dot, const Tensor& gt, double eps,
                                                const Tensor& addend_xdot) {
  View v = bn_view(x);
  return LLR_CUDA_DISPATCH(x.dtype(), "bn_tangent_backward", bn_tangent_backward_impl, x, mean, var, scale, xdot,
                           mean_dot, var_dot, gt, eps, addend_xdot, v);
}

void CudaBackend::bn_update_running(Tensor& running_mean, Tensor& running_var, const Tensor& mean, const Tensor& var,
                                    double momentum, int64_t count) {
  double unbias = double(count) / double(count - 1);
  if (running_mean.dtype() == DType::f64)
    update_running_impl<double>(running_mean, running_var, mean, var, momentum, unbias);
  else if (running_mean.dtype() == DType::f32)
    update_running_impl<float>(running_mean, running_var, mean, var, momentum, unbias);
  else
    LLR_FAIL("bn_update_running: running statistics must be f32 or f64, got ", running_mean.describe());
}

}  // namespace llr::cuda
