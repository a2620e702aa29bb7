// f32 forward of every op agrees with f64 on the same (f32-representable) inputs within f32 rounding.
#include <cstdio>

#include "tests/op_cases.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

TEST_CASE("f32 forward of every op agrees with f64 within f32 rounding") {
  const uint64_t seed = 77;
  for (const OpCase& c : op_cases()) {
    Generator gen(seed);
    std::vector<Tensor> in64 = c.make_inputs(gen);
    std::vector<Tensor> in32, in32_as64;
    for (const Tensor& t : in64) {
      if (t.dtype() == DType::f64) {
        in32.push_back(t.to(DType::f32));
        in32_as64.push_back(in32.back().to(DType::f64));  // the exact values the f32 run sees
      } else {
        in32.push_back(t);
        in32_as64.push_back(t);
      }
    }
    NoGradGuard no_grad;
    Tensor y32 = c.fn(in32);
    Tensor y64 = c.fn(in32_as64);
    REQUIRE(y32.dtype() == DType::f32);
    // Rounding of a sum of n terms grows with n; these ops sum at most a few hundred terms of size ~1.
    double scale = std::max(1.0, max_abs(y64));
    Comparison cmp = compare(y32, y64, 2e-6 * scale, 1e-5);
    std::printf("f32 vs f64 %-42s worst |err|/(atol+rtol|ref|) = %.3f\n", c.name.c_str(), cmp.max_violation);
    INFO(c.name, " (seed ", seed, "): worst ", cmp.worst);
    CHECK(cmp.max_violation <= 1.0);
  }
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
