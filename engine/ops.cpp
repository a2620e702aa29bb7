#include "engine/ops.h"

namespace llr {

namespace {

using Tensors = std::vector<Tensor>;

Tensor record1(const char* name, const Tensors& inputs, Tensor out, VjpFn vjp, JvpFn jvp) {
  Tensors outs{std::move(out)};
  detail::finish_op(name, inputs, outs, std::move(vjp), std::move(jvp));
  return outs[0];
}

// a + b where either may be undefined (a zero tangent).
Tensor add_defined(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return add(a, b);
}

[[noreturn]] void no_second_order(const char* op) {
  LLR_FAIL(op, ": the tangent of a tangent op (second-order forward mode) is not supported");
}

Tensor zeros_like(const Tensor& x) { return backend::zeros(x.shape(), x.dtype(), x.layout(), x.device()); }

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dOptions options) {
  Conv2dGeometry g{options.stride, options.padding};
  Tensor y = backend::conv2d_forward(x, w, g);
  y = record1(
      "conv2d", {x, w}, y,
      [x, w, g](const Tensors& gy, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? backend::conv2d_backward_data(gy[0], w, x.shape(), g) : Tensor(),
                needs[1] ? backend::conv2d_backward_filter(x, gy[0], w.shape(), g) : Tensor()};
      },
      [x, w, options](const Tensors& t) -> Tensors {
        Tensor out;
        if (t[0].defined()) out = conv2d(t[0], w, {}, options);
        if (t[1].defined()) out = add_defined(out, conv2d(x, t[1], {}, options));
        return {out};
      });
  return bias.defined() ? bias_add(y, bias) : y;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  Tensor y = backend::matmul_nt(x, w);
  y = record1(
      "linear", {x, w}, y,
      [x, w](const Tensors& gy, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? backend::matmul_nn(gy[0], w) : Tensor(),
                needs[1] ? backend::matmul_tn(gy[0], x) : Tensor()};
      },
      [x, w](const Tensors& t) -> Tensors {
        Tensor out;
        if (t[0].defined()) out = linear(t[0], w);
        if (t[1].defined()) out = add_defined(out, linear(x, t[1]));
        return {out};
      });
  return bias.defined() ? bias_add(y, bias) : y;
}

Tensor bias_add(const Tensor& x, const Tensor& b) {
  return record1(
      "bias_add", {x, b}, backend::bias_add(x, b),
      [](const Tensors& gy, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? gy[0] : Tensor(), needs[1] ? backend::sum_to_last_axis(gy[0]) : Tensor()};
      },
      [x](const Tensors& t) -> Tensors {
        if (!t[1].defined()) return {t[0]};
        return {bias_add(t[0].defined() ? t[0] : zeros_like(x), t[1])};
      });
}

BatchStats batch_stats(const Tensor& x) {
  auto [m, v] = backend::batch_stats(x);
  Tensors outs{m, v};
  Tensor mean_out = m;
  detail::finish_op(
      "batch_stats", {x}, outs,
      [x, mean_out](const Tensors& g, const std::vector<bool>&) -> Tensors {
        return {backend::batch_stats_backward(x, mean_out, g[0], g[1], detail::take_addend(0))};
      },
      [x, mean_out](const Tensors& t) -> Tensors {
        if (!t[0].defined()) return {Tensor(), Tensor()};
        BatchStats d = batch_stats_tangent(x, mean_out, t[0]);
        return {d.mean, d.var};
      });
  return {outs[0], outs[1]};
}

BatchStats batch_stats_tangent(const Tensor& x, const Tensor& mean, const Tensor& x_dot) {
  auto [md, vd] = backend::batch_stats_tangent(x, mean, x_dot);
  Tensors outs{md, vd};
  Tensor mean_dot = md;
  detail::finish_op(
      "batch_stats_tangent", {x, mean, x_dot}, outs,
      [x, mean, x_dot, mean_dot](const Tensors& g, const std::vector<bool>&) -> Tensors {
        auto r = backend::batch_stats_tangent_backward(x, mean, x_dot, mean_dot, g[0], g[1], detail::take_addend(0),
                                                       detail::take_addend(2));
        return {r.x, r.mean, r.xdot};
      },
      [](const Tensors&) -> Tensors { no_second_order("batch_stats_tangent"); });
  return {outs[0], outs[1]};
}

