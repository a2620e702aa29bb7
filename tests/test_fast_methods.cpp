// The single-step methods and the regularisers of fast adversarial training: FGSM-RS's and N-FGSM's perturbations
// against their papers' formulas written out here, GradAlign's cosine kernel against finite differences, ELLE's
// triplets and coefficients, and a short training run with each method on the synthetic data. Their whole-objective
// gradient checks and logged losses are in test_objectives.cpp with the other methods'.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "tests/method_util.h"
#include "tests/test_util.h"
#include "train/robust/robust_kernels.h"
#include "train/trainer.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

double sign_of(double v) { return v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0); }

TEST_CASE("FGSM-RS and N-FGSM take the one sign step their papers define") {
  Generator gen(31);
  auto model = nets::make_model("wrn-10-1", Act::softplus, 10, 31, Device::cpu, DType::f64);
  Tensor x = gen.uniform({4, 8, 8, 3}, 0, 1, DType::f64, Layout::nhwc);
  for (int64_t i = 0; i < 40; ++i) x.set(7 * i, i % 2 ? 1.0 : 0.0);  // pixels at the box's edges
  Tensor y = gen.randint({4}, 0, 10);
  StepContext ctx;
  ctx.compute = DType::f64;
  ctx.update_running = false;
  ctx.eps = 0.05;
  ctx.seed = 9;
  ctx.step = 3;
  RobustSettings robust;  // attack steps in eval mode
  for (const char* name : {"fgsm-rs", "n-fgsm"}) {
    const bool noise = std::string(name) == "n-fgsm";
    const double start_radius = noise ? 2 * ctx.eps : ctx.eps, alpha = noise ? ctx.eps : 1.25 * ctx.eps;
    std::unique_ptr<Method> m = method_with(name);
    Tensor delta;
    {
      TapeScope scope;
      delta = m->build(*model, x, y, robust, ctx).delta;
    }
    // Written out: the start (uniform, in the box), the input gradient there, one sign step, the projections.
    Tensor start = robust::perturbation_init(x, start_radius, 0.0, ctx.seed, ctx.step * x.numel());
    Tensor g;
    {
      TapeScope scope;
      Tensor p = add(x, start).detach().requires_grad_();
      nets::ForwardContext eval;
      eval.bn = nets::BnMode::eval;
      eval.compute = DType::f64;
      Tensor s = sum(cross_entropy(model->forward(p, eval), y));
      g = grad({s}, {backend::full_like(s, 1.0)}, {p})[0];
    }
    double largest = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      REQUIRE(std::fabs(start.at(i)) <= start_radius);
      double d = start.at(i) + alpha * sign_of(g.at(i));
      if (!noise) d = std::clamp(d, -ctx.eps, ctx.eps);
      d = std::clamp(x.at(i) + d, 0.0, 1.0) - x.at(i);
      INFO(std::string(name), " element ", i);
      REQUIRE(delta.at(i) == doctest::Approx(d).epsilon(1e-15).scale(1.0));
      largest = std::max(largest, std::fabs(delta.at(i)));
    }
    std::printf("%s: largest |delta| %.4f for eps %.4f\n", name, largest, ctx.eps);
    if (noise)
      CHECK(largest > 1.5 * ctx.eps);  // the noise and the step leave the eps-ball: N-FGSM does not project
    else
      CHECK(largest <= ctx.eps + 1e-15);
  }
}

// cos(a, b) with each norm at least `guard`, written out.
double guarded_cosine(const std::vector<double>& a, const std::vector<double>& b, double guard) {
  double dot = 0, aa = 0, bb = 0;
  for (size_t j = 0; j < a.size(); ++j) dot += a[j] * b[j], aa += a[j] * a[j], bb += b[j] * b[j];
  return dot / (std::max(std::sqrt(aa), guard) * std::max(std::sqrt(bb), guard));
}

