// Every op against finite differences in f64 (tests/op_cases.cpp lists them): its vjp, its jvp, and the vjp of its
// jvp map (reverse-over-forward). Tangent ops are checked through their vjp. Tolerance: 1e-6 relative error against
// max(|a|, |b|, 1). Each case prints its worst error.
#include <cstdio>

#include "engine/gradcheck.h"
#include "tests/op_cases.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

constexpr double kTolerance = 1e-6;
constexpr uint64_t kSeed = 20261125;

enum class Check { vjp, jvp, jvp_vjp };

void run_all(Check which) {
  const char* label = which == Check::vjp ? "vjp" : which == Check::jvp ? "jvp" : "vjp-of-jvp";
  int run = 0;
  for (const OpCase& c : op_cases()) {
    if (c.is_tangent_op && which != Check::vjp) continue;
    Generator gen(kSeed);
    std::vector<Tensor> inputs = c.make_inputs(gen);
    gradcheck::Options opt;
    opt.seed = kSeed;
    gradcheck::Report r = which == Check::vjp   ? gradcheck::check_vjp(c.fn, inputs, c.differentiable, opt)
                          : which == Check::jvp ? gradcheck::check_jvp(c.fn, inputs, c.differentiable, opt)
                                                : gradcheck::check_jvp_vjp(c.fn, inputs, c.differentiable, opt);
    std::printf("gradcheck %-10s %-42s max rel. error %.2e over %lld elements (%lld kinks skipped)\n", label,
                c.name.c_str(), r.max_rel_error, static_cast<long long>(r.checked),
                static_cast<long long>(r.skipped_kinks));
    INFO(std::string(label), " of ", c.name, " (seed ", kSeed, "): worst ", r.worst);
    CHECK(r.checked > 0);
    CHECK(r.skipped_kinks == 0);  // inputs are built away from kinks
    CHECK(r.max_rel_error < kTolerance);
    ++run;
  }
  CHECK(run >= 20);
}

TEST_CASE("every op's vjp matches finite differences in f64") { run_all(Check::vjp); }

TEST_CASE("every op's jvp matches finite differences in f64") { run_all(Check::jvp); }

TEST_CASE("the vjp of every op's jvp map matches finite differences in f64") { run_all(Check::jvp_vjp); }

TEST_CASE("tangent ops refuse a second-order tangent") {
  Generator gen(kSeed);
  Tensor a = gen.normal({2, 3}, 0, 1, DType::f64);
  Tensor adot = gen.normal({2, 3}, 0, 1, DType::f64);
  adot.set_tangent(gen.normal({2, 3}, 0, 1, DType::f64));
  CHECK_THROWS_WITH_AS(activation_tangent(Act::softplus, a, adot), doctest::Contains("second-order"), Error);
}

TEST_CASE("the checker catches a wrong gradient") {
  // A deliberately wrong vjp (factor 2 off) must fail the check, so a passing check means something.
  Generator gen(kSeed);
  Tensor x = gen.normal({3, 4}, 0, 1, DType::f64);
  gradcheck::Function wrong = [](const std::vector<Tensor>& in) {
    Tensor y = backend::scale(in[0], 3.0);
    std::vector<Tensor> outs{y};
    detail::finish_op(
        "wrong_scale", {in[0]}, outs,
        [](const std::vector<Tensor>& g, const std::vector<bool>&) {
          return std::vector<Tensor>{backend::scale(g[0], 6.0)};
        },
        [](const std::vector<Tensor>& t) { return std::vector<Tensor>{scale(t[0], 3.0)}; });
    return outs[0];
  };
  gradcheck::Report r = gradcheck::check_vjp(wrong, {x}, {true});
  CHECK(r.max_rel_error > 0.1);
  CHECK_FALSE(r.passed(kTolerance));
  Tape::current().clear();
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
