// CPU backend: batch-norm statistics, normalisation, their tangents and all their vjps. Statistics are over every
// axis but the last (N, H, W for NHWC); reductions accumulate in double, in blocks of rows summed on all cores and
// then added in block order, so a result does not depend on the number of threads. The activation is made a
// compile-time constant of each loop (with_act), so the loops vectorise.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/cpu_common.h"

namespace llr {

namespace {

template <class T>
Tensor channel_tensor(const std::vector<double>& v, DType dtype) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, dtype);
  T* p = t.data<T>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<T>(v[i]);
  return t;
}

// An optional per-channel tensor's values (p may be null: zeros), so the loops reading it need no branch.
template <class U, class T>
std::vector<U> or_zeros(const T* p, int64_t channels) {
  return p ? std::vector<U>(p, p + channels) : std::vector<U>(static_cast<size_t>(channels), U(0));
}

using cpu::with_act;

constexpr int64_t kReduceBlockRows = 512;

// Per-channel sums over the rows: body(row_begin, row_end, sums) adds its rows' terms into sums[k][c] (K arrays of C
// doubles, zeroed). Blocks of kReduceBlockRows rows run in parallel; their sums are added in block order.
template <int K, class Body>
std::vector<std::vector<double>> channel_sums(const cpu::ChannelView& v, Body&& body) {
  const int64_t blocks = std::max<int64_t>(1, (v.rows + kReduceBlockRows - 1) / kReduceBlockRows);
  std::vector<double> partial(static_cast<size_t>(blocks * K * v.channels), 0.0);
#pragma omp parallel for schedule(static) if (v.rows * v.channels > cpu::kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    double* sums[K];
    for (int k = 0; k < K; ++k) sums[k] = partial.data() + (b * K + k) * v.channels;
    body(b * kReduceBlockRows, std::min(v.rows, (b + 1) * kReduceBlockRows), sums);
  }
  std::vector<std::vector<double>> out(K, std::vector<double>(v.channels, 0.0));
  for (int64_t b = 0; b < blocks; ++b)
    for (int k = 0; k < K; ++k)
      for (int64_t c = 0; c < v.channels; ++c) out[k][c] += partial[(b * K + k) * v.channels + c];
  return out;
}

}  // namespace

std::pair<Tensor, Tensor> CpuBackend::batch_stats(const Tensor& x) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_stats", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    std::vector<double> mean = channel_sums<1>(v, [&](int64_t r0, int64_t r1, double** sums) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < v.channels; ++c) sums[0][c] += px[r * v.channels + c];
    })[0];
    for (auto& m : mean) m /= double(v.rows);
    std::vector<double> var = channel_sums<1>(v, [&](int64_t r0, int64_t r1, double** sums) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < v.channels; ++c) {
          double d = px[r * v.channels + c] - mean[c];
          sums[0][c] += d * d;
        }
    })[0];
    for (auto& s : var) s /= double(v.rows);
    return std::make_pair(channel_tensor<T>(mean, x.dtype()), channel_tensor<T>(var, x.dtype()));
  });
}

Tensor CpuBackend::batch_stats_backward(const Tensor& x, const Tensor& mean, const Tensor& g_mean, const Tensor& g_var,
                                        const Tensor& addend) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_stats_backward", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *gm = g_mean.data<T>(), *gv = g_var.data<T>();
    const T* pa = addend.defined() ? addend.data<T>() : nullptr;  // x's dtype: the CPU's statistics dtype
    Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T* o = dx.data<T>();
    T inv_m = T(1) / T(v.rows);
#pragma omp parallel for schedule(static) if (x.numel() > cpu::kParallelMin)
    for (int64_t r = 0; r < v.rows; ++r)
      for (int64_t c = 0; c < v.channels; ++c) {
        int64_t i = r * v.channels + c;
        o[i] = inv_m * (gm[c] + T(2) * (px[i] - pm[c]) * gv[c]) + (pa ? pa[i] : T(0));
      }
    return dx;
  });
}

