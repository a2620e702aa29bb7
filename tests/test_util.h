// Helpers shared by the tests: seeded random tensors, elementwise comparisons that name the worst element, and an
// empty temporary folder per test process.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"

namespace llr::test {

// An empty folder named after the test and the process (created anew).
inline std::filesystem::path temp_dir(const std::string& name) {
  std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("llr_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// Every test seeds its generator with a fixed value; failures print it (rerun with the same binary and test name).
inline Generator seeded(uint64_t seed) {
  INFO("generator seed ", seed);
  return Generator(seed);
}

// Values bounded away from 0 (|v| in [0.1, 1.5]) so ReLU/abs kinks are never straddled by a finite difference.
inline Tensor away_from_zero(Generator& gen, const Shape& shape, DType dtype = DType::f64,
                             Layout layout = Layout::plain) {
  Tensor mag = gen.uniform(shape, 0.1, 1.5, dtype, layout);
  for (int64_t i = 0; i < mag.numel(); ++i)
    if (gen.next_uniform() < 0.5) mag.set(i, -mag.at(i));
  return mag;
}

struct Comparison {
  double max_violation = 0;  // max over elements of |a-b| / (atol + rtol |ref|); <= 1 passes
  std::string worst;
};

// |a - ref| <= atol + rtol |ref| elementwise.
inline Comparison compare(const Tensor& a, const Tensor& ref, double atol, double rtol) {
  REQUIRE(a.shape() == ref.shape());
  Comparison c;
  for (int64_t i = 0; i < a.numel(); ++i) {
    double x = a.at(i), r = ref.at(i);
    // Equal values match, equal infinities included (inf - inf is NaN); a NaN on either side never does.
    double v = x == r ? 0.0 : std::fabs(x - r) / (atol + rtol * std::fabs(r));
    if (std::isnan(v)) v = INFINITY;
    if (c.worst.empty() || v > c.max_violation) {
      c.max_violation = v;
      std::ostringstream os;
      os.precision(12);
      os << "element " << i << ": got " << x << ", reference " << r;
      c.worst = os.str();
    }
  }
  return c;
}

inline double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(t.at(i)));
  return m;
}

}  // namespace llr::test