Tensor batch_norm(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                  double eps) {
  LLR_CHECK(eps > 0, "batch_norm: eps must be positive, got ", eps);
  return record1(
      "batch_norm", {x, mean, var, scale, shift}, backend::bn_act_forward(x, mean, var, scale, shift, eps, Act::identity),
      [x, mean, var, scale, shift, eps](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        auto r = backend::bn_act_backward(x, mean, var, scale, shift, g[0], eps, Act::identity, needs[1] || needs[2],
                                          needs[3] || needs[4], needs[0] ? detail::take_addend(0) : Tensor());
        return {r.x, r.mean, r.var, r.scale, r.shift};
      },
      [x, mean, var, scale, eps](const Tensors& t) -> Tensors {
        Tensor out;
        if (t[0].defined() || t[1].defined() || t[2].defined())
          out = bn_tangent(x, mean, var, scale, t[0].defined() ? t[0] : zeros_like(x), t[1], t[2], eps);
        if (t[3].defined() || t[4].defined()) {
          // batch_norm is affine in (scale, shift): its tangent along them is batch_norm with (scale_dot, shift_dot).
          Tensor part = batch_norm(x, mean, var, t[3].defined() ? t[3] : zeros_like(scale),
                                   t[4].defined() ? t[4] : zeros_like(scale), eps);
          out = add_defined(out, part);
        }
        return {out};
      });
}

Tensor bn_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& x_dot,
                  const Tensor& mean_dot, const Tensor& var_dot, double eps) {
  return record1(
      "bn_tangent", {x, mean, var, scale, x_dot, mean_dot, var_dot},
      backend::bn_tangent(x, mean, var, scale, x_dot, mean_dot, var_dot, eps),
      [x, mean, var, scale, x_dot, mean_dot, var_dot, eps](const Tensors& g, const std::vector<bool>&) -> Tensors {
        auto r = backend::bn_tangent_backward(x, mean, var, scale, x_dot, mean_dot, var_dot, g[0], eps,
                                              detail::take_addend(4));
        return {r.x, r.mean, r.var, r.scale, r.xdot, r.mean_dot, r.var_dot};
      },
      [](const Tensors&) -> Tensors { no_second_order("bn_tangent"); });
}

Tensor batch_norm_act(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale, const Tensor& shift,
                      double eps, Act act) {
  LLR_CHECK(eps > 0, "batch_norm_act: eps must be positive, got ", eps);
  return record1(
      "batch_norm_act", {x, mean, var, scale, shift}, backend::bn_act_forward(x, mean, var, scale, shift, eps, act),
      [x, mean, var, scale, shift, eps, act](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        auto r = backend::bn_act_backward(x, mean, var, scale, shift, g[0], eps, act, needs[1] || needs[2],
                                          needs[3] || needs[4], needs[0] ? detail::take_addend(0) : Tensor());
        return {r.x, r.mean, r.var, r.scale, r.shift};
      },
      [x, mean, var, scale, shift, eps, act](const Tensors& t) -> Tensors {
        return {batch_norm_act_tangent(x, mean, var, scale, shift, t[0], t[1], t[2], t[3], t[4], eps, act)};
      });
}

