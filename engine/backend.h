// The raw compute interface: every heavy or per-element operation the differentiable ops need, without autograd.
// One narrow interface (class Backend) that each device implements: engine/cpu/ (Eigen) for Device::cpu, kernels/
// (cuDNN, cuBLAS, our kernels) for Device::cuda, which registers itself at start-up. vjp rules call these directly;
// they are never recorded. All functions allocate their outputs; tensors passed together must share one device.
#pragma once

#include <utility>

#include "engine/elementwise_math.h"
#include "engine/perturbation_math.h"
#include "engine/tensor.h"

namespace llr {

struct Conv2dGeometry {
  int stride = 1;
  int padding = 0;
};

// Output spatial size of a convolution, checking that it is positive.
int64_t conv2d_output_size(int64_t in, int64_t kernel, const Conv2dGeometry& g);

struct BatchStatsTangentGrads {
  Tensor x, mean, xdot;
};
struct BnNormalizeGrads {
  Tensor x, mean, var, scale, shift;
};
struct BnTangentGrads {
  Tensor x, mean, var, scale, xdot, mean_dot, var_dot;
};
// LLR per-example coefficients (see Backend::llr_coefficients).
struct LlrCoefficients {
  Tensor nominal_weight;    // w_nom - lambda sign(g_i): weight of l_i(x)
  Tensor perturbed_weight;  // lambda sign(g_i): weight of l_i(x + delta)
  Tensor tangent_weight;    // c_i = mu sign(d_i) - lambda sign(g_i): v = c_i delta_i
  Tensor abs_g;             // |g_i|, the local-linearity estimate
  Tensor sign_g;            // sign(g_i)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Waits until the device has finished all queued work (a no-op on the CPU).
  virtual void synchronize() = 0;
  // Memory: fill in place, dtype conversion on the same device.
  virtual void fill(Tensor& t, double value) = 0;
  virtual Tensor convert(const Tensor& x, DType dtype) = 0;

  // Elementwise, same shapes and layouts.
  virtual Tensor add(const Tensor& a, const Tensor& b) = 0;
  virtual Tensor sub(const Tensor& a, const Tensor& b) = 0;
  virtual Tensor mul(const Tensor& a, const Tensor& b) = 0;
  virtual Tensor scale(const Tensor& x, double s) = 0;

  // Per-example (first axis) operations.
  virtual Tensor scale_per_example(const Tensor& x, const Tensor& c) = 0;  // x[i, ...] * c[i]
  virtual Tensor per_example_dot(const Tensor& a, const Tensor& b) = 0;    // sum over all but the first axis of a*b

  virtual Tensor sum_all(const Tensor& x) = 0;                               // shape {}
  virtual Tensor broadcast_scalar(const Tensor& s, const Tensor& like) = 0;  // s (one element) in like's shape

  // Channel-last (last axis) broadcasting.
  virtual Tensor bias_add(const Tensor& x, const Tensor& b) = 0;
  virtual Tensor sum_to_last_axis(const Tensor& g) = 0;  // (C): sum over all but the last axis

  // phi^(order)(a) * t * (t2 if defined).
  virtual Tensor activation_forward(Act act, const Tensor& a) = 0;
  virtual Tensor activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t,
                                           const Tensor& t2) = 0;

