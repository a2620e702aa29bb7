// The raw compute interface: every heavy or per-element operation the differentiable ops need, without autograd.
// One narrow interface so a device backend (CPU/Eigen here, CUDA in kernels/) implements the same list. vjp rules call
// these directly; they are never recorded. All functions allocate their outputs.
#pragma once

#include <utility>

#include "engine/elementwise_math.h"
#include "engine/tensor.h"

namespace llr {

struct Conv2dGeometry {
  int stride = 1;
  int padding = 0;
};

// Output spatial size of a convolution, checking that it is positive.
int64_t conv2d_output_size(int64_t in, int64_t kernel, const Conv2dGeometry& g);

namespace backend {

Tensor zeros(const Shape& shape, DType dtype, Layout layout, Device device);
Tensor full_like(const Tensor& x, double value);

// Elementwise, same shapes.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double s);

// Per-example (first axis) operations.
Tensor scale_per_example(const Tensor& x, const Tensor& c);  // x[i, ...] * c[i]
Tensor per_example_dot(const Tensor& a, const Tensor& b);    // sum over all but the first axis of a*b

Tensor sum_all(const Tensor& x);                                   // shape {}
Tensor broadcast_scalar(const Tensor& s, const Tensor& like);      // s (one element) filled into like's shape

// Channel-last (last axis) broadcasting.
Tensor bias_add(const Tensor& x, const Tensor& b);
Tensor sum_to_last_axis(const Tensor& g);  // (C): sum over all but the last axis

// phi^(order)(a) * t * (t2 if defined).
Tensor activation_forward(Act act, const Tensor& a);
Tensor activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t, const Tensor& t2 = {});

// Convolution, NHWC activations, KRSC filters, no bias.
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g);
Tensor conv2d_backward_data(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g);
Tensor conv2d_backward_filter(const Tensor& x, const Tensor& gy, const Shape& w_shape, const Conv2dGeometry& g);

// Matrix products of row-major 2-D tensors: nt = A B^T, nn = A B, tn = A^T B.
Tensor matmul_nt(const Tensor& a, const Tensor& b);
Tensor matmul_nn(const Tensor& a, const Tensor& b);
Tensor matmul_tn(const Tensor& a, const Tensor& b);

// Batch norm over all but the last axis; var is the biased (population) variance.
std::pair<Tensor, Tensor> batch_stats(const Tensor& x);
Tensor batch_stats_backward(const Tensor& x, const Tensor& mean, const Tensor& g_mean, const Tensor& g_var);
std::pair<Tensor, Tensor> batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& xdot);
struct BatchStatsTangentGrads {
  Tensor x, mean, xdot;
};
BatchStatsTangentGrads batch_stats_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& xdot,
                                                    const Tensor& g_mean_dot, const Tensor& g_var_dot);

Tensor bn_normalize(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                    double eps);
struct BnNormalizeGrads {
  Tensor x, mean, var, scale, shift;
};
BnNormalizeGrads bn_normalize_backward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                       const Tensor& gy, double eps);
// mean_dot / var_dot may be undefined (zero).
Tensor bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& xdot,
                  const Tensor& mean_dot, const Tensor& var_dot, double eps);
struct BnTangentGrads {
  Tensor x, mean, var, scale, xdot, mean_dot, var_dot;
};
BnTangentGrads bn_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                   const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot,
                                   const Tensor& gt, double eps);
// running = (1 - momentum) running + momentum batch; the variance enters unbiased (count / (count - 1)).
void bn_update_running(Tensor& running_mean, Tensor& running_var, const Tensor& mean, const Tensor& var,
                       double momentum, int64_t count);

// NHWC -> (N, C) mean over H and W.
Tensor global_avg_pool(const Tensor& x);
Tensor global_avg_pool_backward(const Tensor& gy, const Shape& x_shape);

// Losses on logits (N, K) with i32 labels (N).
Tensor softmax(const Tensor& z);
Tensor cross_entropy(const Tensor& z, const Tensor& labels);
Tensor cross_entropy_backward(const Tensor& z, const Tensor& labels, const Tensor& g);  // (p - onehot) g_i
Tensor cross_entropy_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot);  // <p - onehot, zdot_i>
std::pair<Tensor, Tensor> cross_entropy_tangent_backward(const Tensor& z, const Tensor& labels, const Tensor& zdot,
                                                         const Tensor& g);  // (dz, dzdot)
Tensor margin_loss(const Tensor& z, const Tensor& labels);                 // z_y - max_{j != y} z_j
Tensor margin_loss_backward(const Tensor& z, const Tensor& labels, const Tensor& g);
Tensor margin_loss_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot);  // zdot_y - zdot_j*

}  // namespace backend
}  // namespace llr
