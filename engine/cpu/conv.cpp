// CPU backend: convolution (NHWC activations, KRSC filters) by im2col + Eigen GEMM or, for narrow layers, directly
// (engine/cpu/conv_direct.h), and matrix products. The im2col buffer is built for a chunk of examples at a time so its
// size stays bounded.
#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "engine/autograd.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/cpu_common.h"
#include "engine/cpu/conv_direct.h"

namespace llr {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MapMat = Eigen::Map<RowMat<T>>;
template <class T>
using ConstMapMat = Eigen::Map<const RowMat<T>>;

struct ConvDims {
  int64_t n, h, w, c, k, r, s, p, q;
  int64_t rsc() const { return r * s * c; }
  int64_t pq() const { return p * q; }
};

ConvDims conv_dims(const Shape& x, const Shape& wshape, const Conv2dGeometry& g) {
  ConvDims d{x[0], x[1], x[2], x[3], wshape[0], wshape[1], wshape[2], 0, 0};
  d.p = conv2d_output_size(d.h, d.r, g);
  d.q = conv2d_output_size(d.w, d.s, g);
  return d;
}

bool is_pointwise(const ConvDims& d, const Conv2dGeometry& g) {
  return d.r == 1 && d.s == 1 && g.stride == 1 && g.padding == 0;
}

// Spatial (not 1x1) layers with at most this product of input and output channels take the direct kernel. On the 2
// development cores (tools/cpu_conv_bench.cpp, x86-64-v3 build) it is 1.5-3x faster than im2col + GEMM from 16 to 320
// channels, and slower at 640 (its packed weights leave the L2 cache) and on 1x1 layers.
constexpr int64_t kDirectMaxChannelProduct = 320 * 320;

int64_t chunk_examples(const ConvDims& d, size_t elem) {
  const int64_t budget = int64_t(32) << 20;  // bytes of im2col buffer
  int64_t per_example = d.pq() * d.rsc() * static_cast<int64_t>(elem);
  return std::max<int64_t>(1, std::min<int64_t>(d.n, budget / std::max<int64_t>(per_example, 1)));
}

// col[(i, p, q), (r, s, c)] = x[n0 + i, p*stride - pad + r, q*stride - pad + s, c] (0 outside); rows in parallel.
template <class T>
void im2col(const T* x, const ConvDims& d, const Conv2dGeometry& g, int64_t n0, int64_t nb, T* col) {
  const int64_t rows = nb * d.pq();
#pragma omp parallel for if (rows * d.rsc() >= cpu::kParallelMin)
  for (int64_t row_index = 0; row_index < rows; ++row_index) {
    const int64_t i = row_index / d.pq(), p = row_index / d.q % d.p, q = row_index % d.q;
    T* row = col + row_index * d.rsc();
    for (int64_t r = 0; r < d.r; ++r) {
      int64_t hh = p * g.stride - g.padding + r;
      for (int64_t s = 0; s < d.s; ++s) {
        int64_t ww = q * g.stride - g.padding + s;
        T* dst = row + (r * d.s + s) * d.c;
        if (hh < 0 || hh >= d.h || ww < 0 || ww >= d.w) {
          std::fill(dst, dst + d.c, T(0));
        } else {
          const T* src = x + (((n0 + i) * d.h + hh) * d.w + ww) * d.c;
          std::copy(src, src + d.c, dst);
        }
      }
    }
  }
}

// The adjoint of im2col, gathered: dx[n0 + i, h, w, c] = the sum of the col entries that im2col copied from there.
// Each element of dx is written once (no zeroing first, no write conflicts), image rows in parallel.
template <class T>
void col2im(const T* col, const ConvDims& d, const Conv2dGeometry& g, int64_t n0, int64_t nb, T* dx) {
  const int64_t rows = nb * d.h;
#pragma omp parallel for if (rows * d.w * d.c * d.r * d.s >= cpu::kParallelMin)
  for (int64_t row_index = 0; row_index < rows; ++row_index) {
    const int64_t i = row_index / d.h, h = row_index % d.h;
    for (int64_t w = 0; w < d.w; ++w) {
      T* dst = dx + (((n0 + i) * d.h + h) * d.w + w) * d.c;
      std::fill(dst, dst + d.c, T(0));
      for (int64_t r = 0; r < d.r; ++r) {
        const int64_t ph = h + g.padding - r;
        if (ph < 0 || ph % g.stride != 0 || ph / g.stride >= d.p) continue;
        for (int64_t s = 0; s < d.s; ++s) {
          const int64_t qw = w + g.padding - s;
          if (qw < 0 || qw % g.stride != 0 || qw / g.stride >= d.q) continue;
          const T* src = col + ((i * d.p + ph / g.stride) * d.q + qw / g.stride) * d.rsc() + (r * d.s + s) * d.c;
          for (int64_t c = 0; c < d.c; ++c) dst[c] += src[c];
        }
      }
    }
  }
}

std::atomic<cpu::ConvAlgorithm> g_conv_algorithm{cpu::ConvAlgorithm::automatic};

// The direct kernel wins where im2col's buffer (R*S times the input) costs more than the GEMM saves.
bool direct_pays(const ConvDims& d) {
  switch (g_conv_algorithm.load()) {
    case cpu::ConvAlgorithm::im2col: return false;
    case cpu::ConvAlgorithm::direct: return true;
    case cpu::ConvAlgorithm::automatic: break;
  }
  return d.r * d.s > 1 && d.c * d.k <= kDirectMaxChannelProduct;
}

cpu::DirectConvShape direct_forward_shape(const ConvDims& d, const Conv2dGeometry& g) {
  return {d.n, d.h, d.w, d.c, d.k, d.r, d.s, d.p, d.q, g.stride, g.padding, g.padding};
}

// The backward-data as direct convolutions of gy, one phase of dx at a time: the pixels (stride*u + a, stride*v + b)
// receive only the taps r = r0 + stride*j with r0 = (a + pad) mod stride (likewise s), from gy rows u + off - j, so
// each phase is a stride-1 correlation of gy with those taps flipped in space and the kernel's channel axes swapped
// (padded by jr-1-off: a negative pad crops). With stride 1 the one phase is the whole of dx, written in place;
// otherwise each phase is computed into a buffer and scattered.
template <class T>
void direct_backward_data(const T* gy, const T* w, const ConvDims& d, const Conv2dGeometry& g, T* dx) {
  const int64_t st = g.stride;
  std::unique_ptr<T[]> phase;
  for (int64_t a = 0; a < st && a < d.h; ++a)
    for (int64_t b = 0; b < st && b < d.w; ++b) {
      const int64_t r0 = (a + g.padding) % st, s0 = (b + g.padding) % st;
      const int64_t jr = r0 < d.r ? (d.r - r0 + st - 1) / st : 0, js = s0 < d.s ? (d.s - s0 + st - 1) / st : 0;
      const int64_t u = (d.h - a + st - 1) / st, v = (d.w - b + st - 1) / st;
      const int64_t phase_size = d.n * u * v * d.c;
      T* out = dx;
      if (st > 1) {
        phase.reset(new T[static_cast<size_t>(phase_size)]);  // written whole below
        out = phase.get();
      }
      if (jr > 0 && js > 0) {
        const int64_t off_r = (a + g.padding - r0) / st, off_s = (b + g.padding - s0) / st;
        cpu::DirectConvShape ds{d.n, d.p, d.q, d.k, d.c, jr, js, u, v, 1, jr - 1 - off_r, js - 1 - off_s};
        auto packed = cpu::pack_direct_weights<T>(ds, [&](int64_t c, int64_t r, int64_t s, int64_t k) {
          return w[((k * d.r + r0 + st * (jr - 1 - r)) * d.s + s0 + st * (js - 1 - s)) * d.c + c];
        });
        cpu::direct_conv(gy, ds, packed, out);
      } else {
        std::fill(out, out + phase_size, T(0));  // no tap reaches these pixels
      }
      if (st == 1) continue;
#pragma omp parallel for if (phase_size >= cpu::kParallelMin)
      for (int64_t row = 0; row < d.n * u; ++row) {
        const int64_t i = row / u, uu = row % u;
        for (int64_t vv = 0; vv < v; ++vv) {
          const T* src = out + (row * v + vv) * d.c;
          std::copy(src, src + d.c, dx + ((i * d.h + st * uu + a) * d.w + st * vv + b) * d.c);
        }
      }
    }
}

}  // namespace