std::pair<Tensor, Tensor> CpuBackend::batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& xdot) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_stats_tangent", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pd = xdot.data<T>();
    auto sums = channel_sums<2>(v, [&](int64_t r0, int64_t r1, double** acc) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < v.channels; ++c) {
          int64_t i = r * v.channels + c;
          acc[0][c] += pd[i];
          acc[1][c] += (double(px[i]) - pm[c]) * pd[i];
        }
    });
    std::vector<double>&mdot = sums[0], &vdot = sums[1];
    for (int64_t c = 0; c < v.channels; ++c) {
      mdot[c] /= double(v.rows);
      vdot[c] *= 2.0 / double(v.rows);
    }
    return std::make_pair(channel_tensor<T>(mdot, x.dtype()), channel_tensor<T>(vdot, x.dtype()));
  });
}

BatchStatsTangentGrads CpuBackend::batch_stats_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& xdot,
                                                    const Tensor& mean_dot, const Tensor& g_mean_dot,
                                                    const Tensor& g_var_dot, const Tensor& addend_x,
                                                    const Tensor& addend_xdot) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_stats_tangent_backward", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pd = xdot.data<T>();
    const T *ga = g_mean_dot.data<T>(), *gb = g_var_dot.data<T>();
    const T* pax = addend_x.defined() ? addend_x.data<T>() : nullptr;  // x's dtype: the CPU's statistics dtype
    const T* pad = addend_xdot.defined() ? addend_xdot.data<T>() : nullptr;
    BatchStatsTangentGrads out;
    out.x = Tensor::empty(x.shape(), x.dtype(), x.layout());
    out.xdot = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T *dx = out.x.data<T>(), *dd = out.xdot.data<T>();
    T inv_m = T(1) / T(v.rows);
#pragma omp parallel for schedule(static) if (x.numel() > cpu::kParallelMin)
    for (int64_t r = 0; r < v.rows; ++r)
#pragma omp simd
      for (int64_t c = 0; c < v.channels; ++c) {
        int64_t i = r * v.channels + c;
        dd[i] = inv_m * (ga[c] + T(2) * gb[c] * (px[i] - pm[c])) + (pad ? pad[i] : T(0));
        dx[i] = inv_m * T(2) * gb[c] * pd[i] + (pax ? pax[i] : T(0));
      }
    out.mean = Tensor::empty({v.channels}, x.dtype());
    const T* pmd = mean_dot.data<T>();
    T* dm = out.mean.data<T>();
    for (int64_t c = 0; c < v.channels; ++c) dm[c] = T(-2) * gb[c] * pmd[c];
    return out;
  });
}

Tensor CpuBackend::bn_act_forward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                  const Tensor& shift, double eps, Act act) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pv = var.data<T>(), *pg = scale.data<T>(),
            *pb = shift.data<T>();
    std::vector<T> r(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) r[c] = math::bn_inv_std<T>(pv[c], T(eps));
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T* o = y.data<T>();
    const T* pr = r.data();
    with_act(act, [&](auto act_c) {
#pragma omp parallel for schedule(static) if (x.numel() > cpu::kParallelMin)
      for (int64_t row = 0; row < v.rows; ++row)
        for (int64_t c = 0; c < v.channels; ++c) {
          int64_t i = row * v.channels + c;
          o[i] = math::activation_derivative<T>(act_c(), 0, math::bn_normalize<T>(px[i], pm[c], pr[c], pg[c], pb[c]));
        }
    });
    return y;
  });
}

