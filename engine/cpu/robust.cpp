// CPU backend: the TRADES KL divergence, the fused perturbation step of the LLR search and PGD attacks, and the LLR
// per-example coefficients. The per-element math is engine/perturbation_math.h, shared with the CUDA kernels.
#include <cmath>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/cpu_common.h"

namespace llr {

namespace {

template <class T>
void log_softmax_row(const T* z, int64_t k, double* out) {
  double mx = z[0];
  for (int64_t j = 1; j < k; ++j) mx = std::max(mx, double(z[j]));
  double s = 0;
  for (int64_t j = 0; j < k; ++j) s += std::exp(double(z[j]) - mx);
  double lse = mx + std::log(s);
  for (int64_t j = 0; j < k; ++j) out[j] = double(z[j]) - lse;
}

// KL(softmax(a) || softmax(b)) of one row; fills the rows' log-softmax values.
template <class T>
double row_kl(const T* a, const T* b, int64_t k, double* lp, double* lq) {
  log_softmax_row(a, k, lp);
  log_softmax_row(b, k, lq);
  double kl = 0;
  for (int64_t j = 0; j < k; ++j) kl += std::exp(lp[j]) * (lp[j] - lq[j]);
  return kl;
}

void check_logit_pair(const char* op, const Tensor& zp, const Tensor& zq) {
  cpu::require_cpu_floating(op, {&zp, &zq});
  cpu::require_same_shape(op, zp, zq);
  LLR_CHECK(zp.rank() == 2 && zp.dim(1) >= 2, op, ": logits must be [N, K], got ", zp.describe());
}

}  // namespace

Tensor CpuBackend::kl_div(const Tensor& zp, const Tensor& zq) {
  check_logit_pair("kl_div", zp, zq);
  return dispatch_floating(zp.dtype(), "kl_div", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = zp.dim(0), k = zp.dim(1);
    Tensor out = Tensor::empty({n}, zp.dtype());
    std::vector<double> lp(k), lq(k);
    for (int64_t i = 0; i < n; ++i)
      out.data<T>()[i] = static_cast<T>(row_kl(zp.data<T>() + i * k, zq.data<T>() + i * k, k, lp.data(), lq.data()));
    return out;
  });
}

// KL = sum p (log p - log q): d/dzp_k = p_k (log p_k - log q_k - KL), d/dzq_k = q_k - p_k.
std::pair<Tensor, Tensor> CpuBackend::kl_div_backward(const Tensor& zp, const Tensor& zq, const Tensor& g) {
  check_logit_pair("kl_div_backward", zp, zq);
  cpu::require_cpu_floating("kl_div_backward", {&zp, &g});
  LLR_CHECK(g.shape() == Shape({zp.dim(0)}), "kl_div_backward: gradient must be [N], got ", g.describe());
  return dispatch_floating(zp.dtype(), "kl_div_backward", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = zp.dim(0), k = zp.dim(1);
    Tensor dp = Tensor::empty(zp.shape(), zp.dtype()), dq = Tensor::empty(zp.shape(), zp.dtype());
    std::vector<double> lp(k), lq(k);
    for (int64_t i = 0; i < n; ++i) {
      double kl = row_kl(zp.data<T>() + i * k, zq.data<T>() + i * k, k, lp.data(), lq.data());
      double gi = g.data<T>()[i];
      for (int64_t j = 0; j < k; ++j) {
        double p = std::exp(lp[j]), q = std::exp(lq[j]);
        dp.data<T>()[i * k + j] = static_cast<T>(gi * p * (lp[j] - lq[j] - kl));
        dq.data<T>()[i * k + j] = static_cast<T>(gi * (q - p));
      }
    }
    return std::make_pair(dp, dq);
  });
}

