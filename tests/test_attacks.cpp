// Evaluation attacks and the local-linearity measure, on a small WRN trained on real CIFAR-10 images (skipped when
// the data is absent), and gamma on losses whose linearity is known.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "engine/backend.h"
#include "tests/cifar_fixture.h"
#include "tests/test_util.h"
#include "train/attacks/attack.h"
#include "train/checkpoint.h"
#include "train/robust/robust_kernels.h"
#include "train/trainer.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

// A WRN-10-1 trained naturally for 3 epochs on 2,000 real images, and 100 held-out images (built once).
struct Trained {
  std::unique_ptr<nets::Model> model;
  Tensor x, y;
};

Trained* trained() {
  static std::unique_ptr<Trained> t;
  static bool tried = false;
  if (tried) return t.get();
  tried = true;
  std::filesystem::path dir = cifar_subset("attacks", 500);
  if (dir.empty()) return nullptr;
  TrainConfig c;
  c.data.data = dir.string();
  c.data.holdout = 400;
  c.data.n_train = 2000;
  c.model = "wrn-10-1";
  c.batch = 50;
  c.epochs = 3;
  c.lr = 0.05;
  c.schedule = "cosine";
  c.device = "cpu";
  c.seed = 4;
  c.out = (dir / "run").string();
  train(c);
  t = std::make_unique<Trained>();
  t->model = nets::make_model("wrn-10-1", Act::relu, 10, 0, Device::cpu);
  ckpt::load_model((dir / "run" / "model.safetensors").string(), *t->model);
  data::Splits s = data::load_cifar10(dir.string(), 400);
  std::vector<int32_t> order(100);
  for (int i = 0; i < 100; ++i) order[i] = i;
  data::Batch b = data::make_batch(s.val, order, 0, 100, false, 0, 0, DType::f32);
  t->x = b.images;
  t->y = b.labels;
  std::filesystem::remove_all(dir);
  return t.get();
}

std::vector<char> flags(const Tensor& mask) {
  std::vector<char> out;
  for (double v : mask.to(Device::cpu).to_vector()) out.push_back(v != 0);
  return out;
}

double fraction(const std::vector<char>& v) {
  double s = 0;
  for (char c : v) s += c;
  return s / double(v.size());
}

std::vector<char> correctly_classified(nets::Model& model, const Tensor& x, const Tensor& y) {
  return flags(correct_mask(model, x, y, DType::f32));
}

AttackResult attack(const Trained& t, const std::string& spec, double eps, uint64_t seed) {
  std::vector<std::unique_ptr<Attack>> a = parse_attacks(spec);
  REQUIRE(a.size() == 1);
  AttackContext ctx{*t.model, DType::f32, eps, seed};
  return a[0]->run(ctx, t.x, t.y, correct_mask(*t.model, t.x, t.y, DType::f32));
}

TEST_CASE("a perturbation step on an empty batch changes nothing and counts no Adam step") {
  PerturbationParams p;
  p.update = PerturbationUpdate::adam;
  p.step_size = 0.1;
  p.eps = 0.03;
  auto empty = [] { return Tensor::zeros({0, 2, 2, 3}, DType::f32, Layout::nhwc, Device::cpu); };
  Tensor delta = empty(), x = empty(), g = empty(), m = empty(), v = empty(), none;
  Tensor steps = Tensor::zeros({}, DType::f64, Layout::plain, Device::cpu);
  robust::perturbation_step(delta, x, g, none, none, m, v, none, steps, p);
  CHECK(steps.item() == 0);
  CHECK(delta.numel() == 0);
}

