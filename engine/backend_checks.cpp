// The argument checks of every backend function (engine/backend_functions.def), run by the dispatch before any
// device's implementation: shapes, dtypes and layouts are checked here once, so a backend implements only the
// arithmetic. Messages name the function and the offending tensor.
#include "engine/backend.h"

namespace llr {

int64_t conv2d_output_size(int64_t in, int64_t kernel, const Conv2dGeometry& g) {
  LLR_CHECK(g.stride >= 1 && g.padding >= 0, "conv2d: stride must be >= 1 and padding >= 0, got stride ", g.stride,
            " padding ", g.padding);
  int64_t out = (in + 2 * g.padding - kernel) / g.stride + 1;
  LLR_CHECK(in + 2 * g.padding >= kernel && out >= 1, "conv2d: kernel ", kernel, " does not fit input extent ", in,
            " with padding ", g.padding);
  return out;
}

namespace backend_check {

namespace {

void floating(const char* op, const Tensor& t) {
  LLR_CHECK(t.defined(), op, ": undefined tensor argument");
  LLR_CHECK(is_floating(t.dtype()), op, ": expected a floating tensor, got ", t.describe());
}

// Every tensor defined, floating, and of one dtype.
void floating(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    floating(op, *t);
    if (!first) first = t;
    LLR_CHECK(t->dtype() == first->dtype(), op, ": dtype mismatch, ", first->describe(), " vs ", t->describe());
  }
}

void same_shape(const char* op, const Tensor& a, const Tensor& b) {
  LLR_CHECK(a.shape() == b.shape(), op, ": shape mismatch, ", a.describe(), " vs ", b.describe());
}

// A per-channel or per-example vector of length n in the stat dtype of `data`.
void stat_vector(const char* op, const char* what, const Tensor& t, int64_t n, const Tensor& data) {
  LLR_CHECK(t.defined(), op, ": ", what, " is undefined");
  LLR_CHECK(t.rank() == 1 && t.dim(0) == n, op, ": ", what, " must have shape [", n, "], got ", t.describe());
  LLR_CHECK(t.dtype() == stat_dtype(data.dtype()), op, ": ", what, " must be ", dtype_name(stat_dtype(data.dtype())),
            " for ", data.describe(), ", got ", t.describe());
}

// i32 indices [n] (labels, columns).
void indices(const char* op, const char* what, const Tensor& t, int64_t n) {
  LLR_CHECK(t.defined(), op, ": undefined ", what);
  LLR_CHECK(t.dtype() == DType::i32, op, ": ", what, " must be i32, got ", t.describe());
  LLR_CHECK(t.rank() == 1 && t.dim(0) == n, op, ": ", what, " must have shape [", n, "], got ", t.describe());
}

int64_t channels(const char* op, const Tensor& x) {
  LLR_CHECK(x.rank() >= 1, op, ": needs at least one axis, got ", x.describe());
  return x.dim(-1);
}

void batch_axis(const char* op, const Tensor& x) {
  LLR_CHECK(x.rank() >= 1 && x.dim(0) > 0, op, ": needs a leading batch axis, got ", x.describe());
}

// Logits [N, K], K >= 2, with labels [N].
void logits(const char* op, const Tensor& z, const Tensor& labels) {
  floating(op, z);
  LLR_CHECK(z.rank() == 2 && z.dim(1) >= 2, op, ": logits must have shape [N, K] with K >= 2, got ", z.describe());
  indices(op, "labels", labels, z.dim(0));
}

// A per-example cotangent of a loss on logits z.
void per_example(const char* op, const Tensor& g, const Tensor& z) {
  stat_vector(op, "per-example gradient", g, z.dim(0), z);
}

// x with its per-channel companions (the defined ones) for batch norm: at least one element per channel.
void batch_norm_args(const char* op, const Tensor& x, std::initializer_list<const Tensor*> per_channel) {
  floating(op, x);
  int64_t c = channels(op, x);
  LLR_CHECK(c > 0 && x.numel() / c > 0, op, ": no elements per channel in ", x.describe());
  for (const Tensor* t : per_channel)
    if (t->defined()) stat_vector(op, "per-channel tensor", *t, c, x);
}

void conv_layouts(const char* op, const Tensor& x_or_gy, const Tensor& w) {
  LLR_CHECK(x_or_gy.layout() == Layout::nhwc, op, ": input must be NHWC, got ", x_or_gy.describe(),
            " (convert NCHW data before it reaches the engine)");
  LLR_CHECK(w.layout() == Layout::krsc, op, ": filter must be KRSC, got ", w.describe());
}

// The output shape [N, P, Q, K] of a convolution of x_shape by w_shape.
Shape conv_output(const char* op, const Shape& x, const Shape& w, const Conv2dGeometry& g) {
  LLR_CHECK(x.size() == 4 && w.size() == 4, op, ": expected rank-4 input and filter, got ", shape_str(x), " and ",
            shape_str(w));
  LLR_CHECK(x[3] == w[3], op, ": input has ", x[3], " channels but the KRSC filter ", shape_str(w), " expects ", w[3]);
  return {x[0], conv2d_output_size(x[1], w[1], g), conv2d_output_size(x[2], w[2], g), w[0]};
}

void matrices(const char* op, const Tensor& a, const Tensor& b) {
  floating(op, {&a, &b});
  LLR_CHECK(a.rank() == 2, op, ": expected a 2-D tensor, got ", a.describe());
  LLR_CHECK(b.rank() == 2, op, ": expected a 2-D tensor, got ", b.describe());
}

Shape pool_output(const char* op, const Tensor& x, int k, int stride, int pad) {
  floating(op, x);
  LLR_CHECK(x.layout() == Layout::nhwc, op, ": input must be NHWC, got ", x.describe());
  LLR_CHECK(k >= 1 && stride >= 1 && pad >= 0 && pad < k, op, ": bad window ", k, " stride ", stride, " pad ", pad);
  Conv2dGeometry g{stride, pad};
  return {x.dim(0), conv2d_output_size(x.dim(1), k, g), conv2d_output_size(x.dim(2), k, g), x.dim(3)};
}

void logit_pair(const char* op, const Tensor& zp, const Tensor& zq) {
  floating(op, {&zp, &zq});
  same_shape(op, zp, zq);
  LLR_CHECK(zp.rank() == 2 && zp.dim(1) >= 2, op, ": logits must be [N, K], got ", zp.describe());
}

void binary(const char* op, const Tensor& a, const Tensor& b) {
  floating(op, {&a, &b});
  same_shape(op, a, b);
  LLR_CHECK(a.layout() == b.layout(), op, ": layout mismatch, ", a.describe(), " vs ", b.describe());
}

}  // namespace

void fill(Tensor& t, double) { LLR_CHECK(t.defined(), "fill: undefined tensor"); }

void convert(const Tensor& x, DType dtype) {
  LLR_CHECK(x.defined(), "convert: undefined tensor");
  LLR_CHECK((is_floating(x.dtype()) || x.dtype() == DType::u8) && is_floating(dtype),
            "convert: only to floating dtypes from floating or u8, got ", x.describe(), " to ", dtype_name(dtype));
}

void add(const Tensor& a, const Tensor& b) { binary("add", a, b); }
void add_widening(const Tensor& a, const Tensor& b) {
  floating("add_widening", a);
  floating("add_widening", b);
  same_shape("add_widening", a, b);
  LLR_CHECK(a.layout() == b.layout(), "add_widening: layout mismatch, ", a.describe(), " vs ", b.describe());
}
void sub(const Tensor& a, const Tensor& b) { binary("sub", a, b); }
void mul(const Tensor& a, const Tensor& b) { binary("mul", a, b); }
void div(const Tensor& a, const Tensor& b) { binary("div", a, b); }
void scale(const Tensor& x, double) { floating("scale", x); }

void scale_per_example(const Tensor& x, const Tensor& c) {
  floating("scale_per_example", x);
  batch_axis("scale_per_example", x);
  stat_vector("scale_per_example", "factors", c, x.dim(0), x);
}

void per_example_dot(const Tensor& a, const Tensor& b) {
  floating("per_example_dot", {&a, &b});
  same_shape("per_example_dot", a, b);
  batch_axis("per_example_dot", a);
}

void sum_all(const Tensor& x) { floating("sum", x); }

void broadcast_scalar(const Tensor& s, const Tensor& like) {
  floating("broadcast_scalar", like);
  LLR_CHECK(s.defined() && s.numel() == 1 && s.dtype() == stat_dtype(like.dtype()), "broadcast_scalar: expected one ",
            dtype_name(stat_dtype(like.dtype())), " element, got ", s.defined() ? s.describe() : "undefined");
}

void bias_add(const Tensor& x, const Tensor& b) {
  floating("bias_add", x);
  stat_vector("bias_add", "bias", b, channels("bias_add", x), x);
}

void sum_to_last_axis(const Tensor& g) {
  floating("sum_to_last_axis", g);
  channels("sum_to_last_axis", g);
}

void activation_forward(Act, const Tensor& a) { floating("activation", a); }

void activation_derivative_mul(Act, int order, const Tensor& a, const Tensor& t, const Tensor& t2) {
  floating("activation_derivative_mul", {&a, &t});
  same_shape("activation_derivative_mul", a, t);
  if (t2.defined()) {
    floating("activation_derivative_mul", {&a, &t2});
    same_shape("activation_derivative_mul", a, t2);
  }
  LLR_CHECK(order >= 1 && order <= 3, "activation_derivative_mul: derivative order ", order, " not in 1..3");
}

void conv2d_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) {
  floating("conv2d", {&x, &w});
  conv_layouts("conv2d", x, w);
  conv_output("conv2d", x.shape(), w.shape(), g);
}

