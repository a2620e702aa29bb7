// CUDA backend: the TRADES KL divergence, the fused perturbation step (one block per example: ascent direction,
// Adam or sign update, projection onto the eps-ball and [0, 1], and d_i = <delta_i, gx_i> in one kernel), and the
// LLR per-example coefficients. Per-element math: engine/perturbation_math.h, shared with the CPU backend.
#include <cmath>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

namespace {

// Log-sum-exp of a row of k logits.
template <class T>
__device__ acc_t<T> row_lse(const T* z, int64_t k) {
  acc_t<T> m = ld(z, 0);
  for (int64_t j = 1; j < k; ++j) m = max(m, ld(z, j));
  acc_t<T> s = 0;
  for (int64_t j = 0; j < k; ++j) s += exp(ld(z, j) - m);
  return m + log(s);
}

// KL(softmax(a) || softmax(b)) of one row, with both rows' log-sum-exps.
template <class T>
__device__ acc_t<T> row_kl(const T* a, const T* b, int64_t k, acc_t<T>* la, acc_t<T>* lb) {
  *la = row_lse(a, k);
  *lb = row_lse(b, k);
  acc_t<T> kl = 0;
  for (int64_t j = 0; j < k; ++j) {
    acc_t<T> lp = ld(a, j) - *la, lq = ld(b, j) - *lb;
    kl += exp(lp) * (lp - lq);
  }
  return kl;
}

template <class T>
Tensor kl_div_impl(const Tensor& zp, const Tensor& zq) {
  using S = acc_t<T>;
  int64_t n = zp.dim(0), k = zp.dim(1);
  Tensor out = new_stat(n, zp);
  const T *a = ptr<T>(zp), *b = ptr<T>(zq);
  S* o = ptr<S>(out);
  for_each(n, [=] __device__(int64_t i) {
    S la, lb;
    o[i] = row_kl(a + i * k, b + i * k, k, &la, &lb);
  });
  return out;
}

template <class T>
std::pair<Tensor, Tensor> kl_div_backward_impl(const Tensor& zp, const Tensor& zq, const Tensor& g) {
  using S = acc_t<T>;
  int64_t n = zp.dim(0), k = zp.dim(1);
  Tensor dp = new_like(zp), dq = new_like(zq);
  const T *a = ptr<T>(zp), *b = ptr<T>(zq);
  const S* pg = ptr<S>(g);
  T *oa = ptr<T>(dp), *ob = ptr<T>(dq);
  for_each(n, [=] __device__(int64_t i) {
    S la, lb;
    S kl = row_kl(a + i * k, b + i * k, k, &la, &lb);
    for (int64_t j = 0; j < k; ++j) {
      S lp = ld(a, i * k + j) - la, lq = ld(b, i * k + j) - lb, p = exp(lp), q = exp(lq);
      st(oa, i * k + j, pg[i] * p * (lp - lq - kl));
      st(ob, i * k + j, pg[i] * (q - p));
    }
  });
  return {dp, dq};
}

// One block per example.
template <class T>
__global__ void perturbation_kernel(int64_t inner, T* delta, const T* x, const T* grad, const T* gx,
                                    const T* sign_g, T* m, T* v, T step_size, T eps, bool adam, T beta1, T beta2,
                                    T adam_eps, T bias1, T bias2, T* dots) {
  int64_t e = blockIdx.x;
  T acc = 0;
  for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) {
    int64_t i = e * inner + j;
    T dir = gx ? perturbation_math::direction(grad[i], gx[i], sign_g[e]) : grad[i];
    T mm = 0, vv = 0;
    T* mp = adam ? m + i : &mm;
    T* vp = adam ? v + i : &vv;
    T d = perturbation_math::step<T>(delta[i], x[i], dir, mp, vp, step_size, eps, adam, beta1, beta2, adam_eps, bias1,
                                     bias2);
    delta[i] = d;
    if (gx) acc += d * gx[i];
  }
  if (dots) {
    acc = block_sum(acc);
    if (threadIdx.x == 0) dots[e] = acc;
  }
}

template <class T>
Tensor perturbation_impl(Tensor& delta, const Tensor& x, const Tensor& grad, const Tensor& gx, const Tensor& sign_g,
                         Tensor& m, Tensor& v, const PerturbationParams& p) {
  int64_t n = delta.dim(0), inner = delta.numel() / n;
  bool llr = gx.defined(), adam = p.update == PerturbationUpdate::adam;
  Tensor dots = llr ? Tensor::empty({n}, delta.dtype(), Layout::plain, Device::cuda) : Tensor();
  T bias1 = T(1) - std::pow(T(p.beta1), T(p.t)), bias2 = T(1) - std::pow(T(p.beta2), T(p.t));
  perturbation_kernel<T><<<static_cast<unsigned>(n), 256, 0, context().stream()>>>(
      inner, ptr<T>(delta), ptr<T>(x), ptr<T>(grad), llr ? ptr<T>(gx) : nullptr, llr ? ptr<T>(sign_g) : nullptr,
      adam ? ptr<T>(m) : nullptr, adam ? ptr<T>(v) : nullptr, T(p.step_size), T(p.eps), adam, T(p.beta1),
      T(p.beta2), T(p.adam_eps), bias1, bias2, llr ? ptr<T>(dots) : nullptr);
  LLR_CUDA_LAUNCH_CHECK();
  return dots;
}