  // Convolution, NHWC activations, KRSC filters, no bias.
  virtual Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) = 0;
  virtual Tensor conv2d_backward_data(const Tensor& gy, const Tensor& w, const Shape& x_shape,
                                      const Conv2dGeometry& g) = 0;
  virtual Tensor conv2d_backward_filter(const Tensor& x, const Tensor& gy, const Shape& w_shape,
                                        const Conv2dGeometry& g) = 0;

  // Matrix products of row-major 2-D tensors: nt = A B^T, nn = A B, tn = A^T B.
  virtual Tensor matmul_nt(const Tensor& a, const Tensor& b) = 0;
  virtual Tensor matmul_nn(const Tensor& a, const Tensor& b) = 0;
  virtual Tensor matmul_tn(const Tensor& a, const Tensor& b) = 0;

  // Batch norm over all but the last axis; var is the biased (population) variance.
  virtual std::pair<Tensor, Tensor> batch_stats(const Tensor& x) = 0;
  virtual Tensor batch_stats_backward(const Tensor& x, const Tensor& mean, const Tensor& g_mean,
                                      const Tensor& g_var) = 0;
  virtual std::pair<Tensor, Tensor> batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& xdot) = 0;
  virtual BatchStatsTangentGrads batch_stats_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& xdot,
                                                              const Tensor& g_mean_dot, const Tensor& g_var_dot) = 0;
  virtual Tensor bn_normalize(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                              const Tensor& shift, double eps) = 0;
  virtual BnNormalizeGrads bn_normalize_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                                 const Tensor& scale, const Tensor& gy, double eps) = 0;
  // mean_dot / var_dot may be undefined (zero).
  virtual Tensor bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                            const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot, double eps) = 0;
  virtual BnTangentGrads bn_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                             const Tensor& scale, const Tensor& xdot, const Tensor& mean_dot,
                                             const Tensor& var_dot, const Tensor& gt, double eps) = 0;
  // running = (1 - momentum) running + momentum batch; the variance enters unbiased (count / (count - 1)).
  virtual void bn_update_running(Tensor& running_mean, Tensor& running_var, const Tensor& mean, const Tensor& var,
                                 double momentum, int64_t count) = 0;

  // Max pooling over k x k windows (NHWC), zero-padded windows never win. The backward and the tangent use the
  // window's first maximum in x: the backward scatters gy there, the tangent gathers xdot from there.
  virtual Tensor max_pool_forward(const Tensor& x, int k, int stride, int pad) = 0;
  virtual Tensor max_pool_backward(const Tensor& x, const Tensor& gy, int k, int stride, int pad) = 0;
  virtual Tensor max_pool_gather(const Tensor& x, const Tensor& xdot, int k, int stride, int pad) = 0;

  // NHWC -> (N, C) mean over H and W.
  virtual Tensor global_avg_pool(const Tensor& x) = 0;
  virtual Tensor global_avg_pool_backward(const Tensor& gy, const Shape& x_shape) = 0;

  // Losses on logits (N, K) with i32 labels (N).
  virtual Tensor cross_entropy(const Tensor& z, const Tensor& labels) = 0;
  virtual Tensor cross_entropy_backward(const Tensor& z, const Tensor& labels, const Tensor& g) = 0;
  virtual Tensor cross_entropy_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) = 0;
  virtual std::pair<Tensor, Tensor> cross_entropy_tangent_backward(const Tensor& z, const Tensor& labels,
                                                                   const Tensor& zdot, const Tensor& g) = 0;
  virtual Tensor margin_loss(const Tensor& z, const Tensor& labels) = 0;
  virtual Tensor margin_loss_backward(const Tensor& z, const Tensor& labels, const Tensor& g) = 0;
  virtual Tensor margin_loss_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) = 0;

  // Per-example KL(softmax(zp) || softmax(zq)) on logits [N, K] (TRADES), and its vjp with respect to both.
  virtual Tensor kl_div(const Tensor& zp, const Tensor& zq) = 0;
  virtual std::pair<Tensor, Tensor> kl_div_backward(const Tensor& zp, const Tensor& zq, const Tensor& g) = 0;

  // The fused perturbation step (LLR search, PGD attacks), in place on delta (and the Adam moments m, v):
  //   direction = grad_weighted - sign_g[i] gx   (gx and sign_g undefined for PGD: direction = grad_weighted),
  //   delta += step (sign or Adam), projected onto |delta| <= eps and x + delta in [0, 1];
  // returns d_i = <delta_i, gx_i> for the updated delta when gx is defined (else undefined).
  virtual Tensor perturbation_step(Tensor& delta, const Tensor& x, const Tensor& grad_weighted, const Tensor& gx,
                                   const Tensor& sign_g, Tensor& m, Tensor& v, const PerturbationParams& p) = 0;
  // LLR per-example coefficients from the nominal losses l, perturbed losses lp and d, with g = lp - l - d.
  virtual LlrCoefficients llr_coefficients(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom,
                                           double lambda, double mu) = 0;
  // A random start inside the eps-ball, projected so that x + delta is in [0, 1]: uniform in [-eps, eps], or
  // normal_scale * N(0, 1) when normal_scale > 0 (TRADES). Element i draws from (seed, counter + i).
  virtual Tensor perturbation_init(const Tensor& x, double eps, double normal_scale, uint64_t seed,
                                   uint64_t counter) = 0;

  // Attack support. out[i] = z[i, idx[i]]; its adjoint scatters g[i] to column idx[i] of a [N, K] zero tensor.
  virtual Tensor gather_columns(const Tensor& z, const Tensor& idx) = 0;
  virtual Tensor scatter_columns(const Tensor& g, const Tensor& idx, int64_t k) = 0;
  virtual Tensor div(const Tensor& a, const Tensor& b) = 0;  // elementwise a / b
  // One APGD step (Croce & Hein 2020) for l_inf, per example i with step size eta[i], in place on delta:
  //   z = P(delta + eta_i sign(grad));  delta' = P(delta + alpha (z - delta) + (1 - alpha)(delta - delta_prev));
  // P projects onto |delta| <= eps and x + delta in [0, 1]. delta_prev receives the old delta.
  virtual void apgd_step(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
                         double alpha, double eps) = 0;
  // Row-wise (first axis) choice: out[i] = mask[i] != 0 ? b[i] : a[i]; mask is a per-example vector.
  virtual Tensor select_rows(const Tensor& a, const Tensor& b, const Tensor& mask) = 0;

  // Training support (not differentiable).
  // How many rows of logits [N, K] have their first maximum at the label: a one-element tensor on the device (f32,
  // or f64 for f64 logits), so metrics need no host synchronisation.
  virtual Tensor count_correct(const Tensor& z, const Tensor& labels) = 0;
  // A batch from u8 NHWC images: out[b] = images[order[begin + b]] scaled to [0, 1] in `dtype`, augmented when
  // `augment` (engine/augment_math.h: reflect-pad 4, random crop, random flip, drawn from (seed, step, b)), for
  // b < count. `order` is an i32 vector on the images' device (an epoch's permutation, uploaded once).
  virtual Tensor gather_images(const Tensor& images, const Tensor& order, int64_t begin, int64_t count, bool augment,
                               uint64_t seed, uint64_t step, DType dtype) = 0;
  // labels[order[begin + b]].
  virtual Tensor gather_labels(const Tensor& labels, const Tensor& order, int64_t begin, int64_t count) = 0;
  // One fused SGD step in place (PyTorch semantics): g' = g + wd p; buf = g' on the first step, else
  // momentum buf + g'; p -= lr (nesterov ? g' + momentum buf : buf).
  virtual void sgd_update(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, double lr, double momentum,
                          double weight_decay, bool nesterov, bool first_step) = 0;
};

