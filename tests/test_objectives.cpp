// Whole-objective gradients (perturbation fixed) against finite differences of each objective's definition, in f64
// on a softplus and a ReLU WRN-10-1; the finite-difference LLR variant against the exact one; the fused perturbation
// step against an unfused reference, and its projection.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/backend.h"
#include "nets/model.h"
#include "tests/method_util.h"
#include "tests/test_util.h"
#include "train/objective_check.h"
#include "train/robust/robust_kernels.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

ObjectiveCheckReport run(const std::string& name, Act act) {
  std::unique_ptr<Method> m = method_with(name, {{"llr_steps", 3}});
  RobustSettings robust;
  robust.attack_steps = 3;
  robust.eps = 0.1;  // large enough that g and d are well away from 0
  ObjectiveCheckOptions opt;
  opt.act = act;
  opt.samples_per_tensor = 4;
  ObjectiveCheckReport r = check_objective_gradient(*m, robust, opt);
  std::printf("objective gradcheck %-8s %-8s: max rel. error %.2e over %lld parameters in %lld tensors (%lld "
              "kinks skipped), objective %.6f\n",
              name.c_str(), act == Act::relu ? "relu" : "softplus", r.max_rel_error,
              static_cast<long long>(r.checked), static_cast<long long>(r.tensors),
              static_cast<long long>(r.skipped_kinks), r.objective);
  return r;
}

TEST_CASE("every objective's gradient matches finite differences in f64 (softplus and ReLU WRN-10-1)") {
  for (Act act : {Act::softplus, Act::relu})
    for (const char* m : kMethods) {
      ObjectiveCheckReport r = run(m, act);
      INFO("method ", m, " act ", int(act), ": worst ", r.worst);
      CHECK(r.checked >= 3 * r.tensors);
      CHECK(r.max_rel_error < 1e-6);
    }
}

}  // namespace
}  // namespace llr::test