namespace cpu {
void set_conv_algorithm(ConvAlgorithm algorithm) { g_conv_algorithm = algorithm; }
}  // namespace cpu

Tensor CpuBackend::conv2d_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) {
  ConvDims d = conv_dims(x.shape(), w.shape(), g);
  ++op_counters().conv2d_forward;
  return dispatch_floating(x.dtype(), "conv2d", [&](auto tag) {
    using T = decltype(tag);
    Tensor y = Tensor::empty({d.n, d.p, d.q, d.k}, x.dtype(), Layout::nhwc);
    ConstMapMat<T> wm(w.data<T>(), d.k, d.rsc());
    if (is_pointwise(d, g)) {
      ConstMapMat<T> xm(x.data<T>(), d.n * d.pq(), d.c);
      MapMat<T>(y.data<T>(), d.n * d.pq(), d.k).noalias() = xm * wm.transpose();
      return y;
    }
    if (direct_pays(d)) {
      cpu::DirectConvShape ds = direct_forward_shape(d, g);
      const T* wp = w.data<T>();
      auto packed = cpu::pack_direct_weights<T>(
          ds, [&](int64_t k, int64_t r, int64_t s, int64_t c) { return wp[((k * d.r + r) * d.s + s) * d.c + c]; });
      cpu::direct_conv(x.data<T>(), ds, packed, y.data<T>());
      return y;
    }
    int64_t chunk = chunk_examples(d, sizeof(T));
    std::vector<T> col(static_cast<size_t>(chunk * d.pq() * d.rsc()));
    for (int64_t n0 = 0; n0 < d.n; n0 += chunk) {
      int64_t nb = std::min(chunk, d.n - n0);
      im2col(x.data<T>(), d, g, n0, nb, col.data());
      ConstMapMat<T> cm(col.data(), nb * d.pq(), d.rsc());
      MapMat<T>(y.data<T>() + n0 * d.pq() * d.k, nb * d.pq(), d.k).noalias() = cm * wm.transpose();
    }
    return y;
  });
}

