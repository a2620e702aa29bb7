// CPU backend: elementwise, broadcasting, reduction and activation functions.
#include <algorithm>
#include <cstring>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/cpu_common.h"

namespace llr {

namespace cpu {
void require_in_range(const char* op, const char* what, const Tensor& idx, int64_t classes) {
  const int32_t* y = idx.data<int32_t>();
  for (int64_t i = 0, n = idx.numel(); i < n; ++i)
    LLR_CHECK(y[i] >= 0 && y[i] < classes, op, ": ", what, " ", y[i], " of example ", i, " is outside [0, ", classes,
              ")");
}
}  // namespace cpu

using cpu::kParallelMin;

void CpuBackend::fill(Tensor& t, double value) {
  switch (t.dtype()) {
    case DType::f32: std::fill(t.data<float>(), t.data<float>() + t.numel(), static_cast<float>(value)); return;
    case DType::f64: std::fill(t.data<double>(), t.data<double>() + t.numel(), value); return;
    case DType::i32: std::fill(t.data<int32_t>(), t.data<int32_t>() + t.numel(), static_cast<int32_t>(value)); return;
    case DType::u8: std::fill(t.data<uint8_t>(), t.data<uint8_t>() + t.numel(), static_cast<uint8_t>(value)); return;
    case DType::bf16: break;
  }
  LLR_FAIL("fill: bf16 is not supported on the CPU");
}

Tensor CpuBackend::convert(const Tensor& x, DType dtype) {
  LLR_CHECK(x.dtype() != DType::bf16 && dtype != DType::bf16, "convert: bf16 is not supported on the CPU");
  if (x.dtype() == DType::u8 && is_floating(dtype)) {  // pixels 0..255 to [0, 1]
    Tensor out = Tensor::empty(x.shape(), dtype, x.layout());
    const uint8_t* p = x.data<uint8_t>();
    dispatch_floating(dtype, "convert", [&](auto tag) {
      using T = decltype(tag);
      T* o = out.data<T>();
      for (int64_t i = 0, n_ = x.numel(); i < n_; ++i) o[i] = static_cast<T>(p[i]) / T(255);
      return 0;
    });
    return out;
  }
  Tensor out = Tensor::empty(x.shape(), dtype, x.layout());
  for (int64_t i = 0, n_ = x.numel(); i < n_; ++i) out.set(i, x.at(i));
  return out;
}

template <class F>
static Tensor binary(const char* op, const Tensor& a, const Tensor& b, F f) {
  return dispatch_floating(a.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(a.shape(), a.dtype(), a.layout());
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* o = out.data<T>();
    const int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
    return out;
  });
}

Tensor CpuBackend::add(const Tensor& a, const Tensor& b) {
  return binary("add", a, b, [](auto x, auto y) { return x + y; });
}
Tensor CpuBackend::add_widening(const Tensor& a, const Tensor& b) {
  if (a.dtype() == b.dtype()) return add(a, b);
  DType w = a.dtype() == DType::f64 || b.dtype() == DType::f64 ? DType::f64 : DType::f32;
  return add(a.dtype() == w ? a : convert(a, w), b.dtype() == w ? b : convert(b, w));
}
Tensor CpuBackend::sub(const Tensor& a, const Tensor& b) {
  return binary("sub", a, b, [](auto x, auto y) { return x - y; });
}
Tensor CpuBackend::mul(const Tensor& a, const Tensor& b) {
  return binary("mul", a, b, [](auto x, auto y) { return x * y; });
}

Tensor CpuBackend::div(const Tensor& a, const Tensor& b) {
  return binary("div", a, b, [](auto x, auto y) { return x / y; });
}

Tensor CpuBackend::scale(const Tensor& x, double s) {
  return dispatch_floating(x.dtype(), "scale", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(x.shape(), x.dtype(), x.layout());
    const T* px = x.data<T>();
    T* o = out.data<T>();
    const int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<T>(s) * px[i];
    return out;
  });
}

static int64_t per_example_size(const Tensor& x) { return x.numel() / x.dim(0); }

Tensor CpuBackend::scale_per_example(const Tensor& x, const Tensor& c) {
  int64_t inner = per_example_size(x);
  return dispatch_floating(x.dtype(), "scale_per_example", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(x.shape(), x.dtype(), x.layout());
    const T* px = x.data<T>();
    const T* pc = c.data<T>();
    T* o = out.data<T>();
    for (int64_t n = 0; n < x.dim(0); ++n)
      for (int64_t j = 0; j < inner; ++j) o[n * inner + j] = px[n * inner + j] * pc[n];
    return out;
  });
}

Tensor CpuBackend::per_example_dot(const Tensor& a, const Tensor& b) {
  int64_t inner = per_example_size(a);
  return dispatch_floating(a.dtype(), "per_example_dot", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({a.dim(0)}, a.dtype());
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* o = out.data<T>();
    for (int64_t n = 0; n < a.dim(0); ++n) {
      double acc = 0;
      for (int64_t j = 0; j < inner; ++j) acc += double(pa[n * inner + j]) * double(pb[n * inner + j]);
      o[n] = static_cast<T>(acc);
    }
    return out;
  });
}