namespace llr::test {
namespace {

std::vector<Tensor> llr_gradient(nets::Model& model, const Tensor& x, const Tensor& y, const Tensor& delta,
                                 const char* g, double h) {
  std::unique_ptr<Method> m = method_with("llr", {{"llr_grad", g}, {"fd_step", h > 0 ? h : 0.01}});
  StepContext ctx;
  ctx.compute = DType::f64;
  ctx.update_running = false;
  ctx.fixed_delta = &delta;
  TapeScope scope;
  return objective_gradients(m->build(model, x, y, RobustSettings(), ctx), model.parameters());
}

double max_rel_diff(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double num = 0, den = 0;
  for (size_t k = 0; k < a.size(); ++k)
    for (int64_t i = 0; i < a[k].numel(); ++i) {
      num = std::max(num, std::fabs(a[k].at(i) - b[k].at(i)));
      den = std::max(den, std::fabs(b[k].at(i)));
    }
  return num / den;
}

// One f64 problem (model, batch, fixed perturbation) for comparing ways of computing an objective's gradient.
struct FixedProblem {
  std::unique_ptr<nets::Model> model;
  Tensor x, y, delta;
  StepContext ctx;
  FixedProblem(const char* model_name, uint64_t seed) {
    model = nets::make_model(model_name, Act::softplus, 10, seed, Device::cpu, DType::f64);
    Generator gen(seed + 1);
    x = gen.uniform({4, 16, 16, 3}, 0, 1, DType::f64, Layout::nhwc);
    y = gen.randint({4}, 0, 10);
    delta = robust::perturbation_init(x, 0.1, 0.0, 3, 0);
    ctx.compute = DType::f64;
    ctx.update_running = false;
    ctx.fixed_delta = &delta;
    ctx.eps = 0.1;  // GradAlign's random point
  }
  // The loss, then every parameter's gradient.
  std::vector<Tensor> gradients(const char* method, const nlohmann::json& settings) {
    std::unique_ptr<Method> m = method_with(method, settings);
    TapeScope scope;
    ObjectiveResult r = m->build(*model, x, y, RobustSettings(), ctx);
    std::vector<Tensor> g = objective_gradients(r, model->parameters());
    g.insert(g.begin(), r.loss);
    return g;
  }
};

// max over the tensors of max |got - ref| / max |ref|.
double worst_difference(const std::vector<Tensor>& got, const std::vector<Tensor>& ref) {
  double worst = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    const double scale = max_abs(ref[k]);
    for (int64_t i = 0; i < ref[k].numel(); ++i)
      worst = std::max(worst, std::fabs(got[k].at(i) - ref[k].at(i)) / (scale > 0 ? scale : 1.0));
  }
  return worst;
}

// The tangent pass recomputed in segments (--llr-tangent-segments) and the nominal pass recorded a second time
// (--llr-recompute-nominal) change where the memory goes, not the gradient: every parameter's gradient equals the
// stored passes' to f64 rounding, on a WRN and on PreAct ResNet-18 (whose shortcuts cross segment boundaries), with
// more segments than layers too.
TEST_CASE("the exact LLR gradient with its tangent pass or nominal pass recomputed equals the stored passes'") {
  for (const char* model_name : {"wrn-10-1", "preact-rn18"}) {
    FixedProblem p(model_name, 17);
    auto llr = [&](int segments, bool recompute) {
      return p.gradients("llr", {{"llr_tangent_segments", segments}, {"llr_recompute_nominal", recompute}});
    };
    const uint64_t jvp_before = op_counters().jvp_calls;
    std::vector<Tensor> whole = llr(1, false);
    const uint64_t whole_jvps = op_counters().jvp_calls - jvp_before;
    for (int segments : {2, 5, 1000}) {
      INFO(model_name, ", ", segments, " segments");
      const uint64_t before = op_counters().jvp_calls;
      std::vector<Tensor> cut = llr(segments, false);
      // Each node's tangent is computed in the tangent pass and again when its segment is reversed (unless no
      // cotangent reaches the segment).
      const uint64_t jvps = op_counters().jvp_calls - before;
      CHECK(jvps > whole_jvps + whole_jvps / 2);
      CHECK(jvps <= 2 * whole_jvps);
      const double worst = worst_difference(cut, whole);
      std::printf("llr tangent segments %-12s %4d: worst difference from the whole pass %.2e (of each tensor's max)\n",
                  model_name, segments, worst);
      CHECK(worst < 1e-12);
    }
    // The nominal pass freed during the search and recorded again (with and without segments): the same gradient.
    for (int segments : {1, 4}) {
      INFO(model_name, ", nominal pass recorded again, ", segments, " segments");
      const double worst = worst_difference(llr(segments, true), whole);
      std::printf("llr nominal recomputed %-10s %4d segments: worst difference %.2e\n", model_name, segments, worst);
      CHECK(worst < 1e-12);
    }
  }
}

// GradAlign's two tangent passes in segments: the same gradient.
TEST_CASE("GradAlign's gradient with its tangent passes recomputed in segments equals the stored passes'") {
  FixedProblem p("wrn-10-1", 19);
  std::vector<Tensor> whole = p.gradients("gradalign", {{"gradalign_tangent_segments", 1}});
  const double worst = worst_difference(p.gradients("gradalign", {{"gradalign_tangent_segments", 4}}), whole);
  std::printf("gradalign tangent segments 4: worst difference from the stored passes %.2e\n", worst);
  CHECK(worst < 1e-12);
}

TEST_CASE("the finite-difference LLR gradient converges to the exact one at second order") {
  Generator gen(12);
  auto model = nets::make_model("wrn-10-1", Act::softplus, 10, 12, Device::cpu, DType::f64);
  Tensor x = gen.uniform({4, 8, 8, 3}, 0, 1, DType::f64, Layout::nhwc);
  Tensor y = gen.randint({4}, 0, 10);
  Tensor delta = robust::perturbation_init(x, 8.0 / 255.0, 0.0, 5, 0);
  std::vector<Tensor> exact = llr_gradient(*model, x, y, delta, "exact", 0);
  double e1 = max_rel_diff(llr_gradient(*model, x, y, delta, "fd", 0.4), exact);
  double e2 = max_rel_diff(llr_gradient(*model, x, y, delta, "fd", 0.2), exact);
  double e3 = max_rel_diff(llr_gradient(*model, x, y, delta, "fd", 0.1), exact);
  std::printf("LLR fd vs exact gradient, max difference / max |gradient|: h=0.4 %.3e, h=0.2 %.3e, h=0.1 %.3e "
              "(ratios %.2f, %.2f; second order gives 4)\n",
              e1, e2, e3, e1 / e2, e2 / e3);
  CHECK(e3 < 1e-3);
  CHECK(e1 / e2 > 3.5);
  CHECK(e1 / e2 < 4.5);
  CHECK(e2 / e3 > 3.5);
  CHECK(e2 / e3 < 4.5);
}

TEST_CASE("the fused perturbation step matches an unfused reference and stays in the ball and the box") {
  Generator gen(13);
  const double eps = 0.05;
  Shape s{3, 4, 4, 2};
  Tensor x = gen.uniform(s, 0, 1, DType::f64, Layout::nhwc);
  for (int64_t i = 0; i < 10; ++i) x.set(i, i % 2 ? 1.0 : 0.0);  // pixels at the box's edges
  Tensor gx = gen.normal(s, 0, 1, DType::f64, Layout::nhwc);
  Tensor sign_g = Tensor::from_vector({1, -1, 1}, {3}, DType::f64);
  for (PerturbationUpdate u : {PerturbationUpdate::sign, PerturbationUpdate::adam}) {
    Tensor delta = robust::perturbation_init(x, eps, 0.0, 7, 0);
    Tensor ref = delta.clone();
    Tensor m = backend::full_like(x, 0.0), v = backend::full_like(x, 0.0);
    // Adam's step count, kept in a counter tensor that the step reads and counts on (the search's).
    Tensor steps = Tensor::zeros({}, DType::f64, Layout::plain, Device::cpu), d = Tensor::zeros({3}, DType::f64);
    std::vector<double> rm(x.numel(), 0.0), rv(x.numel(), 0.0);
    PerturbationParams p;
    p.update = u;
    p.step_size = u == PerturbationUpdate::adam ? 0.1 : 0.02;
    p.eps = eps;
    for (int t = 1; t <= 6; ++t) {
      Tensor gw = gen.normal(s, 0, 1, DType::f64, Layout::nhwc);
      robust::perturbation_step(delta, x, gw, gx, sign_g, m, v, d, steps, p);
      CHECK(steps.item() == (u == PerturbationUpdate::adam ? t : 0));  // counted by Adam steps only
      // Unfused reference, written out.
      double b1 = 1 - std::pow(p.beta1, t), b2 = 1 - std::pow(p.beta2, t);
      std::vector<double> dots(3, 0.0);
      for (int64_t i = 0; i < x.numel(); ++i) {
        int64_t e = i / 32;
        double dir = gw.at(i) - sign_g.at(e) * gx.at(i), upd;
        if (u == PerturbationUpdate::adam) {
          rm[i] = p.beta1 * rm[i] + (1 - p.beta1) * dir;
          rv[i] = p.beta2 * rv[i] + (1 - p.beta2) * dir * dir;
          upd = p.step_size.value() * (rm[i] / b1) / (std::sqrt(rv[i] / b2) + p.adam_eps);
        } else {
          upd = p.step_size.value() * (dir > 0 ? 1 : dir < 0 ? -1 : 0);
        }
        double nd = std::clamp(ref.at(i) + upd, -eps, eps);
        nd = std::clamp(x.at(i) + nd, 0.0, 1.0) - x.at(i);
        ref.set(i, nd);
        dots[e] += nd * gx.at(i);
      }
      CHECK(compare(delta, ref, 1e-15, 1e-13).max_violation <= 1.0);
      for (int e = 0; e < 3; ++e) CHECK(d.at(e) == doctest::Approx(dots[e]).epsilon(1e-12));
      for (int64_t i = 0; i < x.numel(); ++i) {
        CHECK(std::fabs(delta.at(i)) <= eps + 1e-15);
        CHECK(x.at(i) + delta.at(i) >= -1e-15);
        CHECK(x.at(i) + delta.at(i) <= 1 + 1e-15);
      }
    }
  }
}

TEST_CASE("the LLR search stays in the ball and the box and raises the linearity gap over the random start") {
  Generator gen(14);
  auto model = nets::make_model("wrn-10-1", Act::softplus, 10, 14, Device::cpu, DType::f64);
  Tensor x = gen.uniform({8, 8, 8, 3}, 0, 1, DType::f64, Layout::nhwc);
  Tensor y = gen.randint({8}, 0, 10);
  StepContext ctx;
  ctx.compute = DType::f64;
  ctx.update_running = false;
  ctx.eps = 0.05;
  RobustSettings robust;
  double gamma0;
  {
    std::unique_ptr<Method> start = method_with("llr");
    start->set_steps(robust, 0);
    TapeScope scope;
    gamma0 = host_value(start->build(*model, x, y, robust, ctx).metrics["llr_gamma"]);
  }
  for (const char* u : {"adam", "sign"}) {
    std::unique_ptr<Method> m =
        method_with("llr", {{"llr_steps", 10}, {"llr_search", u}, {"llr_step_size", u == std::string("adam") ? 0.1 : 0.01}});
    TapeScope scope;
    ObjectiveResult r = m->build(*model, x, y, robust, ctx);
    std::printf("LLR search (%s, 10 steps): mean |g| %.4g vs %.4g at the random start\n", u,
                host_value(r.metrics["llr_gamma"]), gamma0);
    CHECK(host_value(r.metrics["llr_gamma"]) > 2 * gamma0);
    for (int64_t i = 0; i < x.numel(); ++i) {
      REQUIRE(std::fabs(r.delta.at(i)) <= ctx.eps + 1e-15);
      REQUIRE(x.at(i) + r.delta.at(i) >= -1e-15);
      REQUIRE(x.at(i) + r.delta.at(i) <= 1 + 1e-15);
    }
  }
}

}  // namespace
}  // namespace llr::test

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/cifar_fixture.h"
#include "train/trainer.h"