TEST_CASE("GradAlign's cosine kernel: the cosine written out and its derivatives against finite differences") {
  Generator gen(32);
  const double guard = 1e-8;
  Shape s{4, 4, 4, 2};
  const int64_t inner = 32;
  Tensor g1 = gen.normal(s, 0, 1, DType::f64, Layout::nhwc), g2 = gen.normal(s, 0, 1, DType::f64, Layout::nhwc);
  for (int64_t j = 0; j < inner; ++j) {
    g1.set(2 * inner + j, 1e-11 * g1.at(2 * inner + j));  // a norm below the guard
    g1.set(3 * inner + j, 0.0);                           // a vanishing gradient
  }
  GradientAlignment a = robust::gradient_alignment(g1, g2, guard);
  REQUIRE(a.cos.shape() == Shape{4});
  REQUIRE(a.d_cos_d_g1.shape() == s);
  REQUIRE(a.d_cos_d_g2.shape() == s);
  for (int64_t e = 0; e < 4; ++e) {
    std::vector<double> r1(inner), r2(inner);
    for (int64_t j = 0; j < inner; ++j) r1[j] = g1.at(e * inner + j), r2[j] = g2.at(e * inner + j);
    INFO("example ", e);
    CHECK(a.cos.at(e) == doctest::Approx(guarded_cosine(r1, r2, guard)).epsilon(1e-14));
    // Central differences on each side, with steps that keep every norm on its side of the guard.
    for (int side = 0; side < 2; ++side) {
      std::vector<double>& r = side == 0 ? r1 : r2;
      const Tensor& analytic = side == 0 ? a.d_cos_d_g1 : a.d_cos_d_g2;
      double h = (side == 0 && e >= 2) ? 1e-14 : 1e-6;
      double worst = 0;
      for (int64_t j = 0; j < inner; ++j) {
        double keep = r[j];
        r[j] = keep + h;
        double up = guarded_cosine(r1, r2, guard);
        r[j] = keep - h;
        double down = guarded_cosine(r1, r2, guard);
        r[j] = keep;
        double numeric = (up - down) / (2 * h), exact = analytic.at(e * inner + j);
        worst = std::max(worst, std::fabs(numeric - exact) / std::max({std::fabs(numeric), std::fabs(exact), 1e-3}));
      }
      INFO("side ", side + 1);
      CHECK(worst < 1e-7);
    }
  }
  CHECK(a.cos.at(3) == 0.0);
  for (int64_t j = 0; j < inner; ++j) CHECK(a.d_cos_d_g2.at(3 * inner + j) == 0.0);
}