Tensor CpuBackend::conv2d_backward_data(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g) {
  ConvDims d = conv_dims(x_shape, w.shape(), g);
  ++op_counters().conv2d_backward_data;
  return dispatch_floating(gy.dtype(), "conv2d_backward_data", [&](auto tag) {
    using T = decltype(tag);
    Tensor dx = Tensor::empty(x_shape, gy.dtype(), Layout::nhwc);
    ConstMapMat<T> wm(w.data<T>(), d.k, d.rsc());
    if (is_pointwise(d, g)) {
      ConstMapMat<T> gm(gy.data<T>(), d.n * d.pq(), d.k);
      MapMat<T>(dx.data<T>(), d.n * d.pq(), d.c).noalias() = gm * wm;
      return dx;
    }
    if (direct_pays(d)) {
      direct_backward_data(gy.data<T>(), w.data<T>(), d, g, dx.data<T>());
      return dx;
    }
    int64_t chunk = chunk_examples(d, sizeof(T));
    RowMat<T> col(chunk * d.pq(), d.rsc());
    for (int64_t n0 = 0; n0 < d.n; n0 += chunk) {
      int64_t nb = std::min(chunk, d.n - n0);
      ConstMapMat<T> gm(gy.data<T>() + n0 * d.pq() * d.k, nb * d.pq(), d.k);
      MapMat<T> cm(col.data(), nb * d.pq(), d.rsc());
      cm.noalias() = gm * wm;
      col2im(col.data(), d, g, n0, nb, dx.data<T>());
    }
    return dx;
  });
}

