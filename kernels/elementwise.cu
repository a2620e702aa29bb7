// CUDA backend: fill and conversion, elementwise ops, per-example ops, reductions, bias, activations, global pooling.
// Per-element formulas come from engine/elementwise_math.h, shared with the CPU backend.
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

namespace {

// Kernel names (see for_each_pack in cuda_common.cuh).
struct fill_k {};
struct convert_k {};
struct add_k {};
struct sub_k {};
struct mul_k {};
struct div_k {};
struct add_widening_k {};
struct scale_k {};
struct scale_per_example_k {};
struct bias_add_k {};
struct activation_k {};
struct activation_derivative_mul_k {};

template <class T>
void fill_impl(Tensor& t, double value) {
  T* p = ptr<T>(t);
  acc_t<T> v = static_cast<acc_t<T>>(value);
  for_each_pack<fill_k>(t.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> o;
#pragma unroll
    for (int k = 0; k < kPack; ++k) o[k] = v;
    store_pack(p, i, o, n);
  });
}

template <class I>
void fill_integer(Tensor& t, double value) {
  I* p = ptr<I>(t);
  I v = static_cast<I>(value);
  for_each(t.numel(), [=] __device__(int64_t i) { p[i] = v; });
}

// Pixels 0..255 to [0, 1].
template <class Dst>
void convert_u8(const Tensor& x, Tensor& out) {
  const uint8_t* s = ptr<uint8_t>(x);
  Dst* d = ptr<Dst>(out);
  for_each(x.numel(), [=] __device__(int64_t i) { st(d, i, acc_t<Dst>(s[i]) / acc_t<Dst>(255)); });
}

template <class Src, class Dst>
void convert_pair(const Tensor& x, Tensor& out) {
  const Src* s = ptr<Src>(x);
  Dst* d = ptr<Dst>(out);
  for_each_pack<convert_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<Src> a = load_pack(s, i, n);
    Pack<Dst> o;
#pragma unroll
    for (int k = 0; k < kPack; ++k) o[k] = static_cast<acc_t<Dst>>(static_cast<double>(a[k]));
    store_pack(d, i, o, n);
  });
}

template <class Src>
void convert_from(const Tensor& x, Tensor& out) {
  switch (out.dtype()) {
    case DType::f32: return convert_pair<Src, float>(x, out);
    case DType::f64: return convert_pair<Src, double>(x, out);
    case DType::bf16: return convert_pair<Src, bf16>(x, out);
    default: LLR_FAIL("convert: cannot convert to ", dtype_name(out.dtype()));
  }
}

enum class Binary { add, sub, mul, div };

// out = f(a, b) element by element; a and b in A and B, out in O (T, T, T but for add_widening).
template <class Name, class O, class A, class B, class F>
void binary_packs(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const A* pa = ptr<A>(a);
  const B* pb = ptr<B>(b);
  O* o = ptr<O>(out);
  for_each_pack<Name>(a.numel(), [=] __device__(int64_t i, int n) {
    Pack<A> x = load_pack(pa, i, n);
    Pack<B> y = load_pack(pb, i, n);
    Pack<O> z;
#pragma unroll
    for (int k = 0; k < kPack; ++k) z[k] = f(x[k], y[k]);
    store_pack(o, i, z, n);
  });
}

template <class T>
Tensor binary_impl(const Tensor& a, const Tensor& b, Binary op) {
  using S = acc_t<T>;
  Tensor out = new_like(a);
  switch (op) {
    case Binary::add: binary_packs<add_k, T, T, T>(a, b, out, [] __device__(S x, S y) { return x + y; }); break;
    case Binary::sub: binary_packs<sub_k, T, T, T>(a, b, out, [] __device__(S x, S y) { return x - y; }); break;
    case Binary::mul: binary_packs<mul_k, T, T, T>(a, b, out, [] __device__(S x, S y) { return x * y; }); break;
    case Binary::div: binary_packs<div_k, T, T, T>(a, b, out, [] __device__(S x, S y) { return x / y; }); break;
  }
  return out;
}