void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g) {
  floating("conv2d_backward_data", {&gy, &w});
  conv_layouts("conv2d_backward_data", gy, w);
  Shape y = conv_output("conv2d_backward_data", x_shape, w.shape(), g);
  LLR_CHECK(gy.shape() == y, "conv2d_backward_data: output gradient ", gy.describe(),
            " does not match the convolution output ", shape_str(y));
}

void conv2d_backward_filter(const Tensor& x, const Tensor& gy, const Shape& w_shape, const Conv2dGeometry& g) {
  floating("conv2d_backward_filter", {&x, &gy});
  LLR_CHECK(x.layout() == Layout::nhwc && gy.layout() == Layout::nhwc,
            "conv2d_backward_filter: input and output gradient must be NHWC, got ", x.describe(), " and ",
            gy.describe());
  Shape y = conv_output("conv2d_backward_filter", x.shape(), w_shape, g);
  LLR_CHECK(gy.shape() == y, "conv2d_backward_filter: output gradient ", gy.describe(),
            " does not match the convolution output ", shape_str(y));
}

void matmul_nt(const Tensor& a, const Tensor& b) {
  matrices("matmul_nt", a, b);
  LLR_CHECK(a.dim(1) == b.dim(1), "matmul_nt: inner sizes differ, ", a.describe(), " times transposed ",
            b.describe());
}

