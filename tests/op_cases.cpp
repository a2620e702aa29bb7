#include "tests/op_cases.h"

#include "tests/test_util.h"

namespace llr::test {

namespace {

using Tensors = std::vector<Tensor>;
constexpr DType f64 = DType::f64;

Tensor normal(Generator& g, const Shape& s, Layout l = Layout::plain, double sd = 1.0) {
  return g.normal(s, 0.0, sd, f64, l);
}
Tensor positive(Generator& g, const Shape& s) { return g.uniform(s, 0.5, 1.5, f64); }

OpCase conv_case(const std::string& name, Shape x, Shape w, Conv2dOptions o, bool bias) {
  int64_t k = w[0];
  return {name,
          [=](Generator& g) {
            Tensors in{normal(g, x, Layout::nhwc), normal(g, w, Layout::krsc, 0.5)};
            if (bias) in.push_back(normal(g, {k}));
            return in;
          },
          bias ? std::vector<bool>{true, true, true} : std::vector<bool>{true, true},
          [=](const Tensors& in) { return conv2d(in[0], in[1], bias ? in[2] : Tensor(), o); }};
}

OpCase activation_case(Act act, const std::string& name) {
  return {name,
          [act](Generator& g) {
            return Tensors{act == Act::softplus ? normal(g, {2, 3, 4}, Layout::plain, 2.0) : away_from_zero(g, {2, 3, 4})};
          },
          {true},
          [act](const Tensors& in) { return activation(act, in[0]); }};
}

OpCase activation_tangent_case(Act act, const std::string& name) {
  return {name,
          [act](Generator& g) {
            Tensor a = act == Act::softplus ? normal(g, {2, 3, 4}, Layout::plain, 2.0) : away_from_zero(g, {2, 3, 4});
            return Tensors{a, normal(g, {2, 3, 4})};
          },
          {true, true},
          [act](const Tensors& in) { return activation_tangent(act, in[0], in[1]); },
          true};
}

std::vector<OpCase> build() {
  std::vector<OpCase> cases;
  cases.push_back(conv_case("conv2d 3x3 stride 1 pad 1 with bias", {2, 5, 5, 3}, {4, 3, 3, 3}, {1, 1}, true));
  cases.push_back(conv_case("conv2d 3x3 stride 2 pad 1", {2, 6, 6, 3}, {4, 3, 3, 3}, {2, 1}, false));
  cases.push_back(conv_case("conv2d 1x1 stride 1", {2, 4, 4, 3}, {5, 1, 1, 3}, {1, 0}, false));
  cases.push_back(conv_case("conv2d 1x1 stride 2 (projection)", {3, 5, 5, 4}, {6, 1, 1, 4}, {2, 0}, true));
  cases.push_back(conv_case("conv2d 3x3 pad 0 odd sizes batch 1", {1, 7, 5, 2}, {3, 3, 3, 2}, {1, 0}, false));
  cases.push_back({"linear with bias",
                   [](Generator& g) { return Tensors{normal(g, {3, 5}), normal(g, {4, 5}), normal(g, {4})}; },
                   {true, true, true},
                   [](const Tensors& in) { return linear(in[0], in[1], in[2]); }});
  cases.push_back({"bias_add",
                   [](Generator& g) { return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), normal(g, {4})}; },
                   {true, true},
                   [](const Tensors& in) { return bias_add(in[0], in[1]); }});
  cases.push_back({"batch_stats mean",
                   [](Generator& g) { return Tensors{normal(g, {3, 4, 4, 5}, Layout::nhwc)}; },
                   {true},
                   [](const Tensors& in) { return batch_stats(in[0]).mean; }});
  cases.push_back({"batch_stats var",
                   [](Generator& g) { return Tensors{normal(g, {3, 4, 4, 5}, Layout::nhwc)}; },
                   {true},
                   [](const Tensors& in) { return batch_stats(in[0]).var; }});
  cases.push_back({"batch_norm with given statistics",
                   [](Generator& g) {
                     return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), normal(g, {4}), positive(g, {4}),
                                    normal(g, {4}), normal(g, {4})};
                   },
                   {true, true, true, true, true},
                   [](const Tensors& in) { return batch_norm(in[0], in[1], in[2], in[3], in[4], 1e-5); }});
  cases.push_back({"batch_norm training mode (own statistics)",
                   [](Generator& g) {
                     return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), normal(g, {4}), normal(g, {4})};
                   },
                   {true, true, true},
                   [](const Tensors& in) {
                     BatchStats s = batch_stats(in[0]);
                     return batch_norm(in[0], s.mean, s.var, in[1], in[2], 1e-5);
                   }});
  for (Act act : {Act::softplus, Act::relu})
    cases.push_back({act == Act::relu ? "batch_norm_act relu (training mode)" : "batch_norm_act softplus (training mode)",
                     [](Generator& g) {
                       return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), positive(g, {4}), normal(g, {4}, Layout::plain, 0.3)};
                     },
                     {true, true, true},
                     [act](const Tensors& in) {
                       BatchStats s = batch_stats(in[0]);
                       return batch_norm_act(in[0], s.mean, s.var, in[1], in[2], 1e-5, act);
                     }});
  // The training-mode op (statistics and normalisation in one node), with its statistics also used downstream so that
  // its vjp receives cotangents for all three outputs.
  for (Act act : {Act::softplus, Act::relu})
    cases.push_back({act == Act::relu ? "batch_norm_act_train relu (statistics used downstream)"
                                      : "batch_norm_act_train softplus (statistics used downstream)",
                     [](Generator& g) {
                       return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), positive(g, {4}), normal(g, {4}, Layout::plain, 0.3)};
                     },
                     {true, true, true},
                     [act](const Tensors& in) {
                       BatchNormActTrain o = batch_norm_act_train(in[0], in[1], in[2], 1e-5, act);
                       return bias_add(bias_add(o.y, o.stats.mean), o.stats.var);
                     }});
  // x feeds both a batch norm and a skip connection: the skip's cotangent reaches x first, so the batch norm's vjp
  // and then the statistics' vjp each add the cotangent accumulated so far into their own (detail::take_addend).
  cases.push_back({"batch_norm_act softplus plus a skip (vjp addends)",
                   [](Generator& g) {
                     return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), positive(g, {4}), normal(g, {4}, Layout::plain, 0.3)};
                   },
                   {true, true, true},
                   [](const Tensors& in) {
                     BatchStats s = batch_stats(in[0]);
                     return add(in[0], batch_norm_act(in[0], s.mean, s.var, in[1], in[2], 1e-5, Act::softplus));
                   }});
  cases.push_back(activation_case(Act::relu, "relu"));
  cases.push_back(activation_case(Act::softplus, "softplus"));
  cases.push_back(activation_case(Act::abs, "abs"));
  cases.push_back({"add", [](Generator& g) { return Tensors{normal(g, {2, 3, 4}), normal(g, {2, 3, 4})}; },
                   {true, true}, [](const Tensors& in) { return add(in[0], in[1]); }});
  cases.push_back({"sub", [](Generator& g) { return Tensors{normal(g, {2, 3, 4}), normal(g, {2, 3, 4})}; },
                   {true, true}, [](const Tensors& in) { return sub(in[0], in[1]); }});
  cases.push_back({"mul", [](Generator& g) { return Tensors{normal(g, {2, 3, 4}), normal(g, {2, 3, 4})}; },
                   {true, true}, [](const Tensors& in) { return mul(in[0], in[1]); }});
  cases.push_back({"scale", [](Generator& g) { return Tensors{normal(g, {2, 3, 4})}; }, {true},
                   [](const Tensors& in) { return scale(in[0], -1.7); }});
  cases.push_back({"scale_per_example",
                   [](Generator& g) { return Tensors{normal(g, {3, 2, 2, 2}, Layout::nhwc), normal(g, {3})}; },
                   {true, true}, [](const Tensors& in) { return scale_per_example(in[0], in[1]); }});
  cases.push_back({"per_example_dot",
                   [](Generator& g) {
                     return Tensors{normal(g, {3, 2, 2, 2}, Layout::nhwc), normal(g, {3, 2, 2, 2}, Layout::nhwc)};
                   },
                   {true, true}, [](const Tensors& in) { return per_example_dot(in[0], in[1]); }});
  cases.push_back({"global_avg_pool", [](Generator& g) { return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc)}; },
                   {true}, [](const Tensors& in) { return global_avg_pool(in[0]); }});
  cases.push_back({"max_pool2d 3x3 stride 2 pad 1",
                   [](Generator& g) { return Tensors{normal(g, {2, 7, 6, 3}, Layout::nhwc)}; }, {true},
                   [](const Tensors& in) { return max_pool2d(in[0], 3, 2, 1); }});
  cases.push_back({"sum", [](Generator& g) { return Tensors{normal(g, {2, 3, 4})}; }, {true},
                   [](const Tensors& in) { return sum(in[0]); }});
  cases.push_back({"mean", [](Generator& g) { return Tensors{normal(g, {2, 3, 4})}; }, {true},
                   [](const Tensors& in) { return mean(in[0]); }});
  cases.push_back({"reshape", [](Generator& g) { return Tensors{normal(g, {2, 3, 4}), normal(g, {6, 4})}; },
                   {true, true}, [](const Tensors& in) { return mul(reshape(in[0], {6, 4}), in[1]); }});
  cases.push_back({"cross_entropy",
                   [](Generator& g) { return Tensors{normal(g, {4, 5}, Layout::plain, 2.0), g.randint({4}, 0, 5)}; },
                   {true, false}, [](const Tensors& in) { return cross_entropy(in[0], in[1]); }});
  cases.push_back({"margin_loss",
                   [](Generator& g) { return Tensors{normal(g, {4, 5}, Layout::plain, 2.0), g.randint({4}, 0, 5)}; },
                   {true, false}, [](const Tensors& in) { return margin_loss(in[0], in[1]); }});

  cases.push_back({"gather_logit",
                   [](Generator& g) { return Tensors{normal(g, {4, 5}), g.randint({4}, 0, 5)}; }, {true, false},
                   [](const Tensors& in) { return gather_logit(in[0], in[1]); }});
  cases.push_back({"div",
                   [](Generator& g) { return Tensors{normal(g, {2, 3, 4}), positive(g, {2, 3, 4})}; }, {true, true},
                   [](const Tensors& in) { return div(in[0], in[1]); }});
  cases.push_back({"kl_div (vjp only)",
                   [](Generator& g) {
                     return Tensors{normal(g, {4, 5}, Layout::plain, 2.0), normal(g, {4, 5}, Layout::plain, 2.0)};
                   },
                   {true, true}, [](const Tensors& in) { return kl_div(in[0], in[1]); }, true});

  // Tangent ops: vjp only.
  cases.push_back(activation_tangent_case(Act::relu, "activation_tangent relu"));
  cases.push_back(activation_tangent_case(Act::softplus, "activation_tangent softplus"));
  cases.push_back(activation_tangent_case(Act::abs, "activation_tangent abs"));
  for (int which = 0; which < 2; ++which)
    cases.push_back({which == 0 ? "batch_stats_tangent mean_dot" : "batch_stats_tangent var_dot",
                     [](Generator& g) {
                       return Tensors{normal(g, {3, 3, 3, 4}, Layout::nhwc), normal(g, {4}),
                                      normal(g, {3, 3, 3, 4}, Layout::nhwc)};
                     },
                     {true, true, true},
                     [which](const Tensors& in) {
                       BatchStats d = batch_stats_tangent(in[0], in[1], in[2]);
                       return which == 0 ? d.mean : d.var;
                     },
                     true});
  cases.push_back({"bn_tangent",
                   [](Generator& g) {
                     return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), normal(g, {4}), positive(g, {4}),
                                    normal(g, {4}), normal(g, {2, 3, 3, 4}, Layout::nhwc), normal(g, {4}),
                                    normal(g, {4})};
                   },
                   std::vector<bool>(7, true),
                   [](const Tensors& in) {
                     return bn_tangent(in[0], in[1], in[2], in[3], in[4], in[5], in[6], 1e-5);
                   },
                   true});
  cases.push_back({"bn_tangent with constant statistics",
                   [](Generator& g) {
                     return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), normal(g, {4}), positive(g, {4}),
                                    normal(g, {4}), normal(g, {2, 3, 3, 4}, Layout::nhwc)};
                   },
                   std::vector<bool>(5, true),
                   [](const Tensors& in) { return bn_tangent(in[0], in[1], in[2], in[3], in[4], {}, {}, 1e-5); },
                   true});
  cases.push_back({"max_pool2d_tangent",
                   [](Generator& g) {
                     return Tensors{normal(g, {2, 7, 6, 3}, Layout::nhwc), normal(g, {2, 7, 6, 3}, Layout::nhwc)};
                   },
                   {true, true}, [](const Tensors& in) { return max_pool2d_tangent(in[0], in[1], 3, 2, 1); }, true});
  cases.push_back({"batch_norm_act_tangent softplus",
                   [](Generator& g) {
                     return Tensors{normal(g, {2, 3, 3, 4}, Layout::nhwc), normal(g, {4}), positive(g, {4}),
                                    positive(g, {4}), normal(g, {4}), normal(g, {2, 3, 3, 4}, Layout::nhwc),
                                    normal(g, {4}), normal(g, {4}), normal(g, {4}), normal(g, {4})};
                   },
                   std::vector<bool>(10, true),
                   [](const Tensors& in) {
                     return batch_norm_act_tangent(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9],
                                                   1e-5, Act::softplus);
                   },
                   true});
  cases.push_back({"cross_entropy_tangent",
                   [](Generator& g) {
                     return Tensors{normal(g, {4, 5}, Layout::plain, 2.0), g.randint({4}, 0, 5), normal(g, {4, 5})};
                   },
                   {true, false, true},
                   [](const Tensors& in) { return cross_entropy_tangent(in[0], in[1], in[2]); },
                   true});
  cases.push_back({"margin_loss_tangent",
                   [](Generator& g) {
                     return Tensors{normal(g, {4, 5}, Layout::plain, 2.0), g.randint({4}, 0, 5), normal(g, {4, 5})};
                   },
                   {true, false, true},
                   [](const Tensors& in) { return margin_loss_tangent(in[0], in[1], in[2]); },
                   true});
  return cases;
}

}  // namespace

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = build();
  return cases;
}

}  // namespace llr::test
