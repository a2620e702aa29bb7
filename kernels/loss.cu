// CUDA backend: per-example softmax cross-entropy and margin loss on logits [N, K] (one thread per example; K is the
// number of classes, small), their vjps and tangents. Per-example outputs are in the statistics dtype (f32 for bf16).
// A label outside [0, K) gives a NaN loss rather than a read out of bounds.
#include <cmath>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

namespace {

struct Logits {
  int64_t n, k;
};

Logits logits_view(const Tensor& z) { return {z.dim(0), z.dim(1)}; }

template <class T>
__device__ acc_t<T> row_max(const T* z, int64_t k) {
  acc_t<T> m = ld(z, 0);
  for (int64_t j = 1; j < k; ++j) m = max(m, ld(z, j));
  return m;
}

// p_j = softmax(z)_j is recomputed from (max, sum) as needed.
template <class T>
__device__ acc_t<T> row_sum_exp(const T* z, int64_t k, acc_t<T> m) {
  acc_t<T> s = 0;
  for (int64_t j = 0; j < k; ++j) s += exp(ld(z, j) - m);
  return s;
}

template <class T>
__device__ int64_t best_other(const T* z, int64_t k, int32_t y) {
  int64_t best = -1;
  for (int64_t j = 0; j < k; ++j)
    if (j != y && (best < 0 || ld(z, j) > ld(z, best))) best = j;
  return best;
}

template <class T>
Tensor cross_entropy_impl(const Tensor& z, const Tensor& labels, Logits v) {
  using S = acc_t<T>;
  Tensor out = new_stat(v.n, z);
  const T* pz = ptr<T>(z);
  const int32_t* y = ptr<int32_t>(labels);
  S* o = ptr<S>(out);
  int64_t k = v.k;
  for_each(v.n, [=] __device__(int64_t i) {
    if (y[i] < 0 || y[i] >= k) {
      o[i] = S(NAN);
      return;
    }
    const T* zi = pz + i * k;
    S m = row_max(zi, k);
    o[i] = m + log(row_sum_exp(zi, k, m)) - ld(zi, y[i]);
  });
  return out;
}

template <class T>
Tensor cross_entropy_backward_impl(const Tensor& z, const Tensor& labels, const Tensor& g, Logits v) {
  using S = acc_t<T>;
  Tensor dz = new_like(z);
  const T* pz = ptr<T>(z);
  const int32_t* y = ptr<int32_t>(labels);
  const S* pg = ptr<S>(g);
  T* o = ptr<T>(dz);
  int64_t k = v.k;
  for_each(v.n, [=] __device__(int64_t i) {
    const T* zi = pz + i * k;
    S m = row_max(zi, k), s = row_sum_exp(zi, k, m);
    for (int64_t j = 0; j < k; ++j) st(o, i * k + j, pg[i] * (exp(ld(zi, j) - m) / s - S(j == y[i])));
  });
  return dz;
}

template <class T>
Tensor cross_entropy_tangent_impl(const Tensor& z, const Tensor& labels, const Tensor& zdot, Logits v) {
  using S = acc_t<T>;
  Tensor out = new_stat(v.n, z);
  const T *pz = ptr<T>(z), *pd = ptr<T>(zdot);
  const int32_t* y = ptr<int32_t>(labels);
  S* o = ptr<S>(out);
  int64_t k = v.k;
  for_each(v.n, [=] __device__(int64_t i) {
    const T* zi = pz + i * k;
    S m = row_max(zi, k), s = row_sum_exp(zi, k, m), acc = 0;
    for (int64_t j = 0; j < k; ++j) acc += (exp(ld(zi, j) - m) / s - S(j == y[i])) * ld(pd, i * k + j);
    o[i] = acc;
  });
  return out;
}

template <class T>
std::pair<Tensor, Tensor> cross_entropy_tangent_backward_impl(const Tensor& z, const Tensor& labels,
                                                              const Tensor& zdot, const Tensor& g, Logits v) {
  using S = acc_t<T>;
  Tensor dz = new_like(z), dzd = new_like(z);
  const T *pz = ptr<T>(z), *pd = ptr<T>(zdot);
  const int32_t* y = ptr<int32_t>(labels);
  const S* pg = ptr<S>(g);
  T *o = ptr<T>(dz), *od = ptr<T>(dzd);
  int64_t k = v.k;
  for_each(v.n, [=] __device__(int64_t i) {
    const T* zi = pz + i * k;
    S m = row_max(zi, k), s = row_sum_exp(zi, k, m), pz_dot = 0;
    for (int64_t j = 0; j < k; ++j) pz_dot += exp(ld(zi, j) - m) / s * ld(pd, i * k + j);
    for (int64_t j = 0; j < k; ++j) {
      S p = exp(ld(zi, j) - m) / s;
      st(od, i * k + j, pg[i] * (p - S(j == y[i])));
      st(o, i * k + j, pg[i] * p * (ld(pd, i * k + j) - pz_dot));
    }
  });
  return {dz, dzd};
}

template <class T>
Tensor margin_loss_impl(const Tensor& z, const Tensor& labels, const Tensor& zdot, Logits v) {
  using S = acc_t<T>;
  Tensor out = new_stat(v.n, z);
  const T* pz = ptr<T>(z);
  const T* pd = zdot.defined() ? ptr<T>(zdot) : pz;  // the tangent picks the same entries from zdot
  const int32_t* y = ptr<int32_t>(labels);
  S* o = ptr<S>(out);
  int64_t k = v.k;
  for_each(v.n, [=] __device__(int64_t i) {
    if (y[i] < 0 || y[i] >= k) {
      o[i] = S(NAN);
      return;
    }
    int64_t j = best_other(pz + i * k, k, y[i]);
    o[i] = ld(pd, i * k + y[i]) - ld(pd, i * k + j);
  });
  return out;
}

template <class T>
Tensor margin_loss_backward_impl(const Tensor& z, const Tensor& labels, const Tensor& g, Logits v) {
  using S = acc_t<T>;
  Tensor dz = new_like(z);
  const T* pz = ptr<T>(z);
  const int32_t* y = ptr<int32_t>(labels);
  const S* pg = ptr<S>(g);
  T* o = ptr<T>(dz);
  int64_t k = v.k;
  for_each(v.n, [=] __device__(int64_t i) {
    int64_t best = best_other(pz + i * k, k, y[i]);
    for (int64_t j = 0; j < k; ++j) st(o, i * k + j, j == y[i] ? pg[i] : (j == best ? -pg[i] : S(0)));
  });
  return dz;
}

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

template <class T>
Tensor gather_impl(const Tensor& z, const Tensor& idx) {
  int64_t n = z.dim(0), k = z.dim(1);
  Tensor out = Tensor::empty({n}, z.dtype(), Layout::plain, Device::cuda);
  const T* pz = ptr<T>(z);
  const int32_t* pi = ptr<int32_t>(idx);
  T* o = ptr<T>(out);
  for_each(n, [=] __device__(int64_t i) {
    int32_t c = pi[i];
    st(o, i, (c >= 0 && c < k) ? ld(pz, i * k + c) : acc_t<T>(NAN));
  });
  return out;
}

template <class T>
Tensor scatter_impl(const Tensor& g, const Tensor& idx, int64_t k) {
  int64_t n = g.dim(0);
  Tensor out = Tensor::empty({n, k}, g.dtype(), Layout::plain, Device::cuda);
  const T* pg = ptr<T>(g);
  const int32_t* pi = ptr<int32_t>(idx);
  T* o = ptr<T>(out);
  for_each(n * k, [=] __device__(int64_t e) {
    int64_t i = e / k, c = e % k;
    st(o, e, c == pi[i] ? ld(pg, i) : acc_t<T>(0));
  });
  return out;
}

}  // namespace

