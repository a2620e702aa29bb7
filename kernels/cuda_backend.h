// The CUDA backend: cuDNN convolutions, cuBLAS matrix products and the kernels of this folder, in f32, bf16 (bf16
// storage, f32 accumulation; per-channel and per-example values in f32) and f64. Methods are defined in
// elementwise.cu, conv.cu, batchnorm.cu and loss.cu.
#pragma once

#include "engine/backend.h"

namespace llr::cuda {

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }

  // Memory: fill in place, dtype conversion on the same device.
  void fill(Tensor& t, double value) override;
  Tensor convert(const Tensor& x, DType dtype) override;

  // Elementwise, same shapes and layouts.
  Tensor add(const Tensor& a, const Tensor& b) override;
  Tensor sub(const Tensor& a, const Tensor& b) override;
  Tensor mul(const Tensor& a, const Tensor& b) override;
  Tensor scale(const Tensor& x, double s) override;

  // Per-example (first axis) operations.
  Tensor scale_per_example(const Tensor& x, const Tensor& c) override;  // x[i, ...] * c[i]
  Tensor per_example_dot(const Tensor& a, const Tensor& b) override;    // sum over all but the first axis of a*b

  Tensor sum_all(const Tensor& x) override;                               // shape {}
  Tensor broadcast_scalar(const Tensor& s, const Tensor& like) override;  // s (one element) in like's shape

  // Channel-last (last axis) broadcasting.
  Tensor bias_add(const Tensor& x, const Tensor& b) override;
  Tensor sum_to_last_axis(const Tensor& g) override;  // (C): sum over all but the last axis

  // phi^(order)(a) * t * (t2 if defined).
  Tensor activation_forward(Act act, const Tensor& a) override;
  Tensor activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t,
                                           const Tensor& t2) override;

  // Convolution, NHWC activations, KRSC filters, no bias.
  Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) override;
  Tensor conv2d_backward_data(const Tensor& gy, const Tensor& w, const Shape& x_shape,
                                      const Conv2dGeometry& g) override;
  Tensor conv2d_backward_filter(const Tensor& x, const Tensor& gy, const Shape& w_shape,
                                        const Conv2dGeometry& g) override;

  // Matrix products of row-major 2-D tensors: nt = A B^T, nn = A B, tn = A^T B.
  Tensor matmul_nt(const Tensor& a, const Tensor& b) override;
  Tensor matmul_nn(const Tensor& a, const Tensor& b) override;
  Tensor matmul_tn(const Tensor& a, const Tensor& b) override;

  // Batch norm over all but the last axis; var is the biased (population) variance.
  std::pair<Tensor, Tensor> batch_stats(const Tensor& x) override;
  Tensor batch_stats_backward(const Tensor& x, const Tensor& mean, const Tensor& g_mean,
                                      const Tensor& g_var) override;
  std::pair<Tensor, Tensor> batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& xdot) override;
  BatchStatsTangentGrads batch_stats_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& xdot,
                                                              const Tensor& g_mean_dot, const Tensor& g_var_dot) override;
  Tensor bn_normalize(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                              const Tensor& shift, double eps) override;
  BnNormalizeGrads bn_normalize_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                                 const Tensor& scale, const Tensor& gy, double eps) override;
  // mean_dot / var_dot may be undefined (zero).
  Tensor bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                            const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot, double eps) override;
  BnTangentGrads bn_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                             const Tensor& scale, const Tensor& xdot, const Tensor& mean_dot,
                                             const Tensor& var_dot, const Tensor& gt, double eps) override;
  // running = (1 - momentum) running + momentum batch; the variance enters unbiased (count / (count - 1)).
  void bn_update_running(Tensor& running_mean, Tensor& running_var, const Tensor& mean, const Tensor& var,
                                 double momentum, int64_t count) override;

  // NHWC -> (N, C) mean over H and W.
  Tensor global_avg_pool(const Tensor& x) override;
  Tensor global_avg_pool_backward(const Tensor& gy, const Shape& x_shape) override;

  // Losses on logits (N, K) with i32 labels (N).
  Tensor softmax(const Tensor& z) override;
  Tensor cross_entropy(const Tensor& z, const Tensor& labels) override;
  Tensor cross_entropy_backward(const Tensor& z, const Tensor& labels, const Tensor& g) override;
  Tensor cross_entropy_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) override;
  std::pair<Tensor, Tensor> cross_entropy_tangent_backward(const Tensor& z, const Tensor& labels,
                                                                   const Tensor& zdot, const Tensor& g) override;
  Tensor margin_loss(const Tensor& z, const Tensor& labels) override;
  Tensor margin_loss_backward(const Tensor& z, const Tensor& labels, const Tensor& g) override;
  Tensor margin_loss_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) override;
};

}  // namespace llr::cuda