void matmul_nn(const Tensor& a, const Tensor& b) {
  matrices("matmul_nn", a, b);
  LLR_CHECK(a.dim(1) == b.dim(0), "matmul_nn: inner sizes differ, ", a.describe(), " times ", b.describe());
}

void matmul_tn(const Tensor& a, const Tensor& b) {
  matrices("matmul_tn", a, b);
  LLR_CHECK(a.dim(0) == b.dim(0), "matmul_tn: inner sizes differ, transposed ", a.describe(), " times ",
            b.describe());
}

void batch_stats(const Tensor& x) { batch_norm_args("batch_stats", x, {}); }

// An addend is undefined, or of x's shape and layout and in x's dtype or its statistics dtype (f32 for bf16 data).
void addend_arg(const char* op, const Tensor& x, const Tensor& addend) {
  if (!addend.defined()) return;
  same_shape(op, x, addend);
  LLR_CHECK(addend.layout() == x.layout(), op, ": addend layout ", addend.describe(), " vs ", x.describe());
  LLR_CHECK(addend.dtype() == x.dtype() || addend.dtype() == stat_dtype(x.dtype()), op, ": addend ",
            addend.describe(), " is neither ", dtype_name(x.dtype()), " nor ", dtype_name(stat_dtype(x.dtype())));
}

void batch_stats_backward(const Tensor& x, const Tensor& mean, const Tensor& g_mean, const Tensor& g_var,
                          const Tensor& addend) {
  batch_norm_args("batch_stats_backward", x, {&mean, &g_mean, &g_var});
  LLR_CHECK(mean.defined() && g_mean.defined() && g_var.defined(), "batch_stats_backward: undefined argument");
  addend_arg("batch_stats_backward", x, addend);
}

void batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& xdot) {
  batch_norm_args("batch_stats_tangent", x, {&mean});
  floating("batch_stats_tangent", {&x, &xdot});
  same_shape("batch_stats_tangent", x, xdot);
  LLR_CHECK(xdot.dtype() == x.dtype(), "batch_stats_tangent: xdot ", xdot.describe(), " vs x ", x.describe());
  LLR_CHECK(mean.defined(), "batch_stats_tangent: undefined mean");
}

void batch_stats_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& xdot, const Tensor& mean_dot,
                                  const Tensor& g_mean_dot, const Tensor& g_var_dot, const Tensor& addend_x,
                                  const Tensor& addend_xdot) {
  batch_norm_args("batch_stats_tangent_backward", x, {&mean, &mean_dot, &g_mean_dot, &g_var_dot});
  floating("batch_stats_tangent_backward", {&x, &xdot});
  same_shape("batch_stats_tangent_backward", x, xdot);
  LLR_CHECK(mean.defined() && mean_dot.defined() && g_mean_dot.defined() && g_var_dot.defined(),
            "batch_stats_tangent_backward: undefined argument");
  LLR_CHECK(xdot.dtype() == x.dtype(), "batch_stats_tangent_backward: xdot ", xdot.describe(), " vs x ",
            x.describe());
  addend_arg("batch_stats_tangent_backward", x, addend_x);
  addend_arg("batch_stats_tangent_backward", x, addend_xdot);
}

