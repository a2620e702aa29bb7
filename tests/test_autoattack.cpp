// The attacks of AutoAttack's standard suite (APGD-CE, APGD-T, FAB-T, Square and the `autoattack` chain) on linear
// classifiers, where the smallest l_inf perturbation that misclassifies an example is known in closed form, and
// FAB's step against an independent sort-based projection. Synthetic and fast; seeds fixed.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "engine/backend.h"
#include "tests/test_util.h"
#include "train/attacks/attack.h"
#include "train/robust/search.h"
#include "train/robust/square_math.h"

namespace llr::test {
namespace {

TEST_SUITE_BEGIN("fast");

// z = W x + b on the flattened image.
class LinearClassifier final : public nets::Model {
 public:
  LinearClassifier(Tensor w, Tensor b) : Model("linear", Act::relu, w.dim(0)), w_(std::move(w)), b_(std::move(b)) {}
  Tensor forward(const Tensor& x, nets::ForwardContext&) override {
    return linear(reshape(x, {x.dim(0), x.numel() / x.dim(0)}), w_, b_);
  }
  double weight(int64_t k, int64_t i) const { return w_.at(k * w_.dim(1) + i); }
  double logit(const Tensor& x, int64_t e, int64_t k) const {
    int64_t d = w_.dim(1);
    double z = b_.at(k);
    for (int64_t i = 0; i < d; ++i) z += weight(k, i) * x.at(e * d + i);
    return z;
  }