BatchNormActTrain batch_norm_act_train(const Tensor& x, const Tensor& scale, const Tensor& shift, double eps, Act act) {
  LLR_CHECK(eps > 0, "batch_norm_act: eps must be positive, got ", eps);
  auto [m, v] = backend::batch_stats(x);
  Tensors outs{backend::bn_act_forward(x, m, v, scale, shift, eps, act), m, v};
  Tensor mean = m, var = v;
  detail::finish_op(
      "batch_norm_act_train", {x, scale, shift}, outs,
      [x, mean, var, scale, shift, eps, act](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        auto r = backend::bn_act_train_backward(x, mean, var, scale, shift, g[0], g[1], g[2], eps, act,
                                                needs[1] || needs[2], needs[0] ? detail::take_addend(0) : Tensor());
        return {r.x, r.scale, r.shift};
      },
      [x, mean, var, scale, shift, eps, act](const Tensors& t) -> Tensors {
        // The composition's tangents: batch_stats' along x_dot, then batch_norm_act's along all of them.
        BatchStats d;
        if (t[0].defined()) d = batch_stats_tangent(x, mean, t[0]);
        Tensor y_dot = batch_norm_act_tangent(x, mean, var, scale, shift, t[0], d.mean, d.var, t[1], t[2], eps, act);
        return {y_dot, d.mean, d.var};
      });
  return {outs[0], {outs[1], outs[2]}};
}

Tensor batch_norm_act_tangent(const Tensor& x, const Tensor& mean, const Tensor& var, const Tensor& scale,
                              const Tensor& shift, const Tensor& x_dot, const Tensor& mean_dot, const Tensor& var_dot,
                              const Tensor& scale_dot, const Tensor& shift_dot, double eps, Act act) {
  // y = phi'(a) t with t = bn_tangent(x_dot, mean_dot, var_dot) + scale_dot xhat + shift_dot: one fused pass.
  bool affine = scale_dot.defined() || shift_dot.defined();
  Tensor zero_c = affine ? zeros_like(scale) : Tensor();
  Tensor sd = affine ? (scale_dot.defined() ? scale_dot : zero_c) : Tensor();
  Tensor hd = affine ? (shift_dot.defined() ? shift_dot : zero_c) : Tensor();
  Tensor xd = x_dot.defined() ? x_dot : zeros_like(x);
  return record1(
      "batch_norm_act_tangent", {x, mean, var, scale, shift, x_dot, mean_dot, var_dot, scale_dot, shift_dot},
      backend::bn_act_tangent(x, mean, var, scale, shift, xd, mean_dot, var_dot, sd, hd, eps, act),
      [=](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        Tensor a = backend::bn_act_forward(x, mean, var, scale, shift, eps, Act::identity);
        Tensor gt = backend::activation_derivative_mul(act, 1, a, g[0]);  // cotangent of t
        auto rt = backend::bn_tangent_backward(x, mean, var, scale, xd, mean_dot, var_dot, gt, eps,
                                               detail::take_addend(5));
        Tensors out = {rt.x, rt.mean, rt.var, rt.scale, Tensor(), rt.xdot, rt.mean_dot, rt.var_dot, Tensor(), Tensor()};
        if (math::has_second_derivative(act)) {
          // phi'(a) depends on a: the cotangent of a is phi''(a) t g, which reaches x, the statistics and the
          // parameters through the normalisation. ReLU, abs and identity have phi'' = 0: nothing, and three passes
          // over the tensor (t, that cotangent, and its reduction) are skipped.
          Tensor t =
              backend::bn_act_tangent(x, mean, var, scale, shift, xd, mean_dot, var_dot, sd, hd, eps, Act::identity);
          Tensor ga = backend::activation_derivative_mul(act, 2, a, t, g[0]);
          auto ra = backend::bn_act_backward(x, mean, var, scale, shift, ga, eps, Act::identity, true, true, rt.x);
          out[0] = ra.x;
          out[1] = backend::add(ra.mean, rt.mean);
          out[2] = backend::add(ra.var, rt.var);
          out[3] = backend::add(ra.scale, rt.scale);
          out[4] = ra.shift;
        } else if (needs[4]) {
          out[4] = zeros_like(shift);
        }
        if (affine) {
          // t is affine in (scale_dot, shift_dot) like a batch norm with them as its scale and shift.
          auto rs = backend::bn_act_backward(x, mean, var, sd, hd, gt, eps, Act::identity, true, true, out[0]);
          out[0] = rs.x;
          out[1] = backend::add(out[1], rs.mean);
          out[2] = backend::add(out[2], rs.var);
          out[8] = rs.scale;
          out[9] = rs.shift;
        }
        return out;
      },
      [](const Tensors&) -> Tensors { no_second_order("batch_norm_act_tangent"); });
}

