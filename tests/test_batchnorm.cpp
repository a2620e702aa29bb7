// Batch-norm rules beyond the gradient checks: running averages, evaluation with running statistics, and a pass that
// reuses another pass's statistics.
#include "engine/gradcheck.h"
#include "nets/model.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

TEST_CASE("running averages use momentum and the unbiased batch variance") {
  Generator gen(3);
  Tensor x = gen.normal({4, 3, 3, 2}, 1.0, 2.0, DType::f64, Layout::nhwc);
  BatchStats s = batch_stats(x);
  // Direct two-pass reference for channel 1.
  double m = 0, v = 0;
  const int64_t count = 4 * 3 * 3;
  for (int64_t r = 0; r < count; ++r) m += x.at(r * 2 + 1) / count;
  for (int64_t r = 0; r < count; ++r) v += (x.at(r * 2 + 1) - m) * (x.at(r * 2 + 1) - m) / count;
  CHECK(s.mean.at(1) == doctest::Approx(m).epsilon(1e-14));
  CHECK(s.var.at(1) == doctest::Approx(v).epsilon(1e-14));

  Tensor rm = Tensor::full({2}, 0.5, DType::f64);
  Tensor rv = Tensor::full({2}, 2.0, DType::f64);
  update_running_stats(rm, rv, s, 0.1, count);
  CHECK(rm.at(1) == doctest::Approx(0.9 * 0.5 + 0.1 * m).epsilon(1e-14));
  CHECK(rv.at(1) == doctest::Approx(0.9 * 2.0 + 0.1 * v * count / (count - 1)).epsilon(1e-14));
  CHECK_THROWS_WITH_AS(update_running_stats(rm, rv, s, 1.5, count), doctest::Contains("momentum"), Error);
}

TEST_CASE("training-mode batch norm equals normalisation with the same statistics given as constants") {
  Generator gen(4);
  Tensor x = gen.normal({3, 4, 4, 5}, 0.3, 1.7, DType::f64, Layout::nhwc);
  Tensor g = gen.uniform({5}, 0.5, 1.5, DType::f64), b = gen.normal({5}, 0, 1, DType::f64);
  BatchStats s = batch_stats(x);
  Tensor train = batch_norm(x, s.mean, s.var, g, b, 1e-5);
  Tensor eval = batch_norm(x, s.mean.clone(), s.var.clone(), g, b, 1e-5);
  CHECK(compare(train, eval, 0, 1e-15).max_violation <= 1.0);
  // Normalised output has per-channel mean shift and std scale (up to eps).
  BatchStats out = batch_stats(train);
  for (int64_t c = 0; c < 5; ++c) {
    CHECK(out.mean.at(c) == doctest::Approx(b.at(c)).epsilon(1e-12));
    CHECK(std::sqrt(out.var.at(c)) == doctest::Approx(g.at(c)).epsilon(1e-4));
  }
}

TEST_CASE("a pass normalising with another pass's statistics sends gradients into that pass") {
  // f(x) = sum softplus(BN(xp; stats of x)) with xp a fixed batch: its x-gradient flows only through the statistics.
  Generator gen(5);
  Tensor x = gen.normal({2, 3, 3, 4}, 0, 1, DType::f64, Layout::nhwc);
  Tensor d = gen.normal({2, 3, 3, 4}, 0, 0.1, DType::f64, Layout::nhwc);
  Tensor g = gen.uniform({4}, 0.5, 1.5, DType::f64), b = gen.normal({4}, 0, 1, DType::f64);
  Tensor xp = backend::add(x, d);
  gradcheck::Function shared = [&](const std::vector<Tensor>& in) {
    BatchStats s = batch_stats(in[0]);
    return sum(softplus(batch_norm(xp, s.mean, s.var, g, b, 1e-5)));
  };
  gradcheck::Report r = gradcheck::check_vjp(shared, {x}, {true});
  INFO(r.worst);
  CHECK(r.max_rel_error < 1e-6);
  Tensor xg = x.clone().requires_grad_();
  Tensor gx = grad({shared({xg})}, {Tensor::scalar(1.0, DType::f64)}, {xg})[0];
  CHECK(max_abs(gx) > 1e-3);
}

TEST_CASE("the gradient checker skips elements whose finite difference straddles a kink") {
  Tensor x = Tensor::from_vector({0.0, 0.5, -0.7, 2e-7}, {4}, DType::f64);
  gradcheck::Function f = [](const std::vector<Tensor>& in) { return relu(in[0]); };
  gradcheck::Report r = gradcheck::check_vjp(f, {x}, {true});
  CHECK(r.skipped_kinks == 2);  // 0 and 2e-7 lie within one step of the kink
  CHECK(r.checked == 2);
  CHECK(r.max_rel_error < 1e-9);
  Tape::current().clear();
}

