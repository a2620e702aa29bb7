// CPU backend: max pooling (NHWC) forward, backward and tangent; the window arithmetic is shared with the CUDA
// kernels (engine/elementwise_math.h).
#include "engine/cpu/cpu_backend.h"

namespace llr {

namespace {
struct PoolDims {
  int64_t n, h, w, c, p, q;
};
PoolDims pool_dims(const Tensor& x, int k, int stride, int pad) {
  Conv2dGeometry g{stride, pad};
  return {x.dim(0), x.dim(1), x.dim(2), x.dim(3), conv2d_output_size(x.dim(1), k, g), conv2d_output_size(x.dim(2), k, g)};
}
// f(output index, flat index of the window's first maximum or -1) for every output element.
template <class T, class F>
void for_each_window_max(const T* px, const PoolDims& d, int k, int stride, int pad, F f) {
  auto at = [px](int64_t i) { return px[i]; };
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t p = 0; p < d.p; ++p)
      for (int64_t q = 0; q < d.q; ++q)
        for (int64_t c = 0; c < d.c; ++c)
          f(((n * d.p + p) * d.q + q) * d.c + c,
            math::max_pool_argmax<T>(at, n, p, q, c, d.h, d.w, d.c, k, stride, pad));
}
}  // namespace

Tensor CpuBackend::max_pool_forward(const Tensor& x, int k, int stride, int pad) {
  PoolDims d = pool_dims(x, k, stride, pad);
  return dispatch_floating(x.dtype(), "max_pool", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    Tensor y = Tensor::empty({d.n, d.p, d.q, d.c}, x.dtype(), Layout::nhwc);
    T* o = y.data<T>();
    for_each_window_max(px, d, k, stride, pad, [&](int64_t e, int64_t i) { o[e] = i < 0 ? T(0) : px[i]; });
    return y;
  });
}

Tensor CpuBackend::max_pool_backward(const Tensor& x, const Tensor& gy, int k, int stride, int pad) {
  PoolDims d = pool_dims(x, k, stride, pad);
  return dispatch_floating(x.dtype(), "max_pool_backward", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *g = gy.data<T>();
    Tensor dx = Tensor::zeros(x.shape(), x.dtype(), Layout::nhwc);
    T* o = dx.data<T>();
    for_each_window_max(px, d, k, stride, pad, [&](int64_t e, int64_t i) {
      if (i >= 0) o[i] += g[e];
    });
    return dx;
  });
}

Tensor CpuBackend::max_pool_gather(const Tensor& x, const Tensor& xdot, int k, int stride, int pad) {
  PoolDims d = pool_dims(x, k, stride, pad);
  return dispatch_floating(x.dtype(), "max_pool_tangent", [&](auto tag) {
    using T = decltype(tag);
    const T *px = x.data<T>(), *pd = xdot.data<T>();
    Tensor y = Tensor::empty({d.n, d.p, d.q, d.c}, x.dtype(), Layout::nhwc);
    T* o = y.data<T>();
    for_each_window_max(px, d, k, stride, pad, [&](int64_t e, int64_t i) { o[e] = i < 0 ? T(0) : pd[i]; });
    return y;
  });
}

}  // namespace llr
