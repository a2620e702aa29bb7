// CUDA backend: the raw functions attacks need (column gather/scatter, division, the APGD step, row selection).
// Per-element math: engine/perturbation_math.h, shared with the CPU backend.
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

namespace {

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

template <class T>
Tensor div_impl(const Tensor& a, const Tensor& b) {
  Tensor out = new_like(a);
  const T *pa = ptr<T>(a), *pb = ptr<T>(b);
  T* o = ptr<T>(out);
  for_each(a.numel(), [=] __device__(int64_t i) { st(o, i, ld(pa, i) / ld(pb, i)); });
  return out;
}

template <class T>
void apgd_impl(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
               double alpha, double eps) {
  int64_t inner = delta.numel() / delta.dim(0);
  T *d = ptr<T>(delta), *dp = ptr<T>(delta_prev);
  const T *px = ptr<T>(x), *pg = ptr<T>(grad), *pe = ptr<T>(eta);
  T a = T(alpha), e = T(eps);
  for_each(delta.numel(), [=] __device__(int64_t i) {
    T old = d[i];
    d[i] = perturbation_math::apgd<T>(old, dp[i], px[i], pg[i], pe[i / inner], a, e);
    dp[i] = old;
  });
}

}  // namespace

Tensor CudaBackend::gather_columns(const Tensor& z, const Tensor& idx) {
  require_cuda_floating("gather_columns", {&z});
  LLR_CHECK(z.rank() == 2, "gather_columns: expected [N, K], got ", z.describe());
  require_labels("gather_columns", idx, z.dim(0));
  return LLR_CUDA_DISPATCH(z.dtype(), "gather_columns", gather_impl, z, idx);
}

Tensor CudaBackend::scatter_columns(const Tensor& g, const Tensor& idx, int64_t k) {
  require_cuda_floating("scatter_columns", {&g});
  LLR_CHECK(g.rank() == 1, "scatter_columns: expected [N], got ", g.describe());
  require_labels("scatter_columns", idx, g.dim(0));
  return LLR_CUDA_DISPATCH(g.dtype(), "scatter_columns", scatter_impl, g, idx, k);
}

Tensor CudaBackend::div(const Tensor& a, const Tensor& b) {
  require_cuda_floating("div", {&a, &b});
  require_same_shape("div", a, b);
  return LLR_CUDA_DISPATCH(a.dtype(), "div", div_impl, a, b);
}

void CudaBackend::apgd_step(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
                            double alpha, double eps) {
  LLR_NVTX_RANGE("apgd_step");
  require_cuda_floating("apgd_step", {&delta, &delta_prev, &x, &grad, &eta});
  require_same_shape("apgd_step", delta, delta_prev);
  require_same_shape("apgd_step", delta, x);
  require_same_shape("apgd_step", delta, grad);
  LLR_CHECK(eta.shape() == Shape({delta.dim(0)}), "apgd_step: eta must be [N], got ", eta.describe());
  LLR_CHECK(delta.dtype() != DType::bf16, "apgd_step: perturbations are kept in f32 or f64");
  if (delta.dtype() == DType::f64)
    apgd_impl<double>(delta, delta_prev, x, grad, eta, alpha, eps);
  else
    apgd_impl<float>(delta, delta_prev, x, grad, eta, alpha, eps);
}

Tensor CudaBackend::select_rows(const Tensor& a, const Tensor& b, const Tensor& mask) {
  require_same_shape("select_rows", a, b);
  LLR_CHECK(a.dtype() == b.dtype() && a.device() == Device::cuda && b.device() == Device::cuda,
            "select_rows: a and b must be GPU tensors of one dtype");
  LLR_CHECK(mask.rank() == 1 && mask.dim(0) == a.dim(0) && mask.device() == Device::cuda &&
                (mask.dtype() == DType::f32 || mask.dtype() == DType::f64),
            "select_rows: mask must be an f32/f64 GPU vector of length ", a.dim(0), ", got ", mask.describe());
  Tensor out = a.clone();
  int64_t row = a.numel() / a.dim(0) * static_cast<int64_t>(dtype_size(a.dtype()));
  uint8_t* o = static_cast<uint8_t*>(out.raw_data());
  const uint8_t* pb = static_cast<const uint8_t*>(b.raw_data());
  bool f64 = mask.dtype() == DType::f64;
  const void* pm = mask.raw_data();
  for_each(a.numel() * static_cast<int64_t>(dtype_size(a.dtype())), [=] __device__(int64_t byte) {
    int64_t i = byte / row;
    bool take = f64 ? static_cast<const double*>(pm)[i] != 0 : static_cast<const float*>(pm)[i] != 0;
    if (take) o[byte] = pb[byte];
  });
  return out;
}

}  // namespace llr::cuda
