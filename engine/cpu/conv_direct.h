// CPU backend: direct convolution of NHWC tensors, for the layers where im2col + GEMM is bound by the im2col buffer's
// memory traffic (CIFAR nets' 16 to 320 channels; engine/cpu/conv.cpp picks). No im2col: each task computes a tile of QB output pixels by 2 SIMD vectors of output channels in
// registers, reading the zero-padded input rows in place and the weights packed as [K block][R][S][C][2 vectors].
//
// y[n, p, q, k] = sum over r, s, c of xpad[n, p*stride + r, q*stride + s, c] * wt(k, r, s, c),
// where xpad is x with `pad_top`/`pad_left` zero rows/columns before it (and zeros after, as far as a tap reaches; a
// negative pad crops) and wt is read through an accessor, so the backward-data (per output phase, the same
// correlation of the output gradient with the spatially flipped, transposed kernel) uses the same kernel.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "engine/cpu/cpu_common.h"

namespace llr::cpu {

// The widest vector registers the build targets: 32 bytes with AVX (the default x86-64-v3 build), else 16 (SSE2,
// NEON). A vector type wider than the target's registers is lowered element by element, 20x slower.
#if defined(__AVX__)
constexpr int kSimdBytes = 32;
#else
constexpr int kSimdBytes = 16;
#endif

template <class T>
struct Simd {
  typedef T type __attribute__((vector_size(kSimdBytes)));
  static constexpr int width = kSimdBytes / static_cast<int>(sizeof(T));
};

struct DirectConvShape {
  int64_t n, h, w, c;   // input (NHWC)
  int64_t k, r, s;      // output channels, kernel rows and columns
  int64_t p, q;         // output rows and columns
  int64_t stride;
  int64_t pad_top, pad_left;
};

// Weights packed for the kernel: [K / (2V) rounded up][R][S][C][2V], zero past K.
template <class T, class W>
std::vector<T> pack_direct_weights(const DirectConvShape& d, W&& wt) {
  constexpr int64_t kb = 2 * Simd<T>::width;
  const int64_t blocks = (d.k + kb - 1) / kb, taps = d.r * d.s * d.c;
  std::vector<T> packed(static_cast<size_t>(blocks * taps * kb), T(0));
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t r = 0; r < d.r; ++r)
      for (int64_t s = 0; s < d.s; ++s)
        for (int64_t c = 0; c < d.c; ++c) {
          T* dst = packed.data() + ((b * d.r + r) * d.s + s) * d.c * kb + c * kb;
          for (int64_t j = 0; j < kb && b * kb + j < d.k; ++j) dst[j] = wt(b * kb + j, r, s, c);
        }
  return packed;
}

namespace direct_detail {

// One tile: QB output pixels (input columns QB*stride*C apart) by 2V output channels.
template <class T, int QB>
inline void tile(const T* x0, int64_t row_step, int64_t pixel_step, int64_t rows, int64_t taps_per_row,
                 const T* w, T* y, int64_t y_pixel_step, int64_t k_valid) {
  using V = typename Simd<T>::type;
  constexpr int vw = Simd<T>::width;
  V acc[QB][2];
  for (int j = 0; j < QB; ++j) acc[j][0] = acc[j][1] = V{};
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x0 + r * row_step;
    const T* wr = w + r * taps_per_row * 2 * vw;
    for (int64_t t = 0; t < taps_per_row; ++t) {
      V w0, w1;
      std::memcpy(&w0, wr + t * 2 * vw, sizeof(V));
      std::memcpy(&w1, wr + t * 2 * vw + vw, sizeof(V));
      for (int j = 0; j < QB; ++j) {
        const T xv = xr[j * pixel_step + t];
        acc[j][0] += xv * w0;
        acc[j][1] += xv * w1;
      }
    }
  }
  for (int j = 0; j < QB; ++j) {
    T* dst = y + j * y_pixel_step;
    if (k_valid >= 2 * vw) {
      std::memcpy(dst, &acc[j][0], sizeof(V));
      std::memcpy(dst + vw, &acc[j][1], sizeof(V));
    } else {
      T lanes[2 * vw];
      std::memcpy(lanes, &acc[j][0], sizeof(V));
      std::memcpy(lanes + vw, &acc[j][1], sizeof(V));
      std::copy(lanes, lanes + k_valid, dst);
    }
  }
}

constexpr int kTile = 6;  // 6 pixels x 2 vectors = 12 accumulators, within the 16 vector registers of AVX2

template <class T>
void tile_n(int qb, const T* x0, int64_t row_step, int64_t pixel_step, int64_t rows, int64_t taps_per_row,
            const T* w, T* y, int64_t y_pixel_step, int64_t k_valid) {
  switch (qb) {
#define LLR_TILE(nq) \
  case nq: return tile<T, nq>(x0, row_step, pixel_step, rows, taps_per_row, w, y, y_pixel_step, k_valid);
    LLR_TILE(1) LLR_TILE(2) LLR_TILE(3) LLR_TILE(4) LLR_TILE(5) LLR_TILE(6)
#undef LLR_TILE
  }
}