Tensor binary(const char* name, const Tensor& a, const Tensor& b, Binary op) {
  return LLR_CUDA_DISPATCH(a.dtype(), name, binary_impl, a, b, op);
}

template <class T>
Tensor scale_impl(const Tensor& x, double s) {
  Tensor out = new_like(x);
  const T* px = ptr<T>(x);
  T* o = ptr<T>(out);
  acc_t<T> f = static_cast<acc_t<T>>(s);
  for_each_pack<scale_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> a = load_pack(px, i, n);
#pragma unroll
    for (int k = 0; k < kPack; ++k) a[k] = f * a[k];
    store_pack(o, i, a, n);
  });
  return out;
}

template <class T>
Tensor scale_per_example_impl(const Tensor& x, const Tensor& c) {
  int64_t inner = x.numel() / x.dim(0);
  Tensor out = new_like(x);
  const T* px = ptr<T>(x);
  const acc_t<T>* pc = ptr<acc_t<T>>(c);
  T* o = ptr<T>(out);
  for_each_pack<scale_per_example_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> a = load_pack(px, i, n);
#pragma unroll
    for (int64_t k = 0, r = i / inner, j = i - r * inner; k < kPack; ++k) {  // example r, offset j in it
      if (k < n) a[k] = a[k] * pc[r];
      if (++j == inner) j = 0, ++r;
    }
    store_pack(o, i, a, n);
  });
  return out;
}

template <class T>
Tensor per_example_dot_impl(const Tensor& a, const Tensor& b) {
  int64_t inner = a.numel() / a.dim(0);
  Tensor out = new_stat(a.dim(0), a);
  const T *pa = ptr<T>(a), *pb = ptr<T>(b);
  row_sum<acc_t<T>>(a.dim(0), inner, [=] __device__(int64_t r, int64_t j) {
    return ld(pa, r * inner + j) * ld(pb, r * inner + j);
  }, ptr<acc_t<T>>(out));
  return out;
}

template <class T>
Tensor sum_all_impl(const Tensor& x) {
  Tensor out = Tensor::empty({}, stat_dtype(x.dtype()), Layout::plain, Device::cuda);
  const T* px = ptr<T>(x);
  total_sum<acc_t<T>>(x.numel(), [=] __device__(int64_t i) { return ld(px, i); }, ptr<acc_t<T>>(out));
  return out;
}

template <class T>
Tensor broadcast_scalar_impl(const Tensor& s, const Tensor& like) {
  Tensor out = new_like(like);
  const acc_t<T>* ps = ptr<acc_t<T>>(s);
  T* o = ptr<T>(out);
  for_each(like.numel(), [=] __device__(int64_t i) { st(o, i, ps[0]); });
  return out;
}

template <class T>
Tensor bias_add_impl(const Tensor& x, const Tensor& b, int64_t channels) {
  Tensor out = new_like(x);
  const T* px = ptr<T>(x);
  const acc_t<T>* pb = ptr<acc_t<T>>(b);
  T* o = ptr<T>(out);
  for_each_pack<bias_add_k>(x.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> a = load_pack(px, i, n);
    Pack<acc_t<T>> bs = load_channels(pb, channel_of(i, channels), channels);
#pragma unroll
    for (int k = 0; k < kPack; ++k) a[k] = a[k] + bs[k];
    store_pack(o, i, a, n);
  });
  return out;
}

template <class T>
Tensor sum_to_last_axis_impl(const Tensor& g, int64_t rows, int64_t channels) {
  Tensor out = new_stat(channels, g);
  const T* pg = ptr<T>(g);
  channel_sum<1, acc_t<T>>(rows, channels, [=] __device__(int64_t i, int64_t, int n, PackSums<1, acc_t<T>>& v) {
    Pack<T> gs = load_pack(pg, i, n);
#pragma unroll
    for (int j = 0; j < kPack; ++j) v.v[0][j] = gs[j];
  }, ptr<acc_t<T>>(out));
  return out;
}