template <class S>
LlrCoefficients llr_coefficients_impl(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom, double lambda,
                                      double mu) {
  int64_t n = l.numel();
  LlrCoefficients c;
  for (Tensor* t : {&c.nominal_weight, &c.perturbed_weight, &c.tangent_weight, &c.abs_g, &c.sign_g})
    *t = Tensor::empty({n}, l.dtype(), Layout::plain, Device::cuda);
  const S *pl = ptr<S>(l), *pp = ptr<S>(lp), *pd = ptr<S>(d);
  S *a = ptr<S>(c.nominal_weight), *b = ptr<S>(c.perturbed_weight), *tw = ptr<S>(c.tangent_weight),
    *ag = ptr<S>(c.abs_g), *sgn = ptr<S>(c.sign_g);
  S w = S(w_nom), lam = S(lambda), m = S(mu);
  for_each(n, [=] __device__(int64_t i) {
    S g = pp[i] - pl[i] - pd[i];
    S sg = perturbation_math::sign_of(g), sd = perturbation_math::sign_of(pd[i]);
    a[i] = w - lam * sg;
    b[i] = lam * sg;
    tw[i] = m * sd - lam * sg;
    ag[i] = fabs(g);
    sgn[i] = sg;
  });
  return c;
}

template <class T>
Tensor perturbation_init_impl(const Tensor& x, double eps, double normal_scale, uint64_t seed, uint64_t counter) {
  Tensor d = new_like(x);
  const T* px = ptr<T>(x);
  T* o = ptr<T>(d);
  T e = T(eps), ns = T(normal_scale);
  for_each(x.numel(), [=] __device__(int64_t i) {
    o[i] = perturbation_math::project<T>(perturbation_math::initial<T>(seed, counter + i, e, ns), px[i], e);
  });
  return d;
}

void check_logit_pair(const char* op, const Tensor& zp, const Tensor& zq) {
  require_cuda_floating(op, {&zp, &zq});
  require_same_shape(op, zp, zq);
  LLR_CHECK(zp.rank() == 2 && zp.dim(1) >= 2, op, ": logits must be [N, K], got ", zp.describe());
}

}  // namespace

Tensor CudaBackend::kl_div(const Tensor& zp, const Tensor& zq) {
  LLR_NVTX_RANGE("kl_div");
  check_logit_pair("kl_div", zp, zq);
  return LLR_CUDA_DISPATCH(zp.dtype(), "kl_div", kl_div_impl, zp, zq);
}

std::pair<Tensor, Tensor> CudaBackend::kl_div_backward(const Tensor& zp, const Tensor& zq, const Tensor& g) {
  LLR_NVTX_RANGE("kl_div_backward");
  check_logit_pair("kl_div_backward", zp, zq);
  require_stat_vector("kl_div_backward", "per-example gradient", g, zp.dim(0), zp);
  return LLR_CUDA_DISPATCH(zp.dtype(), "kl_div_backward", kl_div_backward_impl, zp, zq, g);
}

Tensor CudaBackend::perturbation_step(Tensor& delta, const Tensor& x, const Tensor& grad_weighted, const Tensor& gx,
                                      const Tensor& sign_g, Tensor& m, Tensor& v, const PerturbationParams& p) {
  LLR_NVTX_RANGE("perturbation_step");
  require_cuda_floating("perturbation_step", {&delta, &x, &grad_weighted});
  LLR_CHECK(delta.dtype() == DType::f32 || delta.dtype() == DType::f64,
            "perturbation_step: perturbations are kept in f32 or f64, got ", delta.describe());
  require_same_shape("perturbation_step", delta, x);
  require_same_shape("perturbation_step", delta, grad_weighted);
  if (gx.defined()) {
    require_cuda_floating("perturbation_step", {&delta, &gx, &sign_g});
    require_same_shape("perturbation_step", delta, gx);
    LLR_CHECK(sign_g.shape() == Shape({delta.dim(0)}), "perturbation_step: sign_g must be [N], got ",
              sign_g.describe());
  }
  if (p.update == PerturbationUpdate::adam) {
    require_cuda_floating("perturbation_step", {&delta, &m, &v});
    require_same_shape("perturbation_step", delta, m);
    require_same_shape("perturbation_step", delta, v);
  }
  if (delta.dtype() == DType::f64) return perturbation_impl<double>(delta, x, grad_weighted, gx, sign_g, m, v, p);
  return perturbation_impl<float>(delta, x, grad_weighted, gx, sign_g, m, v, p);
}

LlrCoefficients CudaBackend::llr_coefficients(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom,
                                              double lambda, double mu) {
  require_cuda_floating("llr_coefficients", {&l, &lp, &d});
  require_same_shape("llr_coefficients", l, lp);
  require_same_shape("llr_coefficients", l, d);
  LLR_CHECK(l.rank() == 1 && l.dtype() != DType::bf16, "llr_coefficients: f32/f64 per-example vectors expected, got ",
            l.describe());
  if (l.dtype() == DType::f64) return llr_coefficients_impl<double>(l, lp, d, w_nom, lambda, mu);
  return llr_coefficients_impl<float>(l, lp, d, w_nom, lambda, mu);
}

Tensor CudaBackend::perturbation_init(const Tensor& x, double eps, double normal_scale, uint64_t seed,
                                      uint64_t counter) {
  LLR_NVTX_RANGE("perturbation_init");
  require_cuda_floating("perturbation_init", {&x});
  LLR_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, "perturbation_init: inputs are f32 or f64, got ",
            x.describe());
  if (x.dtype() == DType::f64) return perturbation_init_impl<double>(x, eps, normal_scale, seed, counter);
  return perturbation_init_impl<float>(x, eps, normal_scale, seed, counter);
}

}  // namespace llr::cuda