// The backend of a device; throws a clear error when this build or process has none for it.
Backend& backend_for(Device device);
void register_backend(Device device, Backend* backend);
bool has_backend(Device device);

// Device copies (through the CUDA backend's registered copier).
class DeviceCopier {
 public:
  virtual ~DeviceCopier() = default;
  virtual void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) = 0;
};
void register_device_copier(DeviceCopier* copier);
Tensor to_device(const Tensor& x, Device device);  // a copy on `device` (same dtype, layout)
// Copies src's values into dst's storage (same shape and dtype; any devices), e.g. loading a checkpoint in place.
void copy_into(const Tensor& dst, const Tensor& src);

// Call sites write backend::add(a, b); the first tensor argument's device picks the implementation.
namespace backend {

Tensor zeros(const Shape& shape, DType dtype, Layout layout, Device device);
Tensor full_like(const Tensor& x, double value);

inline Tensor add(const Tensor& a, const Tensor& b) { return backend_for(a.device()).add(a, b); }
inline Tensor sub(const Tensor& a, const Tensor& b) { return backend_for(a.device()).sub(a, b); }
inline Tensor mul(const Tensor& a, const Tensor& b) { return backend_for(a.device()).mul(a, b); }
inline Tensor scale(const Tensor& x, double s) { return backend_for(x.device()).scale(x, s); }
inline Tensor scale_per_example(const Tensor& x, const Tensor& c) {
  return backend_for(x.device()).scale_per_example(x, c);
}
inline Tensor per_example_dot(const Tensor& a, const Tensor& b) {
  return backend_for(a.device()).per_example_dot(a, b);
}
inline Tensor sum_all(const Tensor& x) { return backend_for(x.device()).sum_all(x); }
inline Tensor broadcast_scalar(const Tensor& s, const Tensor& like) {
  return backend_for(like.device()).broadcast_scalar(s, like);
}
inline Tensor bias_add(const Tensor& x, const Tensor& b) { return backend_for(x.device()).bias_add(x, b); }
inline Tensor sum_to_last_axis(const Tensor& g) { return backend_for(g.device()).sum_to_last_axis(g); }
inline Tensor activation_forward(Act act, const Tensor& a) { return backend_for(a.device()).activation_forward(act, a); }
inline Tensor activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t, const Tensor& t2 = {}) {
  return backend_for(a.device()).activation_derivative_mul(act, order, a, t, t2);
}
inline Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) {
  return backend_for(x.device()).conv2d_forward(x, w, g);
}
inline Tensor conv2d_backward_data(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g) {
  return backend_for(gy.device()).conv2d_backward_data(gy, w, x_shape, g);
}
inline Tensor conv2d_backward_filter(const Tensor& x, const Tensor& gy, const Shape& w_shape,
                                     const Conv2dGeometry& g) {
  return backend_for(x.device()).conv2d_backward_filter(x, gy, w_shape, g);
}
inline Tensor matmul_nt(const Tensor& a, const Tensor& b) { return backend_for(a.device()).matmul_nt(a, b); }
inline Tensor matmul_nn(const Tensor& a, const Tensor& b) { return backend_for(a.device()).matmul_nn(a, b); }
inline Tensor matmul_tn(const Tensor& a, const Tensor& b) { return backend_for(a.device()).matmul_tn(a, b); }
inline std::pair<Tensor, Tensor> batch_stats(const Tensor& x) { return backend_for(x.device()).batch_stats(x); }
inline Tensor batch_stats_backward(const Tensor& x, const Tensor& mean, const Tensor& g_mean, const Tensor& g_var) {
  return backend_for(x.device()).batch_stats_backward(x, mean, g_mean, g_var);
}
inline std::pair<Tensor, Tensor> batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& xdot) {
  return backend_for(x.device()).batch_stats_tangent(x, mean, xdot);
}
inline BatchStatsTangentGrads batch_stats_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& xdot,
                                                           const Tensor& g_mean_dot, const Tensor& g_var_dot) {
  return backend_for(x.device()).batch_stats_tangent_backward(x, mean, xdot, g_mean_dot, g_var_dot);
}
inline Tensor bn_normalize(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                           const Tensor& shift, double eps) {
  return backend_for(x.device()).bn_normalize(x, mean, var, scale, shift, eps);
}
inline BnNormalizeGrads bn_normalize_backward(const Tensor& x, const Tensor& mean, const Tensor& var,
                                              const Tensor& scale, const Tensor& gy, double eps) {
  return backend_for(x.device()).bn_normalize_backward(x, mean, var, scale, gy, eps);
}
inline Tensor bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                         const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot, double eps) {
  return backend_for(x.device()).bn_tangent(x, mean, var, scale, xdot, mean_dot, var_dot, eps);
}
inline BnTangentGrads bn_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                                          const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot,
                                          const Tensor& gt, double eps) {
  return backend_for(x.device()).bn_tangent_backward(x, mean, var, scale, xdot, mean_dot, var_dot, gt, eps);
}
inline void bn_update_running(Tensor& running_mean, Tensor& running_var, const Tensor& mean, const Tensor& var,
                              double momentum, int64_t count) {
  backend_for(running_mean.device()).bn_update_running(running_mean, running_var, mean, var, momentum, count);
}
inline Tensor max_pool_forward(const Tensor& x, int k, int stride, int pad) {
  return backend_for(x.device()).max_pool_forward(x, k, stride, pad);
}
inline Tensor max_pool_backward(const Tensor& x, const Tensor& gy, int k, int stride, int pad) {
  return backend_for(x.device()).max_pool_backward(x, gy, k, stride, pad);
}
inline Tensor max_pool_gather(const Tensor& x, const Tensor& xdot, int k, int stride, int pad) {
  return backend_for(x.device()).max_pool_gather(x, xdot, k, stride, pad);
}
inline Tensor global_avg_pool(const Tensor& x) { return backend_for(x.device()).global_avg_pool(x); }
inline Tensor global_avg_pool_backward(const Tensor& gy, const Shape& x_shape) {
  return backend_for(gy.device()).global_avg_pool_backward(gy, x_shape);
}
inline Tensor cross_entropy(const Tensor& z, const Tensor& labels) {
  return backend_for(z.device()).cross_entropy(z, labels);
}
inline Tensor cross_entropy_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  return backend_for(z.device()).cross_entropy_backward(z, labels, g);
}
inline Tensor cross_entropy_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  return backend_for(z.device()).cross_entropy_tangent(z, labels, zdot);
}
inline std::pair<Tensor, Tensor> cross_entropy_tangent_backward(const Tensor& z, const Tensor& labels,
                                                                const Tensor& zdot, const Tensor& g) {
  return backend_for(z.device()).cross_entropy_tangent_backward(z, labels, zdot, g);
}
inline Tensor margin_loss(const Tensor& z, const Tensor& labels) {
  return backend_for(z.device()).margin_loss(z, labels);
}
inline Tensor margin_loss_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  return backend_for(z.device()).margin_loss_backward(z, labels, g);
}
inline Tensor margin_loss_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  return backend_for(z.device()).margin_loss_tangent(z, labels, zdot);
}

