// Two ways the CUDA backend may compute a convolution other than cuDNN's own for its direction (kernels/conv.cu times
// each against cuDNN's pick on the planning call's tensors and keeps the faster, since cuDNN runs some of a
// Wide-ResNet's convolutions far below what the GPU does for others of the same size). The index maps here are the
// per-element math of their copies, shared by the CUDA kernels and the CPU tests that check both rewrites against the
// convolutions (tests/test_cpu_conv.cpp). NHWC activations, KRSC filters.
//
// Products: a convolution is a matrix product over its unfolded input. With stride s, padding p, an R x S filter,
// P x Q output pixels per image, M = N P Q of them and J = R S C:
//   cols[m, (r S + t) C + c] = x[n, p_ s - p + r, q s - p + t, c]  (0 in the padding)   m = (n P + p_) Q + q
//   forward:          y[M, K]  = cols[M, J] w[K, J]^T        (w as [K, J]: the KRSC layout flattened)
//   backward-data:    dx       = fold(g[M, K] w[K, J])        each input element sums the columns that hold it
//   backward-filter:  dw[K, J] = g[M, K]^T cols[M, J]
// A 1x1 filter with padding 0 needs no copy at stride 1 (cols is x) and only the pixels it reads at stride 2; for
// other filters the unfolded input costs J / C times the input's bytes, so it is offered where J is small (the
// 3-channel stem: J = 27, where cuDNN's algorithms ran at 1-2 TFLOP/s).
//
// Transposed: the forward of a stride-1 convolution with an odd square R x R filter and "same" padding (R - 1) / 2 is
// the backward-data of the convolution whose filter is w's transpose, w'[c, r, s, k] = w[k, R-1-r, R-1-s, c], taking
// the input x as its output gradient: y = conv2d_backward_data(x, w', y's shape). (cuDNN ran the forward of
// WRN-28-10's 3x3 160->160 layers at half the speed of their backward-data, same FLOPs.)
#pragma once

#include <cstdint>

#include "engine/host_device.h"

namespace llr::conv_rewrites {

// The geometry of a product rewrite (NHWC input N x H x W x C, filter R x S, output P x Q).
struct Unfold {
  int64_t N, H, W, C, R, S, P, Q, stride, pad;
};

// Columns of the unfolded input up to which a filter other than 1x1 with padding 0 is offered as products.
constexpr int64_t kUnfoldMaxColumns = 256;

// Whether a convolution with an (R x S) filter over C channels and this padding is offered as products.
inline bool products_apply(int64_t R, int64_t S, int64_t C, int64_t padding) {
  return (R == 1 && S == 1 && padding == 0) || R * S * C <= kUnfoldMaxColumns;
}

// Whether the unfolded input is x itself (a 1x1 filter, padding 0, stride 1).
inline bool unfold_is_identity(const Unfold& u) { return u.R == 1 && u.S == 1 && u.pad == 0 && u.stride == 1; }

// Row m and column j of the unfolded input [M, J]: the element of x it holds, or -1 in the padding.
LLR_HD int64_t unfold_source(int64_t m, int64_t j, const Unfold& u) {
  const int64_t q = m % u.Q, a = m / u.Q;
  const int64_t p = a % u.P, n = a / u.P;
  const int64_t c = j % u.C, b = j / u.C;
  const int64_t t = b % u.S, r = b / u.S;
  const int64_t h = p * u.stride - u.pad + r, w = q * u.stride - u.pad + t;
  if (h < 0 || h >= u.H || w < 0 || w >= u.W) return -1;
  return ((n * u.H + h) * u.W + w) * u.C + c;
}

// Pixel row (n, h, w) of x [N H W, C] and filter tap (r, t): the unfolded row holding that pixel at that tap, or -1.
// The fold of the backward-data sums, for each of x's elements, the columns (r S + t) C + c of these rows.
LLR_HD int64_t fold_row(int64_t row, int64_t r, int64_t t, const Unfold& u) {
  const int64_t w = row % u.W, a = row / u.W;
  const int64_t h = a % u.H, n = a / u.H;
  const int64_t hp = h + u.pad - r, wp = w + u.pad - t;
  if (hp < 0 || wp < 0 || hp % u.stride != 0 || wp % u.stride != 0) return -1;
  const int64_t p = hp / u.stride, q = wp / u.stride;
  if (p >= u.P || q >= u.Q) return -1;
  return (n * u.P + p) * u.Q + q;
}

// Whether a forward with this filter and geometry is the backward-data of the transpose (1x1 filters are left to the
// products).
inline bool transposed_applies(int64_t kh, int64_t kw, int64_t stride, int64_t padding) {
  return kh == kw && kh % 2 == 1 && kh > 1 && stride == 1 && padding == (kh - 1) / 2;
}

// Element i of the transposed filter w' [C, R, S, K]: its element of w [K, R, S, C].
LLR_HD int64_t transposed_filter_source(int64_t i, int64_t K, int64_t R, int64_t S, int64_t C) {
  const int64_t k = i % K, t = i / K;
  const int64_t s = t % S, u = t / S;
  const int64_t r = u % R, c = u / R;
  return ((k * R + (R - 1 - r)) * S + (S - 1 - s)) * C + c;
}

}  // namespace llr::conv_rewrites
