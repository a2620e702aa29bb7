// Two ways the CUDA backend may compute a convolution other than cuDNN's own for its direction (kernels/conv.cu times
// each against cuDNN's pick on the planning call's tensors and keeps the faster, since cuDNN runs some of a
// Wide-ResNet's convolutions far below what the GPU does for others of the same size). The index maps here are the
// per-element math of their copies, shared by the CUDA kernels and the CPU tests that check both rewrites against the
// convolutions (tests/test_cpu_conv.cpp). NHWC activations, KRSC filters.
//
// Products: a 1x1 convolution with padding 0 is a matrix product over the pixels it reads. With stride s,
// P = (H - 1) / s + 1 and Q = (W - 1) / s + 1 output rows and columns, and M = N P Q output pixels:
//   forward:          y[M, K]  = xs[M, C] w[K, C]^T        xs = x[n, p s, q s, :], the pixels it reads (subsample)
//   backward-data:    dx       = upsample(g[M, K] w[K, C])  g's rows put back at those pixels, zeros elsewhere
//   backward-filter:  dw[K, C] = g[M, K]^T xs[M, C]
//
// Transposed: the forward of a stride-1 convolution with an odd square R x R filter and "same" padding (R - 1) / 2 is
// the backward-data of the convolution whose filter is w's transpose, w'[c, r, s, k] = w[k, R-1-r, R-1-s, c], taking
// the input x as its output gradient: y = conv2d_backward_data(x, w', y's shape). (cuDNN ran the forward of
// WRN-28-10's 3x3 160->160 layers at half the speed of their backward-data, same FLOPs.)
#pragma once

#include <cstdint>

#include "engine/host_device.h"

namespace llr::conv_rewrites {

// Whether a convolution with a (kh x kw) filter and this padding is such a product.
inline bool products_apply(int64_t kh, int64_t kw, int64_t padding) { return kh == 1 && kw == 1 && padding == 0; }

// Whether a forward with this filter and geometry is such a backward-data (1x1 filters are left to the products).
inline bool transposed_applies(int64_t kh, int64_t kw, int64_t stride, int64_t padding) {
  return kh == kw && kh % 2 == 1 && kh > 1 && stride == 1 && padding == (kh - 1) / 2;
}

// Row r of the product's [M, *] operands (output pixel (n, p, q), r = (n P + p) Q + q): the row of x [N H W, C] it
// reads.
LLR_HD int64_t source_row(int64_t r, int64_t P, int64_t Q, int64_t H, int64_t W, int64_t s) {
  const int64_t q = r % Q, t = r / Q;
  const int64_t p = t % P, n = t / P;
  return (n * H + p * s) * W + q * s;
}

// Row r of x [N H W, C] (pixel (n, h, w)): the product's row at that pixel, or -1 where the convolution reads none
// (the input gradient is zero there).
LLR_HD int64_t product_row(int64_t r, int64_t P, int64_t Q, int64_t H, int64_t W, int64_t s) {
  const int64_t w = r % W, t = r / W;
  const int64_t h = t % H, n = t / H;
  if (h % s != 0 || w % s != 0 || h / s >= P || w / s >= Q) return -1;
  return (n * P + h / s) * Q + w / s;
}

// Element i of the transposed filter w' [C, R, S, K]: its element of w [K, R, S, C].
LLR_HD int64_t transposed_filter_source(int64_t i, int64_t K, int64_t R, int64_t S, int64_t C) {
  const int64_t k = i % K, t = i / K;
  const int64_t s = t % S, u = t / S;
  const int64_t r = u % R, c = u / R;
  return ((k * R + (R - 1 - r)) * S + (S - 1 - s)) * C + c;
}

}  // namespace llr::conv_rewrites