TEST_CASE("the fused batch norm + activation kernels equal the unfused ones and an input gradient skips the reductions") {
  Generator gen(31);
  Shape shape{3, 4, 5, 6};
  Tensor x = gen.normal(shape, 0.3, 1.5, DType::f64, Layout::nhwc);
  Tensor xdot = gen.normal(shape, 0, 1, DType::f64, Layout::nhwc), gy = gen.normal(shape, 0, 1, DType::f64, Layout::nhwc);
  Tensor mean = gen.normal({6}, 0.2, 0.5, DType::f64), var = gen.uniform({6}, 0.5, 2.0, DType::f64);
  Tensor scale = gen.uniform({6}, 0.5, 1.5, DType::f64), shift = gen.normal({6}, 0, 0.3, DType::f64);
  Tensor md = gen.normal({6}, 0, 1, DType::f64), vd = gen.normal({6}, 0, 1, DType::f64);
  Tensor sd = gen.normal({6}, 0, 1, DType::f64), hd = gen.normal({6}, 0, 1, DType::f64);
  const double eps = 1e-5;
  for (Act act : {Act::relu, Act::softplus}) {
    INFO("activation ", std::string(nets::act_name(act)));
    Tensor a = backend::bn_act_forward(x, mean, var, scale, shift, eps, Act::identity);
    CHECK(compare(backend::bn_act_forward(x, mean, var, scale, shift, eps, act), backend::activation_forward(act, a),
                  1e-15, 1e-14)
              .max_violation <= 1);
    // Tangent: phi'(a) (bn_tangent + the affine part), written out with the unfused functions.
    Tensor t = backend::add(backend::bn_tangent(x, mean, var, scale, xdot, md, vd, eps),
                            backend::bn_act_forward(x, mean, var, sd, hd, eps, Act::identity));
    CHECK(compare(backend::bn_act_tangent(x, mean, var, scale, shift, xdot, md, vd, sd, hd, eps, act),
                  backend::activation_derivative_mul(act, 1, a, t), 1e-15, 1e-13)
              .max_violation <= 1);
    // Backward: the fused pass against phi'(a) gy through the plain normalisation's backward.
    BnNormalizeGrads full = backend::bn_act_backward(x, mean, var, scale, shift, gy, eps, act, true, true, Tensor());
    BnNormalizeGrads plain = backend::bn_act_backward(x, mean, var, scale, shift,
                                                      backend::activation_derivative_mul(act, 1, a, gy), eps,
                                                      Act::identity, true, true, Tensor());
    for (auto [got, want] : {std::pair{full.x, plain.x}, std::pair{full.mean, plain.mean},
                             std::pair{full.var, plain.var}, std::pair{full.scale, plain.scale},
                             std::pair{full.shift, plain.shift}})
      CHECK(compare(got, want, 1e-14, 1e-12).max_violation <= 1);
    uint64_t before = op_counters().bn_channel_reductions;
    BnNormalizeGrads input_only =
        backend::bn_act_backward(x, mean, var, scale, shift, gy, eps, act, false, false, Tensor());
    CHECK(op_counters().bn_channel_reductions == before);
    CHECK_FALSE(input_only.mean.defined());
    CHECK_FALSE(input_only.scale.defined());
    CHECK(input_only.x.to_vector() == full.x.to_vector());
    // An addend is summed into dx in the same pass (the autograd's accumulated cotangent of x), and only into dx.
    Tensor addend = gen.normal(x.shape(), 0, 1, DType::f64, Layout::nhwc);
    BnNormalizeGrads with = backend::bn_act_backward(x, mean, var, scale, shift, gy, eps, act, true, true, addend);
    CHECK(compare(with.x, backend::add(full.x, addend), 1e-15, 1e-15).max_violation <= 1);
    CHECK(with.mean.to_vector() == full.mean.to_vector());
    CHECK(with.scale.to_vector() == full.scale.to_vector());
    Tensor stats_dx = backend::batch_stats_backward(x, mean, full.mean, full.var, Tensor());
    CHECK(compare(backend::batch_stats_backward(x, mean, full.mean, full.var, addend), backend::add(stats_dx, addend),
                  1e-15, 1e-15)
              .max_violation <= 1);
    // The training-mode vjp (one reduction, one pass) against the two-pass composition, with cotangents the
    // statistics receive from elsewhere and an addend.
    Tensor gm_in = gen.normal(scale.shape(), 0, 1, DType::f64), gv_in = gen.normal(scale.shape(), 0, 1, DType::f64);
    BnNormalizeGrads train =
        backend::bn_act_train_backward(x, mean, var, scale, shift, gy, gm_in, gv_in, eps, act, true, addend);
    Tensor composed = backend::batch_stats_backward(x, mean, backend::add(full.mean, gm_in),
                                                    backend::add(full.var, gv_in), backend::add(full.x, addend));
    CHECK(compare(train.x, composed, 1e-14, 1e-12).max_violation <= 1);
    CHECK(compare(train.scale, full.scale, 1e-14, 1e-12).max_violation <= 1);
    CHECK(compare(train.shift, full.shift, 1e-14, 1e-12).max_violation <= 1);
    CHECK_FALSE(train.mean.defined());
    BnNormalizeGrads train_input =
        backend::bn_act_train_backward(x, mean, var, scale, shift, gy, gm_in, gv_in, eps, act, false, Tensor());
    CHECK_FALSE(train_input.scale.defined());
    CHECK(compare(backend::add(train_input.x, addend), train.x, 1e-14, 1e-12).max_violation <= 1);
  }

  // Through autograd: an input gradient with evaluation-mode statistics (an attack step) reduces nothing.
  Tape::current().clear();
  Tensor xi = x.detach().requires_grad_();
  Tensor sc = scale.detach().requires_grad_(), sh = shift.detach().requires_grad_();
  Tensor y = sum(batch_norm_act(xi, mean, var, sc, sh, eps, Act::softplus));
  uint64_t before = op_counters().bn_channel_reductions;
  grad({y}, {Tensor::scalar(1.0, DType::f64)}, {xi});
  CHECK(op_counters().bn_channel_reductions == before);
  Tape::current().clear();
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