TEST_CASE("ELLE's triplets lie in the ball and the box: x_c interpolates and its coefficients are the gradient") {
  Generator gen(33);
  const double eps = 0.05;
  const int64_t n = 3;
  Tensor x = gen.uniform({n, 4, 4, 2}, 0, 1, DType::f64, Layout::nhwc);
  for (int64_t i = 0; i < 12; ++i) x.set(5 * i, i % 2 ? 1.0 : 0.0);
  Tensor y = gen.randint({n}, 0, 10);
  ElleTriplets t = robust::elle_triplets(x, y, eps, 5, 77);
  REQUIRE(t.points.shape() == Shape{3 * n, 4, 4, 2});
  const int64_t numel = x.numel(), inner = numel / n;
  // x_a draws as perturbation_init does from the same counters; x_b from the next numel counters.
  Tensor start = robust::perturbation_init(x, eps, 0.0, 5, 77);
  Tensor again = robust::elle_triplets(x, y, eps, 5, 77).points;
  bool differ = false;
  for (int64_t j = 0; j < numel; ++j) {
    double xa = t.points.at(j), xb = t.points.at(numel + j), xc = t.points.at(2 * numel + j);
    double alpha = t.alpha.at(j / inner);
    INFO("element ", j);
    REQUIRE(xa == x.at(j) + start.at(j));
    for (double p : {xa, xb}) {
      REQUIRE(std::fabs(p - x.at(j)) <= eps + 1e-15);
      REQUIRE(p >= 0.0);
      REQUIRE(p <= 1.0);
    }
    REQUIRE(xc == doctest::Approx(alpha * xa + (1 - alpha) * xb).epsilon(1e-15));
    REQUIRE(again.at(2 * numel + j) == xc);
    differ |= xa != xb;
  }
  CHECK(differ);
  for (int64_t i = 0; i < n; ++i) {
    CHECK(t.alpha.at(i) >= 0.0);
    CHECK(t.alpha.at(i) < 1.0);
  }
  for (int64_t k = 0; k < 3 * n; ++k) CHECK(t.labels.data<int32_t>()[k] == y.data<int32_t>()[k % n]);

  // The loss weights are the gradient of lambda/N sum_i r_i^2 with respect to the 3N losses.
  const double lambda = 7.0;
  Tensor losses = gen.uniform({3 * n}, 0.5, 3, DType::f64);
  ElleCoefficients c = robust::elle_coefficients(losses, t.alpha, lambda);
  auto objective = [&](const Tensor& l) {
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      double a = t.alpha.at(i), r = l.at(2 * n + i) - a * l.at(i) - (1 - a) * l.at(n + i);
      total += r * r;
    }
    return lambda * total / double(n);
  };
  for (int64_t i = 0; i < n; ++i) {
    double a = t.alpha.at(i);
    CHECK(c.residual.at(i) == doctest::Approx(losses.at(2 * n + i) - a * losses.at(i) - (1 - a) * losses.at(n + i))
                                  .epsilon(1e-15));
  }
  for (int64_t k = 0; k < 3 * n; ++k) {
    Tensor up = losses.clone(), down = losses.clone();
    up.set(k, losses.at(k) + 1e-6);
    down.set(k, losses.at(k) - 1e-6);
    double numeric = (objective(up) - objective(down)) / 2e-6;
    INFO("loss ", k);
    CHECK(c.loss_weight.at(k) == doctest::Approx(numeric).epsilon(1e-8));
  }
}

// 20 steps of batch 8, five epochs of 32 synthetic images (about 14 s for GradAlign on one idle core): the mean
// objective of the last epoch must be below that of the first.
void check_short_training_lowers_objective(const char* method) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / (std::string("llr_fast_training_") + method);
  fs::remove_all(dir);
  TrainConfig c;
  c.data.data = "synthetic";
  c.data.synthetic_train = 32;
  c.data.synthetic_val = 0;
  c.model = "wrn-10-1";
  c.act = "softplus";
  c.method = method;
  c.robust.eps_warmup = 0;
  c.batch = 8;
  c.steps = 20;
  c.log_every = 4;
  c.lr = 0.05;
  c.schedule = "constant";
  c.device = "cpu";
  c.seed = 4;
  c.out = dir.string();
  train(c);
  std::vector<double> losses;
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["split"] == "train") losses.push_back(j["loss"].get<double>());
  }
  fs::remove_all(dir);
  REQUIRE(losses.size() == 5);
  std::printf("%-9s objective per epoch (seed %llu):", method, static_cast<unsigned long long>(c.seed));
  for (double l : losses) std::printf(" %.4f", l);
  std::printf("\n");
  CHECK(losses.back() < losses.front());
}

TEST_CASE("a short CPU training run with FGSM-RS on synthetic data lowers its objective" * doctest::test_suite("slow")) {
  check_short_training_lowers_objective("fgsm-rs");
}

TEST_CASE("a short CPU training run with N-FGSM on synthetic data lowers its objective" * doctest::test_suite("slow")) {
  check_short_training_lowers_objective("n-fgsm");
}

TEST_CASE("a short CPU training run with GradAlign on synthetic data lowers its objective" * doctest::test_suite("slow")) {
  check_short_training_lowers_objective("gradalign");
}

TEST_CASE("a short CPU training run with ELLE on synthetic data lowers its objective" * doctest::test_suite("slow")) {
  check_short_training_lowers_objective("elle");
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