// One filter-gradient tile: for taps t0..t0+TB of one kernel row, 2V output channels, summed over an image's P x Q
// output pixels: acc[j] += x[p*x_row_step + q*pixel_step + j] * gy[(p*Q + q)*gy_pixel_step + 0..2V). gy holds whole
// vectors (K a multiple of 2V, or a padded copy).
template <class T, int TB>
inline void filter_tile(const T* x, int64_t x_row_step, int64_t pixel_step, const T* gy, int64_t gy_pixel_step,
                        int64_t rows, int64_t cols, T* acc_out) {
  using V = typename Simd<T>::type;
  constexpr int vw = Simd<T>::width;
  V acc[TB][2];
  for (int j = 0; j < TB; ++j) {
    std::memcpy(&acc[j][0], acc_out + j * 2 * vw, sizeof(V));
    std::memcpy(&acc[j][1], acc_out + j * 2 * vw + vw, sizeof(V));
  }
  for (int64_t p = 0; p < rows; ++p) {
    const T* xrow = x + p * x_row_step;
    const T* grow = gy + p * cols * gy_pixel_step;
    for (int64_t q = 0; q < cols; ++q) {
      V g0, g1;
      std::memcpy(&g0, grow + q * gy_pixel_step, sizeof(V));
      std::memcpy(&g1, grow + q * gy_pixel_step + vw, sizeof(V));
      const T* xq = xrow + q * pixel_step;
      for (int j = 0; j < TB; ++j) {
        acc[j][0] += xq[j] * g0;
        acc[j][1] += xq[j] * g1;
      }
    }
  }
  for (int j = 0; j < TB; ++j) {
    std::memcpy(acc_out + j * 2 * vw, &acc[j][0], sizeof(V));
    std::memcpy(acc_out + j * 2 * vw + vw, &acc[j][1], sizeof(V));
  }
}

template <class T>
void filter_tile_n(int tb, const T* x, int64_t x_row_step, int64_t pixel_step, const T* gy, int64_t gy_pixel_step,
                   int64_t rows, int64_t cols, T* acc_out) {
  switch (tb) {
#define LLR_TILE(nt) \
  case nt: return filter_tile<T, nt>(x, x_row_step, pixel_step, gy, gy_pixel_step, rows, cols, acc_out);
    LLR_TILE(1) LLR_TILE(2) LLR_TILE(3) LLR_TILE(4) LLR_TILE(5) LLR_TILE(6)
#undef LLR_TILE
  }
}

// x zero-padded so every tap of every output pixel reads inside it (x itself when no tap leaves it). A negative pad
// crops instead: the kernel's first tap then reads row (column) -pad of x.
template <class T>
const T* padded_input(const T* x, const DirectConvShape& d, int64_t hp, int64_t wp, std::unique_ptr<T[]>& scratch) {
  if (hp == d.h && wp == d.w && d.pad_top == 0 && d.pad_left == 0) return x;
  scratch.reset(new T[static_cast<size_t>(d.n * hp * wp * d.c)]);  // uninitialised: every element is written below
  const int64_t dst_col = std::max<int64_t>(0, d.pad_left), src_col = std::max<int64_t>(0, -d.pad_left);
  const int64_t cols = std::max<int64_t>(0, std::min(d.w - src_col, wp - dst_col));
#pragma omp parallel for if (d.n * hp * wp * d.c >= kParallelMin)
  for (int64_t row = 0; row < d.n * hp; ++row) {
    const int64_t i = row / hp, hh = row % hp - d.pad_top;
    T* dst = scratch.get() + row * wp * d.c;
    if (hh < 0 || hh >= d.h) {
      std::fill(dst, dst + wp * d.c, T(0));
      continue;
    }
    const T* src = x + ((i * d.h + hh) * d.w + src_col) * d.c;
    std::fill(dst, dst + dst_col * d.c, T(0));
    std::copy(src, src + cols * d.c, dst + dst_col * d.c);
    std::fill(dst + (dst_col + cols) * d.c, dst + wp * d.c, T(0));
  }
  return scratch.get();
}

inline int64_t padded_rows(const DirectConvShape& d) { return (d.p - 1) * d.stride + d.r; }
inline int64_t padded_cols(const DirectConvShape& d) { return (d.q - 1) * d.stride + d.s; }

}  // namespace direct_detail

