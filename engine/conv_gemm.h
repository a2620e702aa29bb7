// A 1x1 convolution with padding 0 is a matrix product over the pixels it reads. With stride s, P = (H - 1) / s + 1
// and Q = (W - 1) / s + 1 output rows and columns, and M = N P Q output pixels, in NHWC / KRSC:
//   forward:          y[M, K]  = xs[M, C] w[K, C]^T        xs = x[n, p s, q s, :], the pixels it reads (subsample)
//   backward-data:    dx       = upsample(g[M, K] w[K, C])  g's rows put back at those pixels, zeros elsewhere
//   backward-filter:  dw[K, C] = g[M, K]^T xs[M, C]
// The CUDA backend offers this as a candidate for such plans (cuBLAS products and the two copies below; it runs when
// it is faster than cuDNN's pick, kernels/conv.cu), since cuDNN's 1x1 algorithms run the shortcut convolutions of a
// Wide-ResNet far below memory bandwidth. The index maps here are the per-element math of the two copies, shared by
// the CUDA kernels and the CPU test that checks the whole decomposition against the convolutions.
#pragma once

#include <cstdint>

#include "engine/host_device.h"

namespace llr::conv_gemm {

// Whether a convolution with a (kh x kw) filter and this padding is such a product.
inline bool applies(int64_t kh, int64_t kw, int64_t padding) { return kh == 1 && kw == 1 && padding == 0; }

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

}  // namespace llr::conv_gemm