Tensor CpuBackend::perturbation_step(Tensor& delta, const Tensor& x, const Tensor& grad_weighted, const Tensor& gx,
                                     const Tensor& sign_g, Tensor& m, Tensor& v, const PerturbationParams& p) {
  cpu::require_cpu_floating("perturbation_step", {&delta, &x, &grad_weighted});
  cpu::require_same_shape("perturbation_step", delta, x);
  cpu::require_same_shape("perturbation_step", delta, grad_weighted);
  bool llr = gx.defined();
  if (llr) {
    cpu::require_cpu_floating("perturbation_step", {&delta, &gx, &sign_g});
    cpu::require_same_shape("perturbation_step", delta, gx);
    LLR_CHECK(sign_g.shape() == Shape({delta.dim(0)}), "perturbation_step: sign_g must be [N], got ",
              sign_g.describe());
  }
  bool adam = p.update == PerturbationUpdate::adam;
  if (adam) {
    cpu::require_cpu_floating("perturbation_step", {&delta, &m, &v});
    cpu::require_same_shape("perturbation_step", delta, m);
    cpu::require_same_shape("perturbation_step", delta, v);
    LLR_CHECK(p.t >= 1, "perturbation_step: Adam step count must start at 1");
  }
  return dispatch_floating(delta.dtype(), "perturbation_step", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = delta.dim(0), inner = delta.numel() / n;
    T* d = delta.data<T>();
    const T *px = x.data<T>(), *pg = grad_weighted.data<T>();
    const T* pgx = llr ? gx.data<T>() : nullptr;
    const T* ps = llr ? sign_g.data<T>() : nullptr;
    T* pm = adam ? m.data<T>() : nullptr;
    T* pv = adam ? v.data<T>() : nullptr;
    T bias1 = T(1) - std::pow(T(p.beta1), T(p.t)), bias2 = T(1) - std::pow(T(p.beta2), T(p.t));
    Tensor dots = llr ? Tensor::empty({n}, delta.dtype()) : Tensor();
    for (int64_t e = 0; e < n; ++e) {
      double acc = 0;
      for (int64_t j = 0; j < inner; ++j) {
        int64_t i = e * inner + j;
        T dir = llr ? perturbation_math::direction(pg[i], pgx[i], ps[e]) : pg[i];
        T mm = 0, vv = 0;
        T* mp = adam ? pm + i : &mm;
        T* vp = adam ? pv + i : &vv;
        d[i] = perturbation_math::step<T>(d[i], px[i], dir, mp, vp, T(p.step_size), T(p.eps), adam, T(p.beta1),
                                          T(p.beta2), T(p.adam_eps), bias1, bias2);
        if (llr) acc += double(d[i]) * double(pgx[i]);
      }
      if (llr) dots.data<T>()[e] = static_cast<T>(acc);
    }
    return dots;
  });
}

LlrCoefficients CpuBackend::llr_coefficients(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom,
                                             double lambda, double mu) {
  cpu::require_cpu_floating("llr_coefficients", {&l, &lp, &d});
  cpu::require_same_shape("llr_coefficients", l, lp);
  cpu::require_same_shape("llr_coefficients", l, d);
  LLR_CHECK(l.rank() == 1, "llr_coefficients: per-example vectors expected, got ", l.describe());
  return dispatch_floating(l.dtype(), "llr_coefficients", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = l.numel();
    LlrCoefficients c;
    for (Tensor* t : {&c.nominal_weight, &c.perturbed_weight, &c.tangent_weight, &c.abs_g, &c.sign_g})
      *t = Tensor::empty({n}, l.dtype());
    for (int64_t i = 0; i < n; ++i) {
      T g = lp.data<T>()[i] - l.data<T>()[i] - d.data<T>()[i];
      T sg = perturbation_math::sign_of(g), sd = perturbation_math::sign_of(d.data<T>()[i]);
      c.nominal_weight.data<T>()[i] = T(w_nom) - T(lambda) * sg;
      c.perturbed_weight.data<T>()[i] = T(lambda) * sg;
      c.tangent_weight.data<T>()[i] = T(mu) * sd - T(lambda) * sg;
      c.abs_g.data<T>()[i] = std::fabs(g);
      c.sign_g.data<T>()[i] = sg;
    }
    return c;
  });
}

Tensor CpuBackend::perturbation_init(const Tensor& x, double eps, double normal_scale, uint64_t seed,
                                     uint64_t counter) {
  cpu::require_cpu_floating("perturbation_init", {&x});
  return dispatch_floating(x.dtype(), "perturbation_init", [&](auto tag) {
    using T = decltype(tag);
    Tensor d = Tensor::empty(x.shape(), x.dtype(), x.layout());
    for (int64_t i = 0, n_ = x.numel(); i < n_; ++i)
      d.data<T>()[i] = perturbation_math::project<T>(
          perturbation_math::initial<T>(seed, counter + i, T(eps), T(normal_scale)), x.data<T>()[i], T(eps));
    return d;
  });
}

}  // namespace llr