template <class T>
Tensor activation_forward_impl(Act act, const Tensor& a) {
  Tensor out = new_like(a);
  const T* pa = ptr<T>(a);
  T* o = ptr<T>(out);
  for_each_pack<activation_k>(a.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> v = load_pack(pa, i, n);
#pragma unroll
    for (int k = 0; k < kPack; ++k) v[k] = math::activation_derivative<acc_t<T>>(act, 0, v[k]);
    store_pack(o, i, v, n);
  });
  return out;
}

template <class T>
Tensor activation_derivative_mul_impl(Act act, int order, const Tensor& a, const Tensor& t, const Tensor& t2) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), t.layout(), Device::cuda);
  const T *pa = ptr<T>(a), *pt = ptr<T>(t), *pt2 = ptr_or_null<T>(t2);
  T* o = ptr<T>(out);
  for_each_pack<activation_derivative_mul_k>(a.numel(), [=] __device__(int64_t i, int n) {
    Pack<T> va = load_pack(pa, i, n), vt = load_pack(pt, i, n), v2;
    if (pt2) v2 = load_pack(pt2, i, n);
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      acc_t<T> v = math::activation_derivative<acc_t<T>>(act, order, va[k]) * vt[k];
      va[k] = pt2 ? v * v2[k] : v;
    }
    store_pack(o, i, va, n);
  });
  return out;
}

template <class T>
Tensor global_avg_pool_impl(const Tensor& x) {
  int64_t n = x.dim(0), hw = x.dim(1) * x.dim(2), c = x.dim(3);
  Tensor out = Tensor::empty({n, c}, x.dtype(), Layout::plain, Device::cuda);
  const T* px = ptr<T>(x);
  T* o = ptr<T>(out);
  acc_t<T> inv = acc_t<T>(1) / acc_t<T>(hw);
  for_each(n * c, [=] __device__(int64_t i) {
    int64_t img = i / c, ch = i % c;
    acc_t<T> s = 0;
    for (int64_t p = 0; p < hw; ++p) s += ld(px, (img * hw + p) * c + ch);
    st(o, i, s * inv);
  });
  return out;
}

template <class T>
Tensor global_avg_pool_backward_impl(const Tensor& gy, const Shape& x_shape) {
  int64_t hw = x_shape[1] * x_shape[2], c = x_shape[3];
  Tensor out = Tensor::empty(x_shape, gy.dtype(), Layout::nhwc, Device::cuda);
  const T* pg = ptr<T>(gy);
  T* o = ptr<T>(out);
  acc_t<T> inv = acc_t<T>(1) / acc_t<T>(hw);
  for_each(shape_numel(x_shape), [=] __device__(int64_t i) {
    int64_t img = i / (hw * c), ch = i % c;
    st(o, i, ld(pg, img * c + ch) * inv);
  });
  return out;
}

}  // namespace

void CudaBackend::synchronize() { context().synchronize(); }

void CudaBackend::fill(Tensor& t, double value) {
  if (t.dtype() == DType::i32) return fill_integer<int32_t>(t, value);
  if (t.dtype() == DType::u8) return fill_integer<uint8_t>(t, value);
  LLR_CUDA_DISPATCH(t.dtype(), "fill", fill_impl, t, value);
}

Tensor CudaBackend::convert(const Tensor& x, DType dtype) {
  Tensor out = Tensor::empty(x.shape(), dtype, x.layout(), Device::cuda);
  if (x.dtype() == DType::u8) {
    LLR_CUDA_DISPATCH(dtype, "convert", convert_u8, x, out);
    return out;
  }
  switch (x.dtype()) {
    case DType::f32: convert_from<float>(x, out); break;
    case DType::f64: convert_from<double>(x, out); break;
    case DType::bf16: convert_from<bf16>(x, out); break;
    default: LLR_FAIL("convert: no conversion from ", x.describe());
  }
  return out;
}