void bn_act_forward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                    double eps, Act) {
  LLR_CHECK(mean.defined() && var.defined() && scale.defined() && shift.defined(),
            "batch_norm: mean, var, scale and shift must all be defined");
  batch_norm_args("batch_norm", x, {&mean, &var, &scale, &shift});
  LLR_CHECK(eps > 0, "batch_norm: eps must be positive, got ", eps);
}

void bn_act_backward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                     const Tensor& gy, double eps, Act, bool, bool, const Tensor& addend) {
  addend_arg("batch_norm_backward", x, addend);
  LLR_CHECK(mean.defined() && var.defined() && scale.defined() && shift.defined(),
            "batch_norm_backward: undefined statistics or parameters");
  batch_norm_args("batch_norm_backward", x, {&mean, &var, &scale, &shift});
  floating("batch_norm_backward", {&x, &gy});
  same_shape("batch_norm_backward", x, gy);
  LLR_CHECK(eps > 0, "batch_norm_backward: eps must be positive, got ", eps);
}

void bn_act_train_backward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                           const Tensor& shift, const Tensor& gy, const Tensor& g_mean, const Tensor& g_var, double eps,
                           Act, bool, const Tensor& addend) {
  addend_arg("batch_norm_backward", x, addend);
  LLR_CHECK(mean.defined() && var.defined() && scale.defined() && shift.defined() && g_mean.defined() &&
                g_var.defined(),
            "batch_norm_backward: undefined statistics, parameters or statistics' cotangents");
  batch_norm_args("batch_norm_backward", x, {&mean, &var, &scale, &shift, &g_mean, &g_var});
  floating("batch_norm_backward", {&x, &gy});
  same_shape("batch_norm_backward", x, gy);
  LLR_CHECK(gy.dtype() == x.dtype(), "batch_norm_backward: gy ", gy.describe(), " vs x ", x.describe());
  LLR_CHECK(eps > 0, "batch_norm_backward: eps must be positive, got ", eps);
}

void bn_act_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                    const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot, const Tensor& scale_dot,
                    const Tensor& shift_dot, double eps, Act) {
  LLR_CHECK(mean.defined() && var.defined() && scale.defined() && shift.defined(),
            "batch_norm_act_tangent: undefined statistics or parameters");
  batch_norm_args("batch_norm_act_tangent", x, {&mean, &var, &scale, &shift, &mean_dot, &var_dot, &scale_dot, &shift_dot});
  floating("batch_norm_act_tangent", {&x, &xdot});
  same_shape("batch_norm_act_tangent", x, xdot);
  LLR_CHECK(eps > 0, "batch_norm_act_tangent: eps must be positive, got ", eps);
}

void bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& xdot,
                const Tensor& mean_dot, const Tensor& var_dot, double eps) {
  LLR_CHECK(mean.defined() && var.defined() && scale.defined(), "bn_tangent: undefined statistics");
  batch_norm_args("bn_tangent", x, {&mean, &var, &scale, &mean_dot, &var_dot});
  floating("bn_tangent", {&x, &xdot});
  same_shape("bn_tangent", x, xdot);
  LLR_CHECK(eps > 0, "bn_tangent: eps must be positive, got ", eps);
}

void bn_tangent_backward(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                         const Tensor& xdot, const Tensor& mean_dot, const Tensor& var_dot, const Tensor& gt,
                         double eps, const Tensor& addend_xdot) {
  addend_arg("bn_tangent_backward", x, addend_xdot);
  LLR_CHECK(mean.defined() && var.defined() && scale.defined(), "bn_tangent_backward: undefined statistics");
  batch_norm_args("bn_tangent_backward", x, {&mean, &var, &scale, &mean_dot, &var_dot});
  floating("bn_tangent_backward", {&x, &xdot, &gt});
  same_shape("bn_tangent_backward", x, xdot);
  same_shape("bn_tangent_backward", x, gt);
  LLR_CHECK(gt.dtype() == x.dtype(), "bn_tangent_backward: gt ", gt.describe(), " vs x ", x.describe());
  LLR_CHECK(eps > 0, "bn_tangent_backward: eps must be positive, got ", eps);
}