BnNormalizeGrads CpuBackend::bn_act_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                             const Tensor& scale, const Tensor& shift, const Tensor& gy, double eps,
                                             Act act, bool need_stats, bool need_params, const Tensor& addend) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pv = var.data<T>(), *pg = scale.data<T>(),
            *pb = shift.data<T>(), *g = gy.data<T>();
    const bool reduce = need_stats || need_params;
    if (reduce) ++op_counters().bn_channel_reductions;
    std::vector<double> sum_g(v.channels, 0.0), sum_gxc(v.channels, 0.0);
    BnNormalizeGrads out;
    out.x = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T* dx = out.x.data<T>();
    const T* pa = addend.defined() ? addend.data<T>() : nullptr;  // x's dtype: the CPU's statistics dtype
    std::vector<T> r(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) r[c] = math::bn_inv_std<T>(pv[c], T(eps));
    const T* pr = r.data();
    with_act(act, [&](auto act_c) {
      // dx[i] = scale r phi'(a) gy (+ the addend); with the reduction, also sum phi'(a) gy and phi'(a) gy (x - mean).
      auto rows = [&](int64_t r0, int64_t r1, double** acc) {
        for (int64_t row = r0; row < r1; ++row)
          for (int64_t c = 0; c < v.channels; ++c) {
            int64_t i = row * v.channels + c;
            T a = math::bn_normalize<T>(px[i], pm[c], pr[c], pg[c], pb[c]);
            T gp = math::activation_derivative<T>(act_c(), 1, a) * g[i];
            dx[i] = pg[c] * pr[c] * gp + (pa ? pa[i] : T(0));
            if (acc) {
              acc[0][c] += gp;
              acc[1][c] += double(gp) * (double(px[i]) - pm[c]);
            }
          }
      };
      if (reduce) {
        auto sums = channel_sums<2>(v, rows);
        sum_g = std::move(sums[0]);
        sum_gxc = std::move(sums[1]);
      } else {
#pragma omp parallel for schedule(static) if (x.numel() > cpu::kParallelMin)
        for (int64_t b = 0; b < (v.rows + kReduceBlockRows - 1) / kReduceBlockRows; ++b)
          rows(b * kReduceBlockRows, std::min(v.rows, (b + 1) * kReduceBlockRows), nullptr);
      }
    });
    std::vector<double> dm(v.channels), dv(v.channels), dg(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) {
      double rc = r[c];
      dm[c] = -double(pg[c]) * rc * sum_g[c];
      dv[c] = -0.5 * double(pg[c]) * rc * rc * rc * sum_gxc[c];
      dg[c] = rc * sum_gxc[c];
    }
    if (need_stats) {
      out.mean = channel_tensor<T>(dm, x.dtype());
      out.var = channel_tensor<T>(dv, x.dtype());
    }
    if (need_params) {
      out.scale = channel_tensor<T>(dg, x.dtype());
      out.shift = channel_tensor<T>(sum_g, x.dtype());
    }
    return out;
  });
}

BnNormalizeGrads CpuBackend::bn_act_train_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                                   const Tensor& scale, const Tensor& shift, const Tensor& gy,
                                                   const Tensor& g_mean, const Tensor& g_var, double eps, Act act,
                                                   bool need_params, const Tensor& addend) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pv = var.data<T>(), *pg = scale.data<T>(),
            *pb = shift.data<T>(), *g = gy.data<T>(), *gm = g_mean.data<T>(), *gv = g_var.data<T>();
    const T* pa = addend.defined() ? addend.data<T>() : nullptr;  // x's dtype: the CPU's statistics dtype
    ++op_counters().bn_channel_reductions;
    std::vector<T> r(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) r[c] = math::bn_inv_std<T>(pv[c], T(eps));
    const T* pr = r.data();
    BnNormalizeGrads out;
    out.x = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T* dx = out.x.data<T>();
    with_act(act, [&](auto act_c) {
      // Pass 1: sum g' and g' (x - mean) per channel.
      auto sums = channel_sums<2>(v, [&](int64_t r0, int64_t r1, double** acc) {
        for (int64_t row = r0; row < r1; ++row)
#pragma omp simd
          for (int64_t c = 0; c < v.channels; ++c) {
            int64_t i = row * v.channels + c;
            T a = math::bn_normalize<T>(px[i], pm[c], pr[c], pg[c], pb[c]);
            T gp = math::activation_derivative<T>(act_c(), 1, a) * g[i];
            acc[0][c] += gp;
            acc[1][c] += double(gp) * (double(px[i]) - pm[c]);
          }
      });
      // Per channel: dx = direct g' + stats_b + stats_d (x - mean).
      std::vector<T> direct(v.channels), stats_b(v.channels), stats_d(v.channels);
      const double inv = 1.0 / double(v.rows);
      for (int64_t c = 0; c < v.channels; ++c) {
        double rc = r[c], s = pg[c];
        double big_m = double(gm[c]) - s * rc * sums[0][c];
        double big_v = double(gv[c]) - 0.5 * s * rc * rc * rc * sums[1][c];
        direct[c] = T(s * rc);
        stats_b[c] = T(big_m * inv);
        stats_d[c] = T(2.0 * big_v * inv);
      }
      if (need_params) {
        std::vector<double> dg(v.channels);
        for (int64_t c = 0; c < v.channels; ++c) dg[c] = double(r[c]) * sums[1][c];
        out.scale = channel_tensor<T>(dg, x.dtype());
        out.shift = channel_tensor<T>(sums[0], x.dtype());
      }
      // Pass 2: dx, recomputing g'.
      const T *pdir = direct.data(), *pbm = stats_b.data(), *pdv = stats_d.data();
#pragma omp parallel for schedule(static) if (x.numel() > cpu::kParallelMin)
      for (int64_t row = 0; row < v.rows; ++row)
#pragma omp simd
        for (int64_t c = 0; c < v.channels; ++c) {
          int64_t i = row * v.channels + c;
          T a = math::bn_normalize<T>(px[i], pm[c], pr[c], pg[c], pb[c]);
          T gp = math::activation_derivative<T>(act_c(), 1, a) * g[i];
          dx[i] = pdir[c] * gp + pbm[c] + pdv[c] * (px[i] - pm[c]) + (pa ? pa[i] : T(0));
        }
    });
    return out;
  });
}