Tensor CudaBackend::cross_entropy(const Tensor& z, const Tensor& labels) {
  Logits v = logits_view(z);
  return LLR_CUDA_DISPATCH(z.dtype(), "cross_entropy", cross_entropy_impl, z, labels, v);
}

Tensor CudaBackend::cross_entropy_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  Logits v = logits_view(z);
  return LLR_CUDA_DISPATCH(z.dtype(), "cross_entropy_backward", cross_entropy_backward_impl, z, labels, g, v);
}

Tensor CudaBackend::cross_entropy_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  Logits v = logits_view(z);
  return LLR_CUDA_DISPATCH(z.dtype(), "cross_entropy_tangent", cross_entropy_tangent_impl, z, labels, zdot, v);
}

std::pair<Tensor, Tensor> CudaBackend::cross_entropy_tangent_backward(const Tensor& z, const Tensor& labels,
                                                                      const Tensor& zdot, const Tensor& g) {
  Logits v = logits_view(z);
  return LLR_CUDA_DISPATCH(z.dtype(), "cross_entropy_tangent_backward", cross_entropy_tangent_backward_impl, z,
                           labels, zdot, g, v);
}

Tensor CudaBackend::margin_loss(const Tensor& z, const Tensor& labels) {
  Logits v = logits_view(z);
  return LLR_CUDA_DISPATCH(z.dtype(), "margin_loss", margin_loss_impl, z, labels, Tensor(), v);
}

Tensor CudaBackend::margin_loss_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  Logits v = logits_view(z);
  return LLR_CUDA_DISPATCH(z.dtype(), "margin_loss_backward", margin_loss_backward_impl, z, labels, g, v);
}

Tensor CudaBackend::margin_loss_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  Logits v = logits_view(z);
  return LLR_CUDA_DISPATCH(z.dtype(), "margin_loss_tangent", margin_loss_impl, z, labels, zdot, v);
}

Tensor CudaBackend::kl_div(const Tensor& zp, const Tensor& zq) {
  return LLR_CUDA_DISPATCH(zp.dtype(), "kl_div", kl_div_impl, zp, zq);
}

std::pair<Tensor, Tensor> CudaBackend::kl_div_backward(const Tensor& zp, const Tensor& zq, const Tensor& g) {
  return LLR_CUDA_DISPATCH(zp.dtype(), "kl_div_backward", kl_div_backward_impl, zp, zq, g);
}

Tensor CudaBackend::gather_columns(const Tensor& z, const Tensor& idx) {
  return LLR_CUDA_DISPATCH(z.dtype(), "gather_columns", gather_impl, z, idx);
}

Tensor CudaBackend::scatter_columns(const Tensor& g, const Tensor& idx, int64_t k) {
  return LLR_CUDA_DISPATCH(g.dtype(), "scatter_columns", scatter_impl, g, idx, k);
}

}  // namespace llr::cuda