TEST_CASE("every attack stays in the eps-ball and [0 1] and breaks a naturally trained model" * doctest::test_suite("slow")) {
  Trained* t = trained();
  if (!t) {
    MESSAGE("skipped: no CIFAR-10 data");
    return;
  }
  const double eps = 8.0 / 255.0;
  std::vector<char> correct = correctly_classified(*t->model, t->x, t->y);
  double clean = fraction(correct);
  for (const char* spec : {"pgd-ce:10x2", "pgd-margin:20", "mt:5", "apgd-ce:20", "apgd-t:5", "fab-t:10", "square:300"}) {
    AttackResult r = attack(*t, spec, eps, 11);
    std::vector<char> still = flags(r.robust);
    double robust = fraction(still);
    std::printf("attack %-12s eps 8/255: clean %.2f -> robust %.2f\n", spec, clean, robust);
    INFO(spec);
    CHECK(clean > 0.25);
    // The gradient attacks leave under a third of the correctly classified examples. Square is a black-box random
    // search on 300 queries (AutoAttack gives it 5,000): on this kind of net torchattacks' Square leaves as many (a
    // WRN-10-1 trained so, 100 held-out images: clean 0.30, both 0.08 after 300 queries, 0.07 and ours 0.06 after
    // 1,000), and here about a third of them, so it is held to a half.
    const bool black_box = std::string(spec).rfind("square", 0) == 0;
    CHECK(robust < clean / (black_box ? 2 : 3));
    for (size_t i = 0; i < still.size(); ++i)
      if (still[i]) CHECK(correct[i]);  // an attack never repairs a misclassified example
    double worst_ball = 0, worst_box = 0;
    for (int64_t i = 0; i < t->x.numel(); ++i) {
      double d = r.delta.at(i), x = t->x.at(i);
      worst_ball = std::max(worst_ball, std::fabs(d) - eps);
      worst_box = std::max({worst_box, -(x + d), x + d - 1});
    }
    CHECK(worst_ball <= 1e-6);
    CHECK(worst_box <= 1e-6);
    // An example the attack reports broken is misclassified at its perturbation.
    Tensor xa = backend::add(t->x, r.delta);
    std::vector<char> at_delta = correctly_classified(*t->model, xa, t->y);
    for (size_t i = 0; i < still.size(); ++i)
      if (correct[i] && !still[i]) CHECK_FALSE(at_delta[i]);
  }
}

TEST_CASE("APGD-T is at least as strong as PGD-CE with the same number of gradient steps and attacks repeat exactly" * doctest::test_suite("slow")) {
  Trained* t = trained();
  if (!t) {
    MESSAGE("skipped: no CIFAR-10 data");
    return;
  }
  const double eps = 1.0 / 255.0;  // small enough that not every example breaks
  std::vector<char> correct = correctly_classified(*t->model, t->x, t->y);
  std::vector<char> pgd = flags(attack(*t, "pgd-ce:45x1", eps, 3).robust);
  AttackResult apgdt = attack(*t, "apgd-t:5", eps, 3);
  std::printf("eps 1/255: clean %.2f, pgd-ce:45x1 %.2f, apgd-t:5 (9 targets) %.2f\n", fraction(correct),
              fraction(pgd), fraction(flags(apgdt.robust)));
  CHECK(fraction(pgd) > 0);  // the comparison means something
  CHECK(fraction(flags(apgdt.robust)) <= fraction(pgd));
  AttackResult again = attack(*t, "apgd-t:5", eps, 3);
  CHECK(flags(again.robust) == flags(apgdt.robust));
  CHECK(again.delta.to_vector() == apgdt.delta.to_vector());
}

TEST_CASE("gamma is zero for a linear loss and positive for a curved one and is reproducible" * doctest::test_suite("slow")) {
  Generator gen(8);
  Tensor x = gen.uniform({6, 4, 4, 3}, 0, 1, DType::f64, Layout::nhwc);
  Tensor w = gen.normal({6, 4, 4, 3}, 0, 1, DType::f64, Layout::nhwc);
  PerExampleLoss linear = [w](const Tensor& xx) { return per_example_dot(xx, w); };
  PerExampleLoss curved = [w](const Tensor& xx) { return per_example_dot(softplus(scale(xx, 3.0)), w); };
  std::vector<double> g0 = measure_gamma(linear, x, 0.1, 10, 2, 5).to_vector();
  std::vector<double> g1 = measure_gamma(curved, x, 0.1, 10, 2, 5).to_vector();
  std::vector<double> g2 = measure_gamma(curved, x, 0.1, 10, 2, 5).to_vector();
  for (size_t i = 0; i < g0.size(); ++i) {
    CHECK(g0[i] < 1e-12);
    CHECK(g1[i] > 1e-3);
    CHECK(g1[i] == g2[i]);
  }
  Trained* t = trained();
  if (!t) return;
  Tensor x4 = t->x;
  std::vector<double> gm =
      measure_gamma(model_cross_entropy(*t->model, t->y, DType::f32), x4, 8.0 / 255.0, 5, 1, 2).to_vector();
  double mean = 0;
  for (double v : gm) mean += v / double(gm.size());
  std::printf("gamma of the trained WRN-10-1 at 8/255 (5 steps): mean %.4f\n", mean);
  CHECK(mean > 0);
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