Tensor CudaBackend::add(const Tensor& a, const Tensor& b) { return binary("add", a, b, Binary::add); }

namespace {
template <class A, class B>
Tensor add_into_f32(const Tensor& a, const Tensor& b) {
  Tensor out = Tensor::empty(a.shape(), DType::f32, a.layout(), Device::cuda);
  binary_packs<add_widening_k, float, A, B>(a, b, out, [] __device__(float x, float y) { return x + y; });
  return out;
}
}  // namespace

Tensor CudaBackend::add_widening(const Tensor& a, const Tensor& b) {
  if (a.dtype() == b.dtype()) return add(a, b);
  if (a.dtype() == DType::bf16 && b.dtype() == DType::f32) return add_into_f32<bf16, float>(a, b);
  if (a.dtype() == DType::f32 && b.dtype() == DType::bf16) return add_into_f32<float, bf16>(a, b);
  DType w = a.dtype() == DType::f64 || b.dtype() == DType::f64 ? DType::f64 : DType::f32;
  return add(a.dtype() == w ? a : convert(a, w), b.dtype() == w ? b : convert(b, w));
}
Tensor CudaBackend::sub(const Tensor& a, const Tensor& b) { return binary("sub", a, b, Binary::sub); }
Tensor CudaBackend::mul(const Tensor& a, const Tensor& b) { return binary("mul", a, b, Binary::mul); }
Tensor CudaBackend::div(const Tensor& a, const Tensor& b) { return binary("div", a, b, Binary::div); }

Tensor CudaBackend::scale(const Tensor& x, double s) {
  return LLR_CUDA_DISPATCH(x.dtype(), "scale", scale_impl, x, s);
}

Tensor CudaBackend::scale_per_example(const Tensor& x, const Tensor& c) {
  return LLR_CUDA_DISPATCH(x.dtype(), "scale_per_example", scale_per_example_impl, x, c);
}

Tensor CudaBackend::per_example_dot(const Tensor& a, const Tensor& b) {
  return LLR_CUDA_DISPATCH(a.dtype(), "per_example_dot", per_example_dot_impl, a, b);
}

Tensor CudaBackend::sum_all(const Tensor& x) {
  return LLR_CUDA_DISPATCH(x.dtype(), "sum", sum_all_impl, x);
}

Tensor CudaBackend::broadcast_scalar(const Tensor& s, const Tensor& like) {
  return LLR_CUDA_DISPATCH(like.dtype(), "broadcast_scalar", broadcast_scalar_impl, s, like);
}

Tensor CudaBackend::bias_add(const Tensor& x, const Tensor& b) {
  int64_t rows, channels;
  channel_view(x, rows, channels);
  return LLR_CUDA_DISPATCH(x.dtype(), "bias_add", bias_add_impl, x, b, channels);
}

Tensor CudaBackend::sum_to_last_axis(const Tensor& g) {
  int64_t rows, channels;
  channel_view(g, rows, channels);
  return LLR_CUDA_DISPATCH(g.dtype(), "sum_to_last_axis", sum_to_last_axis_impl, g, rows, channels);
}

Tensor CudaBackend::activation_forward(Act act, const Tensor& a) {
  return LLR_CUDA_DISPATCH(a.dtype(), "activation", activation_forward_impl, act, a);
}

Tensor CudaBackend::activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t, const Tensor& t2) {
  return LLR_CUDA_DISPATCH(a.dtype(), "activation_derivative_mul", activation_derivative_mul_impl, act, order, a, t,
                           t2);
}

Tensor CudaBackend::global_avg_pool(const Tensor& x) {
  return LLR_CUDA_DISPATCH(x.dtype(), "global_avg_pool", global_avg_pool_impl, x);
}

Tensor CudaBackend::global_avg_pool_backward(const Tensor& gy, const Shape& x_shape) {
  return LLR_CUDA_DISPATCH(gy.dtype(), "global_avg_pool_backward", global_avg_pool_backward_impl, gy, x_shape);
}

}  // namespace llr::cuda