void update_running_stats(Tensor& running_mean, Tensor& running_var, const BatchStats& batch, double momentum,
                          int64_t count_per_channel) {
  backend::bn_update_running(running_mean, running_var, batch.mean, batch.var, momentum, count_per_channel);
}

Tensor activation(Act act, const Tensor& x) {
  return record1(
      "activation", {x}, backend::activation_forward(act, x),
      [act, x](const Tensors& g, const std::vector<bool>&) -> Tensors {
        return {backend::activation_derivative_mul(act, 1, x, g[0])};
      },
      [act, x](const Tensors& t) -> Tensors { return {activation_tangent(act, x, t[0])}; });
}

Tensor activation_tangent(Act act, const Tensor& a, const Tensor& a_dot) {
  return record1(
      "activation_tangent", {a, a_dot}, backend::activation_derivative_mul(act, 1, a, a_dot),
      [act, a, a_dot](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? backend::activation_derivative_mul(act, 2, a, a_dot, g[0]) : Tensor(),
                needs[1] ? backend::activation_derivative_mul(act, 1, a, g[0]) : Tensor()};
      },
      [](const Tensors&) -> Tensors { no_second_order("activation_tangent"); });
}

Tensor add(const Tensor& a, const Tensor& b) {
  return record1(
      "add", {a, b}, backend::add(a, b),
      [](const Tensors& g, const std::vector<bool>&) -> Tensors { return {g[0], g[0]}; },
      [](const Tensors& t) -> Tensors { return {add_defined(t[0], t[1])}; });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  return record1(
      "sub", {a, b}, backend::sub(a, b),
      [](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {g[0], needs[1] ? backend::scale(g[0], -1.0) : Tensor()};
      },
      [](const Tensors& t) -> Tensors {
        if (!t[1].defined()) return {t[0]};
        return {t[0].defined() ? sub(t[0], t[1]) : scale(t[1], -1.0)};
      });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return record1(
      "mul", {a, b}, backend::mul(a, b),
      [a, b](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? backend::mul(g[0], b) : Tensor(), needs[1] ? backend::mul(g[0], a) : Tensor()};
      },
      [a, b](const Tensors& t) -> Tensors {
        Tensor out;
        if (t[0].defined()) out = mul(t[0], b);
        if (t[1].defined()) out = add_defined(out, mul(a, t[1]));
        return {out};
      });
}

Tensor scale(const Tensor& x, double s) {
  return record1(
      "scale", {x}, backend::scale(x, s),
      [s](const Tensors& g, const std::vector<bool>&) -> Tensors { return {backend::scale(g[0], s)}; },
      [s](const Tensors& t) -> Tensors { return {scale(t[0], s)}; });
}

Tensor scale_per_example(const Tensor& x, const Tensor& c) {
  return record1(
      "scale_per_example", {x, c}, backend::scale_per_example(x, c),
      [x, c](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? backend::scale_per_example(g[0], c) : Tensor(),
                needs[1] ? backend::per_example_dot(g[0], x) : Tensor()};
      },
      [x, c](const Tensors& t) -> Tensors {
        Tensor out;
        if (t[0].defined()) out = scale_per_example(t[0], c);
        if (t[1].defined()) out = add_defined(out, scale_per_example(x, t[1]));
        return {out};
      });
}