 private:
  Tensor w_, b_;
};

// Images [n, 4, 4, 3] in [0.3, 0.7], so every perturbation up to 0.3 stays inside the box and the smallest
// misclassifying l_inf perturbation of a linear classifier is min over t of (z_y - z_t) / ||w_y - w_t||_1. The
// classifier ignores the last row and column: Square, like the reference, never draws a square's corner at the last
// offset, so after its start it only changes them with squares spanning the image (its first 11 queries here).
struct LinearProblem {
  std::unique_ptr<LinearClassifier> model;
  Tensor x, y;
  std::vector<double> distance;  // per example
};

LinearProblem linear_problem(int64_t n, int64_t classes, uint64_t seed) {
  Generator gen = seeded(seed);
  const int64_t d = 48;
  LinearProblem p;
  Tensor w = gen.normal({classes, d}, 0, 1, DType::f32);
  for (int64_t i = 0; i < w.numel(); ++i) {
    int64_t pixel = (i % d) / 3;
    if (pixel / 4 == 3 || pixel % 4 == 3) w.set(i, 0.0);
  }
  p.model = std::make_unique<LinearClassifier>(w, gen.normal({classes}, 0, 0.1, DType::f32));
  p.x = gen.uniform({n, 4, 4, 3}, 0.3, 0.7, DType::f32, Layout::nhwc);
  std::vector<int32_t> labels;
  for (int64_t e = 0; e < n; ++e) {
    int64_t y = 0;
    for (int64_t k = 1; k < classes; ++k)
      if (p.model->logit(p.x, e, k) > p.model->logit(p.x, e, y)) y = k;
    labels.push_back(static_cast<int32_t>(y));  // every example starts correctly classified
    double best = INFINITY;
    for (int64_t t = 0; t < classes; ++t) {
      if (t == y) continue;
      double l1 = 0;
      for (int64_t i = 0; i < d; ++i) l1 += std::fabs(p.model->weight(y, i) - p.model->weight(t, i));
      best = std::min(best, (p.model->logit(p.x, e, y) - p.model->logit(p.x, e, t)) / l1);
    }
    p.distance.push_back(best);
  }
  p.y = Tensor::from_labels(labels);
  return p;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

AttackResult run_attack(const LinearProblem& p, const std::string& spec, double eps, uint64_t seed) {
  std::vector<std::unique_ptr<Attack>> a = parse_attacks(spec);
  REQUIRE(a.size() == 1);
  AttackContext ctx{*p.model, DType::f32, eps, seed};
  return a[0]->run(ctx, p.x, p.y, Tensor::full({p.x.dim(0)}, 1.0, DType::f32));
}

// Broken examples: misclassified at x + delta, delta within the ball and the box; zeros where robust.
void check_valid(const LinearProblem& p, const AttackResult& r, double eps) {
  const int64_t n = p.x.dim(0), d = p.x.numel() / n;
  Tensor xa = backend::add(p.x, r.delta);
  Tensor correct = correct_mask(*p.model, xa, p.y, DType::f32);
  for (int64_t e = 0; e < n; ++e) {
    double worst = 0, largest = 0;
    for (int64_t i = 0; i < d; ++i) {
      double v = r.delta.at(e * d + i), x = p.x.at(e * d + i);
      worst = std::max({worst, std::fabs(v) - eps, -(x + v), x + v - 1});
      largest = std::max(largest, std::fabs(v));
    }
    INFO("example ", e);
    CHECK(worst <= 1e-6);
    if (r.robust.at(e) == 0)
      CHECK(correct.at(e) == 0);
    else
      CHECK(largest == 0.0);  // robust rows carry no perturbation
  }
}

TEST_CASE("every attack of the suite breaks exactly the linear classifier's examples within reach") {
  LinearProblem p = linear_problem(40, 4, 21);
  const double eps = median(p.distance);  // about half the examples are within reach
  for (const char* spec : {"apgd-ce", "apgd-t", "fab-t", "square:1000", "autoattack"}) {
    INFO(spec);
    AttackResult r = run_attack(p, spec, eps, 5);
    check_valid(p, r, eps);
    int broken = 0, missed = 0;
    for (size_t e = 0; e < p.distance.size(); ++e) {
      if (p.distance[e] > eps) CHECK(r.robust.at(e) == 1);  // nothing misclassifies these within eps
      if (p.distance[e] < eps / 1.05 && r.robust.at(e) != 0) ++missed;
      broken += r.robust.at(e) == 0;
    }
    MESSAGE(std::string(spec), ": ", broken, " of ", p.distance.size(), " broken at the median distance");
    CHECK(missed == 0);
  }
}

TEST_CASE("APGD-CE steps to the l_inf-optimal perturbation eps sign(w_t - w_y) of a two-class linear classifier") {
  LinearProblem p = linear_problem(40, 2, 22);
  const double eps = 0.9 * *std::max_element(p.distance.begin(), p.distance.end());
  AttackResult r = run_attack(p, "apgd-ce", eps, 6);
  const int64_t d = 48;
  int checked = 0;
  for (size_t e = 0; e < p.distance.size(); ++e) {
    // The random start cannot reach these; the first step (2 eps sign of the gradient, projected) reaches the
    // vertex, which breaks them.
    if (p.distance[e] < 0.6 * eps || p.distance[e] > 0.95 * eps) continue;
    INFO("example ", e);
    REQUIRE(r.robust.at(e) == 0);
    int64_t y = p.y.at(e), t = 1 - y;
    for (int64_t i = 0; i < d; ++i) {
      double w = p.model->weight(t, i) - p.model->weight(y, i);
      if (w != 0) CHECK(r.delta.at(e * d + i) == doctest::Approx(w > 0 ? eps : -eps).epsilon(1e-5));
    }
    ++checked;
  }
  CHECK(checked >= 5);
}

TEST_CASE("FAB-T finds the minimal l_inf perturbation of a two-class linear classifier") {
  LinearProblem p = linear_problem(30, 2, 23);
  // With eps beyond every distance FAB reports its smallest adversarial perturbation for every example.
  AttackResult r = run_attack(p, "fab-t", 1.0, 7);
  check_valid(p, r, 1.0);
  const int64_t d = 48;
  double worst_ratio = 0;
  for (size_t e = 0; e < p.distance.size(); ++e) {
    INFO("example ", e, ", minimal norm ", p.distance[e]);
    REQUIRE(r.robust.at(e) == 0);
    double norm = 0;
    for (int64_t i = 0; i < d; ++i) norm = std::max(norm, std::fabs(r.delta.at(e * d + i)));
    CHECK(norm >= p.distance[e] * (1 - 1e-5));  // nothing smaller exists
    worst_ratio = std::max(worst_ratio, norm / p.distance[e]);
  }
  MESSAGE("FAB-T norm / minimal norm: at most ", worst_ratio);
  CHECK(worst_ratio < 1.01);
  // Just above its minimal norm an example breaks; below it, never.
  const double eps = median(p.distance);
  AttackResult at = run_attack(p, "fab-t", eps, 7);
  for (size_t e = 0; e < p.distance.size(); ++e) {
    if (p.distance[e] < eps / 1.01) CHECK(at.robust.at(e) == 0);
    if (p.distance[e] > eps) CHECK(at.robust.at(e) == 1);
  }
}

// The l_inf projection of t onto {z : <w, z> = b} within [0, 1]^n by walking the coordinates in the order of their
// room (the reference's sort), in f64; the box corner when the hyperplane is out of reach.
std::vector<double> project_by_sorting(const std::vector<double>& t, const std::vector<double>& w, double b) {
  const size_t n = t.size();
  double c = -b;
  for (size_t i = 0; i < n; ++i) c += w[i] * t[i];
  double side = c >= 0 ? 1 : -1, need = std::fabs(c);
  std::vector<double> room(n), dir(n);
  for (size_t i = 0; i < n; ++i) {
    bool up = side * w[i] < 0;
    room[i] = up ? 1 - t[i] : t[i];
    dir[i] = w[i] == 0 ? 0 : (up ? 1 : -1);
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b2) { return room[a] < room[b2]; });
  double saturated = 0, slope = 0, lambda = INFINITY;
  for (size_t i = 0; i < n; ++i) slope += std::fabs(w[i]);
  for (size_t j : order) {
    if (w[j] == 0) continue;
    if (saturated + slope * room[j] >= need) {
      lambda = (need - saturated) / slope;
      break;
    }
    saturated += std::fabs(w[j]) * room[j];
    slope -= std::fabs(w[j]);
  }
  std::vector<double> d(n);
  for (size_t i = 0; i < n; ++i) d[i] = dir[i] * std::min(lambda, room[i]);
  return d;
}

TEST_CASE("FAB's step equals the step built from a sort-based l_inf projection onto the hyperplane and box") {
  Generator gen = seeded(31);
  const int64_t n = 8, d = 48;
  Tensor x0 = gen.uniform({n, 4, 4, 3}, 0, 1, DType::f64, Layout::nhwc);
  Tensor w = gen.normal({n, 4, 4, 3}, 0, 1, DType::f64, Layout::nhwc);
  Tensor delta = gen.uniform({n, 4, 4, 3}, -0.1, 0.1, DType::f64, Layout::nhwc);
  for (int64_t i = 0; i < x0.numel(); i += 7) x0.set(i, i % 2 ? 1.0 : 0.0);  // points on the box's faces
  for (int64_t i = 3; i < w.numel(); i += 11) w.set(i, 0.0);                 // coordinates the plane ignores
  for (int64_t i = 0; i < delta.numel(); ++i) {
    double v = std::min(1.0, std::max(0.0, x0.at(i) + delta.at(i)));
    delta.set(i, v - x0.at(i));
  }
  for (int64_t i = 0; i < d; ++i) delta.set(i, 0.0);  // example 0 starts at x0: both projections coincide
  // f: reachable both ways, zero, and beyond the box's reach (the corner) for the last example.
  Tensor f = Tensor::from_vector({0.3, -0.2, 0.0, 1.5, -2.0, 0.05, -0.7, 400.0}, {n}, DType::f64);
  Tensor stepped = delta.clone();
  robust::fab_step(stepped, x0, w, f, 1.05, 0.1);
  for (int64_t e = 0; e < n; ++e) {
    std::vector<double> x1(d), xo(d), we(d);
    double wx1 = 0;
    for (int64_t i = 0; i < d; ++i) {
      xo[i] = x0.at(e * d + i);
      x1[i] = xo[i] + delta.at(e * d + i);
      we[i] = w.at(e * d + i);
      wx1 += we[i] * x1[i];
    }
    double b = wx1 - f.at(e);
    std::vector<double> d1 = project_by_sorting(x1, we, b), d2 = project_by_sorting(xo, we, b);
    double a1 = 1e-8, a2 = 1e-8;
    for (int64_t i = 0; i < d; ++i) a1 = std::max(a1, std::fabs(d1[i])), a2 = std::max(a2, std::fabs(d2[i]));
    double alpha = std::min(std::max(a1 / (a1 + a2), 0.0), 0.1);
    double worst = 0;
    for (int64_t i = 0; i < d; ++i) {
      double v = (x1[i] + 1.05 * d1[i]) * (1 - alpha) + (xo[i] + 1.05 * d2[i]) * alpha;
      v = std::min(1.0, std::max(0.0, v));
      worst = std::max(worst, std::fabs(stepped.at(e * d + i) - (v - xo[i])));
    }
    INFO("example ", e, ", f ", f.at(e));
    CHECK(worst < 1e-12);
  }
}

TEST_CASE("Square's queries lower the margin of a linear classifier within the ball and the box") {
  LinearProblem p = linear_problem(16, 4, 24);
  // Below every distance: nothing breaks, the margin only shrinks.
  const double eps = 0.5 * *std::min_element(p.distance.begin(), p.distance.end());
  const int64_t n = p.x.dim(0);
  std::vector<int32_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  Tensor ids = Tensor::from_labels(all);
  auto logits = [&](const Tensor& delta) { return eval_logits(*p.model, backend::add(p.x, delta), DType::f32); };
  Tensor margin = Tensor::full({n}, INFINITY, DType::f32), robust = Tensor::full({n}, 1.0, DType::f32);
  Tensor best = robust::square_start(p.x, ids, n, eps, 3, 0);
  robust::square_accept(logits(best), p.y, margin, robust);
  Tensor clean = margin_loss(logits(backend::full_like(p.x, 0.0)), p.y);
  Tensor start = margin.clone();
  for (int q = 0; q < 300; ++q) {
    int64_t side = square_math::side(square_math::fraction(q, 0.8), 4, 4);
    Tensor candidate = robust::square_proposal(best, p.x, ids, n, q, side, eps, 3, 0);
    Tensor accepted = robust::square_accept(logits(candidate), p.y, margin, robust);
    best = robust::select_rows(best, candidate, accepted);
    for (int64_t i = 0; i < best.numel(); ++i) {
      double v = best.at(i);
      // Every coordinate sits on a face of the ball (up to the rounding of x + delta - x in f32).
      REQUIRE(std::fabs(std::fabs(v) - eps) <= 1e-6);
    }
  }
  Tensor final_margin = margin_loss(logits(best), p.y);
  double lowered = 0, possible = 0;
  for (int64_t e = 0; e < n; ++e) {
    INFO("example ", e);
    CHECK(final_margin.at(e) == doctest::Approx(margin.at(e)).epsilon(1e-5));  // the kept margin is the best's
    CHECK(margin.at(e) <= start.at(e));
    CHECK(robust.at(e) == 1);
    lowered += (clean.at(e) - margin.at(e)) / double(n);
    // No perturbation in the ball lowers the margin by more than eps max_t ||w_y - w_t||_1.
    int64_t y = p.y.at(e);
    double most = 0;
    for (int64_t t = 0; t < 4; ++t) {
      double l1 = 0;
      for (int64_t i = 0; i < 48; ++i) l1 += std::fabs(p.model->weight(y, i) - p.model->weight(t, i));
      most = std::max(most, eps * l1);
    }
    possible += most / double(n);
  }
  // Random signs (the stripe start) lower it by nothing on average.
  MESSAGE("mean margin reduction after 300 queries: ", lowered, " of at most ", possible);
  CHECK(lowered > 0.4 * possible);
}

TEST_CASE("FAB-T and Square and autoattack repeat exactly and autoattack reports its four stages in order") {
  LinearProblem p = linear_problem(24, 4, 25);
  const double eps = median(p.distance);
  for (const char* spec : {"fab-t:20", "square:200", "autoattack"}) {
    INFO(spec);
    AttackResult a = run_attack(p, spec, eps, 9), b = run_attack(p, spec, eps, 9);
    CHECK(a.robust.to_vector() == b.robust.to_vector());
    CHECK(a.delta.to_vector() == b.delta.to_vector());
  }
  AttackResult r = run_attack(p, "autoattack", eps, 9);
  REQUIRE(r.stages.size() == 4);
  const char* labels[] = {"apgd-ce", "apgd-t", "fab-t", "square"};
  double before = double(p.x.dim(0));
  for (size_t k = 0; k < 4; ++k) {
    CHECK(r.stages[k].label == labels[k]);
    double left = 0;
    for (double v : r.stages[k].robust.to_vector()) left += v;
    CHECK(left <= before);  // each stage only attacks what the earlier ones left
    before = left;
  }
  CHECK(r.stages.back().robust.to_vector() == r.robust.to_vector());
}

TEST_CASE("attack lists: autoattack and the new attacks parse and bad arguments are one-line errors") {
  CHECK(parse_attacks("autoattack,pgd-ce:5x1").size() == 2);
  CHECK(parse_attacks("fab-t:10,square:100").size() == 2);
  CHECK_THROWS_WITH_AS(parse_attacks("autoattack:5"), doctest::Contains("takes no numbers"), Error);
  CHECK_THROWS_WITH_AS(parse_attacks("square:100x2"), doctest::Contains("no restarts"), Error);
  CHECK_THROWS_WITH_AS(parse_attacks("fab-t:10x2"), doctest::Contains("no restarts"), Error);
}

TEST_CASE("APGD's checkpoints are the reference implementation's") {
  CHECK(robust::apgd_checkpoints(100) == std::vector<int>{22, 41, 57, 70, 80, 87, 93, 99});
  CHECK(robust::apgd_checkpoints(20) == std::vector<int>{4, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20});
}

TEST_CASE("Square's schedule of square sizes is AutoAttack's for 32x32 images") {
  // p = 0.8 halved after queries 10, 50, 200, 500, 1000, 2000, 4000: sides round(sqrt(1024 p)).
  std::vector<std::pair<int, int64_t>> expect = {{0, 29},    {10, 29},   {11, 20},   {50, 20},  {51, 14},
                                                 {201, 10},  {501, 7},   {1001, 5},  {2001, 4}, {4001, 3},
                                                 {4999, 3}};
  for (auto [query, side] : expect) {
    INFO("query ", query);
    CHECK(square_math::side(square_math::fraction(query, 0.8), 32, 32) == side);
  }
}

TEST_SUITE_END();

}  // namespace
}  // namespace llr::test