Tensor CpuBackend::sum_all(const Tensor& x) {
  return dispatch_floating(x.dtype(), "sum", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    double acc = 0;
    for (int64_t i = 0, n_ = x.numel(); i < n_; ++i) acc += px[i];
    return Tensor::scalar(acc, x.dtype());
  });
}

Tensor CpuBackend::broadcast_scalar(const Tensor& s, const Tensor& like) {
  return backend::full_like(like, s.at(0));
}

Tensor CpuBackend::bias_add(const Tensor& x, const Tensor& b) {
  auto v = cpu::channel_view(x);
  return dispatch_floating(x.dtype(), "bias_add", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(x.shape(), x.dtype(), x.layout());
    const T* px = x.data<T>();
    const T* pb = b.data<T>();
    T* o = out.data<T>();
    for (int64_t r = 0; r < v.rows; ++r)
      for (int64_t c = 0; c < v.channels; ++c) o[r * v.channels + c] = px[r * v.channels + c] + pb[c];
    return out;
  });
}

Tensor CpuBackend::sum_to_last_axis(const Tensor& g) {
  auto v = cpu::channel_view(g);
  return dispatch_floating(g.dtype(), "sum_to_last_axis", [&](auto tag) {
    using T = decltype(tag);
    std::vector<double> acc(v.channels, 0.0);
    const T* pg = g.data<T>();
    for (int64_t r = 0; r < v.rows; ++r)
      for (int64_t c = 0; c < v.channels; ++c) acc[c] += pg[r * v.channels + c];
    Tensor out = Tensor::empty({v.channels}, g.dtype());
    T* o = out.data<T>();
    for (int64_t c = 0; c < v.channels; ++c) o[c] = static_cast<T>(acc[c]);
    return out;
  });
}

Tensor CpuBackend::activation_forward(Act act, const Tensor& a) {
  return dispatch_floating(a.dtype(), "activation", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(a.shape(), a.dtype(), a.layout());
    const T* pa = a.data<T>();
    T* o = out.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) o[i] = math::activation_derivative<T>(act, 0, pa[i]);
    return out;
  });
}

Tensor CpuBackend::activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t, const Tensor& t2) {
  return dispatch_floating(a.dtype(), "activation_derivative_mul", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(a.shape(), a.dtype(), t.layout());
    const T* pa = a.data<T>();
    const T* pt = t.data<T>();
    const T* pt2 = t2.defined() ? t2.data<T>() : nullptr;
    T* o = out.data<T>();
    const int64_t n = a.numel();
    // The activation and the order (1 to 3) as compile-time constants, and no branch on pt2 inside: the loops
    // vectorise.
    // The pointers are copied into the loop's own restrict-qualified locals: read through the lambda's captured
    // references, each store to o could change them, and the loop would neither vectorise nor lose its branch.
    auto run = [&](auto act_c, auto order_c) {
      const T* __restrict__ a_ = pa;
      const T* __restrict__ t_ = pt;
      const T* __restrict__ t2_ = pt2;
      T* __restrict__ o_ = o;
      if (t2_) {
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
        for (int64_t i = 0; i < n; ++i) o_[i] = math::activation_derivative<T>(act_c(), order_c(), a_[i]) * t_[i] * t2_[i];
      } else {
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
        for (int64_t i = 0; i < n; ++i) o_[i] = math::activation_derivative<T>(act_c(), order_c(), a_[i]) * t_[i];
      }
    };
    cpu::with_act(act, [&](auto act_c) {
      switch (order) {
        case 1: return run(act_c, std::integral_constant<int, 1>{});
        case 2: return run(act_c, std::integral_constant<int, 2>{});
        default: return run(act_c, std::integral_constant<int, 3>{});
      }
    });
    return out;
  });
}

Tensor CpuBackend::global_avg_pool(const Tensor& x) {
  int64_t n = x.dim(0), hw = x.dim(1) * x.dim(2), c = x.dim(3);
  return dispatch_floating(x.dtype(), "global_avg_pool", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({n, c}, x.dtype());
    const T* px = x.data<T>();
    T* o = out.data<T>();
    std::vector<double> acc(c);
    for (int64_t i = 0; i < n; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = 0; p < hw; ++p)
        for (int64_t k = 0; k < c; ++k) acc[k] += px[(i * hw + p) * c + k];
      for (int64_t k = 0; k < c; ++k) o[i * c + k] = static_cast<T>(acc[k] / double(hw));
    }
    return out;
  });
}

Tensor CpuBackend::global_avg_pool_backward(const Tensor& gy, const Shape& x_shape) {
  int64_t n = x_shape[0], hw = x_shape[1] * x_shape[2], c = x_shape[3];
  return dispatch_floating(gy.dtype(), "global_avg_pool_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(x_shape, gy.dtype(), Layout::nhwc);
    const T* pg = gy.data<T>();
    T* o = out.data<T>();
    T inv = T(1) / T(hw);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < hw; ++p)
        for (int64_t k = 0; k < c; ++k) o[(i * hw + p) * c + k] = pg[i * c + k] * inv;
    return out;
  });
}

}  // namespace llr