Tensor CpuBackend::bn_act_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                  const Tensor& shift, const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot,
                                  const Tensor& scale_dot, const Tensor& shift_dot, double eps, Act act) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "batch_norm_act_tangent", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pv = var.data<T>(), *pg = scale.data<T>(),
            *pb = shift.data<T>(), *pd = xdot.data<T>();
    const T* pmd = mean_dot.defined() ? mean_dot.data<T>() : nullptr;
    const T* pvd = var_dot.defined() ? var_dot.data<T>() : nullptr;
    const T* psd = scale_dot.defined() ? scale_dot.data<T>() : nullptr;
    const T* pbd = shift_dot.defined() ? shift_dot.data<T>() : nullptr;
    std::vector<T> r(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) r[c] = math::bn_inv_std<T>(pv[c], T(eps));
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T* o = y.data<T>();
    std::vector<T> md = or_zeros<T>(pmd, v.channels), vd = or_zeros<T>(pvd, v.channels),
                   sd = or_zeros<T>(psd, v.channels), bd = or_zeros<T>(pbd, v.channels);
    const T *pr = r.data(), *qm = md.data(), *qv = vd.data(), *qs = sd.data(), *qb = bd.data();
    const int64_t rows = v.rows, C = v.channels;
    with_act(act, [&](auto act_c) {
#pragma omp parallel for schedule(static) if (x.numel() > cpu::kParallelMin)
      for (int64_t row = 0; row < rows; ++row)
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          int64_t i = row * C + c;
          T a = math::bn_normalize<T>(px[i], pm[c], pr[c], pg[c], pb[c]);
          T t = math::bn_affine_tangent<T>(px[i], pm[c], pr[c], pg[c], pd[i], qm[c], qv[c], qs[c], qb[c]);
          o[i] = math::activation_derivative<T>(act_c(), 1, a) * t;
        }
    });
    return y;
  });
}

Tensor CpuBackend::bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& xdot,
                  const Tensor& mean_dot, const Tensor& var_dot, double eps) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "bn_tangent", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pv = var.data<T>(), *pg = scale.data<T>(),
            *pd = xdot.data<T>();
    const T* pmd = mean_dot.defined() ? mean_dot.data<T>() : nullptr;
    const T* pvd = var_dot.defined() ? var_dot.data<T>() : nullptr;
    std::vector<T> r(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) r[c] = math::bn_inv_std<T>(pv[c], T(eps));
    Tensor t = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T* o = t.data<T>();
#pragma omp parallel for schedule(static) if (x.numel() > cpu::kParallelMin)
    for (int64_t row = 0; row < v.rows; ++row)
      for (int64_t c = 0; c < v.channels; ++c) {
        int64_t i = row * v.channels + c;
        o[i] = math::bn_tangent<T>(px[i], pm[c], r[c], pg[c], pd[i], pmd ? pmd[c] : T(0), pvd ? pvd[c] : T(0));
      }
    return t;
  });
}