Tensor per_example_dot(const Tensor& a, const Tensor& b) {
  return record1(
      "per_example_dot", {a, b}, backend::per_example_dot(a, b),
      [a, b](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? backend::scale_per_example(b, g[0]) : Tensor(),
                needs[1] ? backend::scale_per_example(a, g[0]) : Tensor()};
      },
      [a, b](const Tensors& t) -> Tensors {
        Tensor out;
        if (t[0].defined()) out = per_example_dot(t[0], b);
        if (t[1].defined()) out = add_defined(out, per_example_dot(a, t[1]));
        return {out};
      });
}

Tensor global_avg_pool(const Tensor& x) {
  return record1(
      "global_avg_pool", {x}, backend::global_avg_pool(x),
      [x](const Tensors& g, const std::vector<bool>&) -> Tensors {
        return {backend::global_avg_pool_backward(g[0], x.shape())};
      },
      [](const Tensors& t) -> Tensors { return {global_avg_pool(t[0])}; });
}

Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding) {
  return record1(
      "max_pool2d", {x}, backend::max_pool_forward(x, kernel, stride, padding),
      [x, kernel, stride, padding](const Tensors& g, const std::vector<bool>&) -> Tensors {
        return {backend::max_pool_backward(x, g[0], kernel, stride, padding)};
      },
      [x, kernel, stride, padding](const Tensors& t) -> Tensors {
        return {max_pool2d_tangent(x, t[0], kernel, stride, padding)};
      });
}

Tensor max_pool2d_tangent(const Tensor& x, const Tensor& x_dot, int kernel, int stride, int padding) {
  return record1(
      "max_pool2d_tangent", {x, x_dot}, backend::max_pool_gather(x, x_dot, kernel, stride, padding),
      [x, kernel, stride, padding](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? zeros_like(x) : Tensor(),
                needs[1] ? backend::max_pool_backward(x, g[0], kernel, stride, padding) : Tensor()};
      },
      [](const Tensors&) -> Tensors { no_second_order("max_pool2d_tangent"); });
}

Tensor sum(const Tensor& x) {
  return record1(
      "sum", {x}, backend::sum_all(x),
      [x](const Tensors& g, const std::vector<bool>&) -> Tensors { return {backend::broadcast_scalar(g[0], x)}; },
      [](const Tensors& t) -> Tensors { return {sum(t[0])}; });
}

Tensor mean(const Tensor& x) {
  LLR_CHECK(x.numel() > 0, "mean of an empty tensor ", x.describe());
  return scale(sum(x), 1.0 / double(x.numel()));
}

Tensor reshape(const Tensor& x, const Shape& shape, Layout layout) {
  return record1(
      "reshape", {x}, x.reshaped(shape, layout),
      [x](const Tensors& g, const std::vector<bool>&) -> Tensors { return {g[0].reshaped(x.shape(), x.layout())}; },
      [shape, layout](const Tensors& t) -> Tensors { return {reshape(t[0], shape, layout)}; });
}

namespace {
Tensor record_cast(const Tensor& x, Tensor converted) {
  DType from = x.dtype(), dtype = converted.dtype();
  return record1(
      "cast", {x}, std::move(converted),
      [from](const Tensors& g, const std::vector<bool>&) -> Tensors { return {g[0].to(from)}; },
      [dtype](const Tensors& t) -> Tensors { return {cast(t[0], dtype)}; });
}
}  // namespace

Tensor cast(const Tensor& x, DType dtype) {
  LLR_CHECK(is_floating(x.dtype()) && is_floating(dtype), "cast: only between floating dtypes, got ", x.describe(),
            " to ", dtype_name(dtype));
  ++op_counters().casts;
  return record_cast(x, x.to(dtype));
}