// dw (K, R, S, C) = sum over n, p, q of gy[n, p, q, k] * xpad[n, p*stride + r, q*stride + s, c]. The examples are
// split into up to kFilterParts parts, summed on all cores, each into its own packed partial; the partials are added
// in part order, so the result depends neither on timing nor on the number of threads.
constexpr int64_t kFilterParts = 8;

template <class T>
void direct_conv_filter(const T* x, const T* gy, const DirectConvShape& d, T* dw) {
  constexpr int64_t kb = 2 * Simd<T>::width;
  constexpr int kTaps = 6;
  const int64_t hp = direct_detail::padded_rows(d), wp = direct_detail::padded_cols(d);
  std::unique_ptr<T[]> scratch;
  const T* xp = direct_detail::padded_input(x, d, hp, wp, scratch);
  const int64_t blocks = (d.k + kb - 1) / kb, taps_per_row = d.s * d.c;
  const int64_t packed_size = blocks * d.r * taps_per_row * kb;
  const int parts = static_cast<int>(std::min<int64_t>(kFilterParts, d.n));
  const bool parallel = parts > 1 && d.n * d.p * d.q * d.k * d.r * taps_per_row >= kParallelMin;
  std::vector<T> partial(static_cast<size_t>(parts * packed_size), T(0));
  // gy with its channels padded to whole vectors, when K is not a multiple of 2V.
  const int64_t kp = blocks * kb;
  std::vector<T> gy_padded;
  if (kp != d.k) {
    gy_padded.assign(static_cast<size_t>(d.n * d.p * d.q * kp), T(0));
    for (int64_t e = 0; e < d.n * d.p * d.q; ++e) std::copy(gy + e * d.k, gy + (e + 1) * d.k, &gy_padded[e * kp]);
    gy = gy_padded.data();
  }
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (int part = 0; part < parts; ++part) {
    T* acc = partial.data() + part * packed_size;
    for (int64_t i = d.n * part / parts; i < d.n * (part + 1) / parts; ++i)
      for (int64_t b = 0; b < blocks; ++b)
        for (int64_t r = 0; r < d.r; ++r) {
          const T* ximg = xp + (i * hp + r) * wp * d.c;
          const T* gyimg = gy + i * d.p * d.q * kp + b * kb;
          T* accr = acc + (b * d.r + r) * taps_per_row * kb;
          for (int64_t t0 = 0; t0 < taps_per_row; t0 += kTaps) {
            const int tb = static_cast<int>(std::min<int64_t>(kTaps, taps_per_row - t0));
            direct_detail::filter_tile_n<T>(tb, ximg + t0, d.stride * wp * d.c, d.stride * d.c, gyimg, kp, d.p, d.q,
                                             accr + t0 * kb);
          }
        }
  }
  for (int part = 1; part < parts; ++part)
    for (int64_t e = 0; e < packed_size; ++e) partial[e] += partial[part * packed_size + e];
  for (int64_t k = 0; k < d.k; ++k)
    for (int64_t r = 0; r < d.r; ++r)
      for (int64_t t = 0; t < taps_per_row; ++t)
        dw[(k * d.r + r) * taps_per_row + t] = partial[((k / kb * d.r + r) * taps_per_row + t) * kb + k % kb];
}

// y (N, P, Q, K) from x (N, H, W, C) and packed weights; x is padded into a scratch copy unless no tap leaves it.
template <class T>
void direct_conv(const T* x, const DirectConvShape& d, const std::vector<T>& packed, T* y) {
  constexpr int64_t kb = 2 * Simd<T>::width;
  const int64_t hp = direct_detail::padded_rows(d), wp = direct_detail::padded_cols(d);
  std::unique_ptr<T[]> scratch;
  const T* xp = direct_detail::padded_input(x, d, hp, wp, scratch);
  const int64_t blocks = (d.k + kb - 1) / kb, taps_per_row = d.s * d.c;
  const int64_t tasks = d.n * d.p * blocks;
#pragma omp parallel for schedule(static) if (tasks > 1 && d.n * d.p * d.q * d.k * d.r * taps_per_row >= kParallelMin)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task % blocks, row = task / blocks, i = row / d.p, p = row % d.p;
    const T* w = packed.data() + b * d.r * taps_per_row * kb;
    const T* xrow = xp + ((i * hp + p * d.stride) * wp) * d.c;
    T* yrow = y + (row * d.q) * d.k + b * kb;
    const int64_t k_valid = std::min(kb, d.k - b * kb);
    for (int64_t q0 = 0; q0 < d.q; q0 += direct_detail::kTile) {
      const int qb = static_cast<int>(std::min<int64_t>(direct_detail::kTile, d.q - q0));
      direct_detail::tile_n<T>(qb, xrow + q0 * d.stride * d.c, wp * d.c, d.stride * d.c, d.r, taps_per_row, w,
                               yrow + q0 * d.k, d.k, k_valid);
    }
  }
}

}  // namespace llr::cpu
