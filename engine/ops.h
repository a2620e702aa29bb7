// Differentiable ops. Each records one tape node with a vjp rule (raw backend calls) and a jvp rule (written with
// these same ops, so tangent computations are themselves recorded and reverse-differentiable).
//
// Layouts: activations NHWC, filters KRSC, linear weights (out, in) as in PyTorch. Per-example ops treat axis 0 as the
// batch. The tangent ops (activation_tangent, batch_stats_tangent, bn_tangent, cross_entropy_tangent,
// margin_loss_tangent) have vjps but no jvp: the engine computes first-order tangents only.
#pragma once

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/tensor.h"

namespace llr {

struct Conv2dOptions {
  int stride = 1;
  int padding = 0;
};

// x NHWC [N,H,W,C], w KRSC [K,R,S,C], optional bias [K] -> NHWC [N,P,Q,K].
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias = {}, Conv2dOptions options = {});
// x [N,I], w [O,I], optional bias [O] -> [N,O].
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = {});
// x [..., C] + b [C].
Tensor bias_add(const Tensor& x, const Tensor& b);

struct BatchStats {
  Tensor mean;
  Tensor var;  // biased (population) variance
};
// Statistics over every axis but the last. A pass may reuse another pass's statistics: they are tensors on the tape.
BatchStats batch_stats(const Tensor& x);
// scale (x - mean) / sqrt(var + eps) + shift, per channel (last axis).
Tensor batch_norm(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                  double eps);
// activation(batch_norm(...)) as one op: the normalised value is recomputed in the vjp instead of stored, so a
// conv-BN-activation layer keeps two tensors for the reverse pass instead of three. Same values and gradients.
Tensor batch_norm_act(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                      double eps, Act act);
// A training-mode batch norm and activation: batch_norm_act(x, batch_stats(x), ...) as one op, whose outputs are y
// and the statistics (which other ops may use, e.g. a pass that shares them, or the tangent pass). Same values,
// gradients and tangents as the two ops; its vjp is one per-channel reduction and one element-wise pass
// (backend::bn_act_train_backward) instead of two element-wise passes with a wider dx between them.
struct BatchNormActTrain {
  Tensor y;
  BatchStats stats;
};
BatchNormActTrain batch_norm_act_train(const Tensor& x, const Tensor& scale, const Tensor& shift, double eps, Act act);
// Its tangent: phi'(a) (bn_tangent(x_dot, mean_dot, var_dot) + batch_norm with (scale_dot, shift_dot)), a the
// normalised value; every tangent argument may be undefined (zero).
Tensor batch_norm_act_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                              const Tensor& shift, const Tensor& x_dot, const Tensor& mean_dot, const Tensor& var_dot,
                              const Tensor& scale_dot, const Tensor& shift_dot, double eps, Act act);

// Running averages for evaluation: running = (1-momentum) running + momentum batch (unbiased variance). In place,
// not recorded.
void update_running_stats(Tensor& running_mean, Tensor& running_var, const BatchStats& batch, double momentum,
                          int64_t count_per_channel);

Tensor activation(Act act, const Tensor& x);
inline Tensor relu(const Tensor& x) { return activation(Act::relu, x); }
inline Tensor softplus(const Tensor& x) { return activation(Act::softplus, x); }
inline Tensor abs(const Tensor& x) { return activation(Act::abs, x); }

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double s);
Tensor scale_per_example(const Tensor& x, const Tensor& c);  // x[i, ...] * c[i]
Tensor per_example_dot(const Tensor& a, const Tensor& b);    // [N]
Tensor global_avg_pool(const Tensor& x);                     // NHWC -> [N, C]
Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding);  // NHWC
// Tangent of max pooling: x_dot at each window's maximum of x (piecewise linear: no gradient to x).
Tensor max_pool2d_tangent(const Tensor& x, const Tensor& x_dot, int kernel, int stride, int padding);
Tensor sum(const Tensor& x);                                 // shape {}
Tensor mean(const Tensor& x);                                // shape {}
Tensor reshape(const Tensor& x, const Shape& shape, Layout layout = Layout::plain);
// Converted to another floating dtype (e.g. f32 master weights to bf16); the gradient converts back.
Tensor cast(const Tensor& x, DType dtype);
// cast(x, converted.dtype()) where `converted` already holds x's values in that dtype (a conversion kept from an
// earlier cast while x was unchanged): no conversion runs, the gradient still converts back to x.
Tensor cast_reusing(const Tensor& x, const Tensor& converted);

// Per-example losses on logits [N, K] with i32 labels [N].
Tensor cross_entropy(const Tensor& logits, const Tensor& labels);
Tensor margin_loss(const Tensor& logits, const Tensor& labels);  // z_y - max_{j != y} z_j
// z[i, idx[i]] for logits [N, K] and i32 indices [N] (targeted attack losses).
Tensor gather_logit(const Tensor& z, const Tensor& idx);
// Elementwise a / b.
Tensor div(const Tensor& a, const Tensor& b);
// Per-example KL(softmax(zp) || softmax(zq)) (TRADES). First order only: it has a vjp but no jvp.
Tensor kl_div(const Tensor& zp, const Tensor& zq);

// Tangent ops (DESIGN.md, "the exact gradient without double backprop").
Tensor activation_tangent(Act act, const Tensor& a, const Tensor& a_dot);  // phi'(a) a_dot
BatchStats batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& x_dot);
// Tangent of batch_norm along (x_dot, mean_dot, var_dot) with scale and shift fixed; mean_dot/var_dot may be
// undefined (statistics held constant, e.g. evaluation mode or another pass's statistics).
Tensor bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& x_dot,
                  const Tensor& mean_dot, const Tensor& var_dot, double eps);
Tensor cross_entropy_tangent(const Tensor& logits, const Tensor& labels, const Tensor& logits_dot);
Tensor margin_loss_tangent(const Tensor& logits, const Tensor& labels, const Tensor& logits_dot);

}  // namespace llr