void bn_update_running(Tensor& running_mean, Tensor& running_var, const Tensor& mean, const Tensor& var,
                       double momentum, int64_t count) {
  floating("bn_update_running", {&running_mean, &running_var, &mean, &var});
  int64_t c = running_mean.numel();
  for (const Tensor* t : std::initializer_list<const Tensor*>{&running_mean, &running_var, &mean, &var})
    LLR_CHECK(t->rank() == 1 && t->dim(0) == c, "bn_update_running: per-channel tensor must have shape [", c,
              "], got ", t->describe());
  LLR_CHECK(momentum >= 0 && momentum <= 1, "bn_update_running: momentum ", momentum, " not in [0, 1]");
  LLR_CHECK(count >= 2, "bn_update_running: need at least 2 values per channel for an unbiased variance, got ",
            count);
}

void max_pool_forward(const Tensor& x, int k, int stride, int pad) { pool_output("max_pool", x, k, stride, pad); }

void max_pool_backward(const Tensor& x, const Tensor& gy, int k, int stride, int pad) {
  Shape y = pool_output("max_pool_backward", x, k, stride, pad);
  floating("max_pool_backward", {&x, &gy});
  LLR_CHECK(gy.shape() == y, "max_pool_backward: gradient ", gy.describe(), " for output ", shape_str(y));
}

void max_pool_gather(const Tensor& x, const Tensor& xdot, int k, int stride, int pad) {
  pool_output("max_pool_tangent", x, k, stride, pad);
  floating("max_pool_tangent", {&x, &xdot});
  same_shape("max_pool_tangent", x, xdot);
}

void global_avg_pool(const Tensor& x) {
  floating("global_avg_pool", x);
  LLR_CHECK(x.layout() == Layout::nhwc, "global_avg_pool: input must be NHWC, got ", x.describe());
  LLR_CHECK(x.dim(1) * x.dim(2) > 0, "global_avg_pool: empty spatial extent in ", x.describe());
}

void global_avg_pool_backward(const Tensor& gy, const Shape& x_shape) {
  floating("global_avg_pool_backward", gy);
  LLR_CHECK(x_shape.size() == 4 && x_shape[1] * x_shape[2] > 0 && gy.shape() == Shape({x_shape[0], x_shape[3]}),
            "global_avg_pool_backward: gradient ", gy.describe(), " for input ", shape_str(x_shape));
}

void cross_entropy(const Tensor& z, const Tensor& labels) { logits("cross_entropy", z, labels); }

void cross_entropy_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  logits("cross_entropy_backward", z, labels);
  per_example("cross_entropy_backward", g, z);
}

void cross_entropy_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  logits("cross_entropy_tangent", z, labels);
  floating("cross_entropy_tangent", {&z, &zdot});
  same_shape("cross_entropy_tangent", z, zdot);
}

void cross_entropy_tangent_backward(const Tensor& z, const Tensor& labels, const Tensor& zdot, const Tensor& g) {
  logits("cross_entropy_tangent_backward", z, labels);
  floating("cross_entropy_tangent_backward", {&z, &zdot});
  same_shape("cross_entropy_tangent_backward", z, zdot);
  per_example("cross_entropy_tangent_backward", g, z);
}

void margin_loss(const Tensor& z, const Tensor& labels) { logits("margin_loss", z, labels); }

void margin_loss_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  logits("margin_loss_backward", z, labels);
  per_example("margin_loss_backward", g, z);
}

void margin_loss_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  logits("margin_loss_tangent", z, labels);
  floating("margin_loss_tangent", {&z, &zdot});
  same_shape("margin_loss_tangent", z, zdot);
}

void kl_div(const Tensor& zp, const Tensor& zq) { logit_pair("kl_div", zp, zq); }

void kl_div_backward(const Tensor& zp, const Tensor& zq, const Tensor& g) {
  logit_pair("kl_div_backward", zp, zq);
  per_example("kl_div_backward", g, zp);
}

void gather_columns(const Tensor& z, const Tensor& idx) {
  floating("gather_columns", z);
  LLR_CHECK(z.rank() == 2, "gather_columns: expected [N, K], got ", z.describe());
  indices("gather_columns", "column indices", idx, z.dim(0));
}

void scatter_columns(const Tensor& g, const Tensor& idx, int64_t k) {
  floating("scatter_columns", g);
  LLR_CHECK(g.rank() == 1, "scatter_columns: expected [N], got ", g.describe());
  LLR_CHECK(k >= 1, "scatter_columns: need at least one column, got ", k);
  indices("scatter_columns", "column indices", idx, g.dim(0));
}

}  // namespace backend_check
}  // namespace llr
