// CUDA backend: max pooling (NHWC) forward, backward (atomic scatter to the window's first maximum) and tangent.
// Window arithmetic: engine/elementwise_math.h, shared with the CPU backend.
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

namespace {

struct PoolDims {
  int64_t n, h, w, c, p, q;
};

PoolDims pool_dims(const Tensor& x, int k, int stride, int pad) {
  Conv2dGeometry g{stride, pad};
  return {x.dim(0), x.dim(1), x.dim(2), x.dim(3), conv2d_output_size(x.dim(1), k, g), conv2d_output_size(x.dim(2), k, g)};
}

// mode 0: forward (value of x), 1: tangent (value of xdot), at the window's first maximum.
template <class T>
Tensor pool_gather_impl(const Tensor& x, const Tensor& src, PoolDims d, int k, int stride, int pad) {
  Tensor y = Tensor::empty({d.n, d.p, d.q, d.c}, x.dtype(), Layout::nhwc, Device::cuda);
  const T *px = ptr<T>(x), *ps = ptr<T>(src);
  T* o = ptr<T>(y);
  for_each(y.numel(), [=] __device__(int64_t e) {
    int64_t c = e % d.c, pix = e / d.c, q = pix % d.q, p = (pix / d.q) % d.p, n = pix / (d.q * d.p);
    auto at = [px](int64_t i) { return ld(px, i); };
    int64_t i = math::max_pool_argmax<acc_t<T>>(at, n, p, q, c, d.h, d.w, d.c, k, stride, pad);
    st(o, e, i < 0 ? acc_t<T>(0) : ld(ps, i));
  });
  return y;
}

template <class T>
Tensor pool_backward_impl(const Tensor& x, const Tensor& gy, PoolDims d, int k, int stride, int pad) {
  // Accumulate in the statistics type (atomics), then convert.
  using S = acc_t<T>;
  Tensor acc = Tensor::zeros(x.shape(), stat_dtype(x.dtype()), Layout::nhwc, Device::cuda);
  const T *px = ptr<T>(x), *pg = ptr<T>(gy);
  S* pa = ptr<S>(acc);
  for_each(gy.numel(), [=] __device__(int64_t e) {
    int64_t c = e % d.c, pix = e / d.c, q = pix % d.q, p = (pix / d.q) % d.p, n = pix / (d.q * d.p);
    auto at = [px](int64_t i) { return ld(px, i); };
    int64_t i = math::max_pool_argmax<S>(at, n, p, q, c, d.h, d.w, d.c, k, stride, pad);
    if (i >= 0) atomicAdd(pa + i, ld(pg, e));
  });
  return acc.dtype() == x.dtype() ? acc : acc.to(x.dtype());
}

}  // namespace

Tensor CudaBackend::max_pool_forward(const Tensor& x, int k, int stride, int pad) {
  PoolDims d = pool_dims(x, k, stride, pad);
  return LLR_CUDA_DISPATCH(x.dtype(), "max_pool", pool_gather_impl, x, x, d, k, stride, pad);
}

Tensor CudaBackend::max_pool_backward(const Tensor& x, const Tensor& gy, int k, int stride, int pad) {
  PoolDims d = pool_dims(x, k, stride, pad);
  return LLR_CUDA_DISPATCH(x.dtype(), "max_pool_backward", pool_backward_impl, x, gy, d, k, stride, pad);
}

Tensor CudaBackend::max_pool_gather(const Tensor& x, const Tensor& xdot, int k, int stride, int pad) {
  PoolDims d = pool_dims(x, k, stride, pad);
  return LLR_CUDA_DISPATCH(x.dtype(), "max_pool_tangent", pool_gather_impl, x, xdot, d, k, stride, pad);
}

}  // namespace llr::cuda