namespace llr::test {
namespace {

TEST_CASE("a short CPU training run with each method on real CIFAR-10 lowers its objective" * doctest::test_suite("slow")) {
  std::filesystem::path dir = cifar_subset("methods", 100);
  if (dir.empty()) {
    MESSAGE("skipped: no CIFAR-10 data");
    return;
  }
  for (const char* method : {"natural", "pgd", "trades", "llr"}) {
    TrainConfig c;
    c.data.data = dir.string();
    c.model = "wrn-10-1";
    c.act = "softplus";
    c.method = method;
    c.robust.attack_steps = 3;
    read_json(c.methods, nlohmann::json{{"llr_steps", 3}}, "test");
    c.robust.eps_warmup = 0;
    c.batch = 50;
    c.steps = 30;
    c.log_every = 10;
    c.lr = 0.05;
    c.schedule = "constant";
    c.device = "cpu";
    c.seed = 2;
    c.out = (dir / method).string();
    train(c);
    std::vector<double> losses;
    std::ifstream in(dir / method / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j["split"] == "train") losses.push_back(j["loss"].get<double>());
    }
    REQUIRE(losses.size() == 3);
    std::printf("%-8s objective over steps 1-10, 11-20, 21-30: %.4f %.4f %.4f\n", method, losses[0], losses[1],
                losses[2]);
    INFO(std::string(method));
    CHECK(losses[2] < losses[0]);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace llr::test

namespace llr::test {
namespace {

TEST_CASE("the logged loss of every objective equals its definition") {
  Generator gen(15);
  auto model = nets::make_model("wrn-10-1", Act::softplus, 10, 15, Device::cpu, DType::f64);
  Tensor x = gen.uniform({4, 8, 8, 3}, 0, 1, DType::f64, Layout::nhwc);
  Tensor y = gen.randint({4}, 0, 10);
  Tensor delta = robust::perturbation_init(x, 0.05, 0.0, 3, 0);
  for (const char* name : kMethods) {
    std::unique_ptr<Method> m = method_with(name);
    StepContext ctx;
    ctx.compute = DType::f64;
    ctx.update_running = false;
    ctx.fixed_delta = &delta;
    ctx.eps = 0.05;  // the radius of GradAlign's and ELLE's random points
    double logged;
    {
      TapeScope scope;
      logged = host_value(m->build(*model, x, y, RobustSettings(), ctx).loss);
    }
    // The definition computed independently of build(): LLR's from d and g, GradAlign's from both input gradients,
    // ELLE's from the triplet losses, the others' written out here (batch norm with each pass's own statistics).
    const std::string method = name;
    double defined = NAN;
    if (method == "llr" || method == "gradalign" || method == "elle") {
      defined = m->definition(*model, x, y, RobustSettings(), ctx);
    } else {
      NoGradGuard no_grad;
      TapeScope scope;
      nets::ForwardContext train_mode;
      train_mode.compute = DType::f64;
      Tensor clean = model->forward(x, train_mode);
      nets::ForwardContext train_mode2 = train_mode;
      Tensor adv = model->forward(add(x, delta), train_mode2);
      if (method == "natural") defined = host_value(mean(cross_entropy(clean, y)));
      if (method == "pgd" || method == "fgsm-rs" || method == "n-fgsm")
        defined = host_value(mean(cross_entropy(adv, y)));
      if (method == "trades")
        defined = host_value(mean(cross_entropy(clean, y))) + 6.0 * host_value(mean(kl_div(clean, adv)));
    }
    INFO("method ", name);
    CHECK(logged == doctest::Approx(defined).epsilon(1e-12));
  }
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