Tensor CpuBackend::conv2d_backward_filter(const Tensor& x, const Tensor& gy, const Shape& w_shape, const Conv2dGeometry& g) {
  ConvDims d = conv_dims(x.shape(), w_shape, g);
  ++op_counters().conv2d_backward_filter;
  return dispatch_floating(x.dtype(), "conv2d_backward_filter", [&](auto tag) {
    using T = decltype(tag);
    Tensor dw = Tensor::zeros(w_shape, x.dtype(), Layout::krsc);
    MapMat<T> dwm(dw.data<T>(), d.k, d.rsc());
    if (is_pointwise(d, g)) {
      ConstMapMat<T> gm(gy.data<T>(), d.n * d.pq(), d.k);
      ConstMapMat<T> xm(x.data<T>(), d.n * d.pq(), d.c);
      dwm.noalias() = gm.transpose() * xm;
      return dw;
    }
    if (direct_pays(d)) {
      cpu::direct_conv_filter(x.data<T>(), gy.data<T>(), direct_forward_shape(d, g), dw.data<T>());
      return dw;
    }
    int64_t chunk = chunk_examples(d, sizeof(T));
    std::vector<T> col(static_cast<size_t>(chunk * d.pq() * d.rsc()));
    for (int64_t n0 = 0; n0 < d.n; n0 += chunk) {
      int64_t nb = std::min(chunk, d.n - n0);
      im2col(x.data<T>(), d, g, n0, nb, col.data());
      ConstMapMat<T> cm(col.data(), nb * d.pq(), d.rsc());
      ConstMapMat<T> gm(gy.data<T>() + n0 * d.pq() * d.k, nb * d.pq(), d.k);
      dwm.noalias() += gm.transpose() * cm;
    }
    return dw;
  });
}

Tensor CpuBackend::matmul_nt(const Tensor& a, const Tensor& b) {
  ++op_counters().matmul;
  return dispatch_floating(a.dtype(), "matmul_nt", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({a.dim(0), b.dim(0)}, a.dtype());
    MapMat<T>(out.data<T>(), a.dim(0), b.dim(0)).noalias() =
        ConstMapMat<T>(a.data<T>(), a.dim(0), a.dim(1)) * ConstMapMat<T>(b.data<T>(), b.dim(0), b.dim(1)).transpose();
    return out;
  });
}

Tensor CpuBackend::matmul_nn(const Tensor& a, const Tensor& b) {
  ++op_counters().matmul;
  return dispatch_floating(a.dtype(), "matmul_nn", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({a.dim(0), b.dim(1)}, a.dtype());
    MapMat<T>(out.data<T>(), a.dim(0), b.dim(1)).noalias() =
        ConstMapMat<T>(a.data<T>(), a.dim(0), a.dim(1)) * ConstMapMat<T>(b.data<T>(), b.dim(0), b.dim(1));
    return out;
  });
}

Tensor CpuBackend::matmul_tn(const Tensor& a, const Tensor& b) {
  ++op_counters().matmul;
  return dispatch_floating(a.dtype(), "matmul_tn", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({a.dim(1), b.dim(1)}, a.dtype());
    MapMat<T>(out.data<T>(), a.dim(1), b.dim(1)).noalias() =
        ConstMapMat<T>(a.data<T>(), a.dim(0), a.dim(1)).transpose() * ConstMapMat<T>(b.data<T>(), b.dim(0), b.dim(1));
    return out;
  });
}

}  // namespace llr