// t = s r (xd - md) - s r^3 (x - m) vd / 2, with r = (v + eps)^(-1/2). Cotangent gt gives
//   d xd = s r gt,  d md = -s r sum gt,  d vd = -s r^3 sum gt (x - m) / 2,
//   d x = -s r^3 vd gt / 2,  d m = s r^3 vd sum gt / 2,
//   d v = sum gt [ -s r^3 (xd - md) / 2 + 3 s r^5 vd (x - m) / 4 ],
//   d s = sum gt [ r (xd - md) - r^3 (x - m) vd / 2 ].
BnTangentGrads CpuBackend::bn_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                   const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot,
                                   const Tensor& gt, double eps, const Tensor& addend_xdot) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "bn_tangent_backward", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pm = mean.data<T>(), *pv = var.data<T>(), *ps = scale.data<T>(),
            *pd = xdot.data<T>(), *g = gt.data<T>();
    const T* pmd = mean_dot.defined() ? mean_dot.data<T>() : nullptr;
    const T* pvd = var_dot.defined() ? var_dot.data<T>() : nullptr;
    const T* pad = addend_xdot.defined() ? addend_xdot.data<T>() : nullptr;  // x's dtype: the CPU's statistics dtype
    std::vector<double> r(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) r[c] = 1.0 / std::sqrt(double(pv[c]) + eps);
    BnTangentGrads out;
    out.x = Tensor::empty(x.shape(), x.dtype(), x.layout());
    out.xdot = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T *dx = out.x.data<T>(), *dd = out.xdot.data<T>();
    std::vector<double> vdc = or_zeros<double>(pvd, v.channels), mdc = or_zeros<double>(pmd, v.channels);
    const double *pr = r.data(), *qv = vdc.data(), *qm = mdc.data();
    // Whether there is an addend as a compile-time constant: a conditional load in the loop stops it vectorising.
    auto reduce = [&](auto with_addend) {
      return channel_sums<3>(v, [&](int64_t r0, int64_t r1, double** acc) {
        for (int64_t row = r0; row < r1; ++row)
#pragma omp simd
          for (int64_t c = 0; c < v.channels; ++c) {
            int64_t i = row * v.channels + c;
            double s = ps[c], rc = pr[c];
            double xc = double(px[i]) - pm[c];
            dd[i] = static_cast<T>(s * rc * g[i]);
            if constexpr (decltype(with_addend)::value) dd[i] += pad[i];
            dx[i] = static_cast<T>(-0.5 * s * rc * rc * rc * qv[c] * g[i]);
            acc[0][c] += g[i];
            acc[1][c] += g[i] * xc;
            acc[2][c] += g[i] * (double(pd[i]) - qm[c]);
          }
      });
    };
    auto sums = pad ? reduce(std::true_type{}) : reduce(std::false_type{});
    std::vector<double>&sum_g = sums[0], &sum_gxc = sums[1], &sum_gdd = sums[2];
    std::vector<double> dm(v.channels), dv(v.channels), ds(v.channels), dmd(v.channels), dvd(v.channels);
    for (int64_t c = 0; c < v.channels; ++c) {
      double s = ps[c], rc = r[c], r3 = rc * rc * rc, vd = pvd ? pvd[c] : 0.0;
      dmd[c] = -s * rc * sum_g[c];
      dvd[c] = -0.5 * s * r3 * sum_gxc[c];
      dm[c] = 0.5 * s * r3 * vd * sum_g[c];
      dv[c] = -0.5 * s * r3 * sum_gdd[c] + 0.75 * s * r3 * rc * rc * vd * sum_gxc[c];
      ds[c] = rc * sum_gdd[c] - 0.5 * r3 * vd * sum_gxc[c];
    }
    out.mean = channel_tensor<T>(dm, x.dtype());
    out.var = channel_tensor<T>(dv, x.dtype());
    out.scale = channel_tensor<T>(ds, x.dtype());
    out.mean_dot = channel_tensor<T>(dmd, x.dtype());
    out.var_dot = channel_tensor<T>(dvd, x.dtype());
    return out;
  });
}

void CpuBackend::bn_update_running(Tensor& running_mean, Tensor& running_var, const Tensor& mean, const Tensor& var,
                       double momentum, int64_t count) {
  int64_t c = running_mean.numel();
  double unbias = double(count) / double(count - 1);
  dispatch_floating(mean.dtype(), "bn_update_running", [&](auto tag) {
    using T = decltype(tag);
    T *rm = running_mean.data<T>(), *rv = running_var.data<T>();
    const T *m = mean.data<T>(), *v = var.data<T>();
    for (int64_t k = 0; k < c; ++k) {
      rm[k] = static_cast<T>((1 - momentum) * rm[k] + momentum * m[k]);
      rv[k] = static_cast<T>((1 - momentum) * rv[k] + momentum * unbias * v[k]);
    }
    return 0;
  });
}

}  // namespace llr