Tensor cast_reusing(const Tensor& x, const Tensor& converted) {
  LLR_CHECK(is_floating(x.dtype()) && is_floating(converted.dtype()) && converted.shape() == x.shape() &&
                converted.device() == x.device(),
            "cast_reusing: ", converted.describe(), " is not a conversion of ", x.describe());
  return record_cast(x, converted.detach());
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels) {
  return record1(
      "cross_entropy", {logits, labels}, backend::cross_entropy(logits, labels),
      [logits, labels](const Tensors& g, const std::vector<bool>&) -> Tensors {
        return {backend::cross_entropy_backward(logits, labels, g[0]), Tensor()};
      },
      [logits, labels](const Tensors& t) -> Tensors { return {cross_entropy_tangent(logits, labels, t[0])}; });
}

Tensor gather_logit(const Tensor& z, const Tensor& idx) {
  int64_t k = z.dim(1);
  return record1(
      "gather_logit", {z, idx}, backend::gather_columns(z, idx),
      [idx, k](const Tensors& g, const std::vector<bool>&) -> Tensors {
        return {backend::scatter_columns(g[0], idx, k), Tensor()};
      },
      [idx](const Tensors& t) -> Tensors { return {gather_logit(t[0], idx)}; });
}

Tensor div(const Tensor& a, const Tensor& b) {
  return record1(
      "div", {a, b}, backend::div(a, b),
      [a, b](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? backend::div(g[0], b) : Tensor(),
                needs[1] ? backend::scale(backend::div(backend::mul(g[0], a), backend::mul(b, b)), -1.0) : Tensor()};
      },
      [a, b](const Tensors& t) -> Tensors {
        Tensor out;
        if (t[0].defined()) out = div(t[0], b);
        if (t[1].defined()) out = add_defined(out, scale(div(mul(a, t[1]), mul(b, b)), -1.0));
        return {out};
      });
}

Tensor kl_div(const Tensor& zp, const Tensor& zq) {
  return record1(
      "kl_div", {zp, zq}, backend::kl_div(zp, zq),
      [zp, zq](const Tensors& g, const std::vector<bool>&) -> Tensors {
        auto [dp, dq] = backend::kl_div_backward(zp, zq, g[0]);
        return {dp, dq};
      },
      [](const Tensors&) -> Tensors { LLR_FAIL("kl_div: forward-mode tangents are not implemented"); });
}

Tensor cross_entropy_tangent(const Tensor& logits, const Tensor& labels, const Tensor& logits_dot) {
  return record1(
      "cross_entropy_tangent", {logits, labels, logits_dot},
      backend::cross_entropy_tangent(logits, labels, logits_dot),
      [logits, labels, logits_dot](const Tensors& g, const std::vector<bool>&) -> Tensors {
        auto [dz, dzd] = backend::cross_entropy_tangent_backward(logits, labels, logits_dot, g[0]);
        return {dz, Tensor(), dzd};
      },
      [](const Tensors&) -> Tensors { no_second_order("cross_entropy_tangent"); });
}

Tensor margin_loss(const Tensor& logits, const Tensor& labels) {
  return record1(
      "margin_loss", {logits, labels}, backend::margin_loss(logits, labels),
      [logits, labels](const Tensors& g, const std::vector<bool>&) -> Tensors {
        return {backend::margin_loss_backward(logits, labels, g[0]), Tensor()};
      },
      [logits, labels](const Tensors& t) -> Tensors { return {margin_loss_tangent(logits, labels, t[0])}; });
}

// Piecewise linear in the logits: its derivative with respect to them is zero away from ties.
Tensor margin_loss_tangent(const Tensor& logits, const Tensor& labels, const Tensor& logits_dot) {
  return record1(
      "margin_loss_tangent", {logits, labels, logits_dot}, backend::margin_loss_tangent(logits, labels, logits_dot),
      [logits, labels](const Tensors& g, const std::vector<bool>& needs) -> Tensors {
        return {needs[0] ? zeros_like(logits) : Tensor(), Tensor(),
                needs[2] ? backend::margin_loss_backward(logits, labels, g[0]) : Tensor()};
      },
      [](const Tensors&) -> Tensors { no_second_order("margin_loss_tangent"); });
}

}  // namespace llr