inline Tensor kl_div(const Tensor& zp, const Tensor& zq) { return backend_for(zp.device()).kl_div(zp, zq); }
inline std::pair<Tensor, Tensor> kl_div_backward(const Tensor& zp, const Tensor& zq, const Tensor& g) {
  return backend_for(zp.device()).kl_div_backward(zp, zq, g);
}
inline Tensor perturbation_step(Tensor& delta, const Tensor& x, const Tensor& grad_weighted, const Tensor& gx,
                                const Tensor& sign_g, Tensor& m, Tensor& v, const PerturbationParams& p) {
  return backend_for(delta.device()).perturbation_step(delta, x, grad_weighted, gx, sign_g, m, v, p);
}
inline LlrCoefficients llr_coefficients(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom,
                                        double lambda, double mu) {
  return backend_for(l.device()).llr_coefficients(l, lp, d, w_nom, lambda, mu);
}
inline Tensor perturbation_init(const Tensor& x, double eps, double normal_scale, uint64_t seed, uint64_t counter) {
  return backend_for(x.device()).perturbation_init(x, eps, normal_scale, seed, counter);
}
inline Tensor gather_columns(const Tensor& z, const Tensor& idx) {
  return backend_for(z.device()).gather_columns(z, idx);
}
inline Tensor scatter_columns(const Tensor& g, const Tensor& idx, int64_t k) {
  return backend_for(g.device()).scatter_columns(g, idx, k);
}
inline Tensor div(const Tensor& a, const Tensor& b) { return backend_for(a.device()).div(a, b); }
inline void apgd_step(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
                      double alpha, double eps) {
  backend_for(delta.device()).apgd_step(delta, delta_prev, x, grad, eta, alpha, eps);
}
inline Tensor select_rows(const Tensor& a, const Tensor& b, const Tensor& mask) {
  return backend_for(a.device()).select_rows(a, b, mask);
}
inline Tensor count_correct(const Tensor& z, const Tensor& labels) {
  return backend_for(z.device()).count_correct(z, labels);
}
inline Tensor gather_images(const Tensor& images, const Tensor& order, int64_t begin, int64_t count, bool augment,
                            uint64_t seed, uint64_t step, DType dtype) {
  return backend_for(images.device()).gather_images(images, order, begin, count, augment, seed, step, dtype);
}
inline Tensor gather_labels(const Tensor& labels, const Tensor& order, int64_t begin, int64_t count) {
  return backend_for(labels.device()).gather_labels(labels, order, begin, count);
}
inline void sgd_update(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, double lr, double momentum,
                       double weight_decay, bool nesterov, bool first_step) {
  backend_for(param.device()).sgd_update(param, grad, momentum_buffer, lr, momentum, weight_decay, nesterov,
                                         first_step);
}

}  // namespace backend
}  // namespace llr
