// Tensor basics: shapes, dtypes, layouts, storage sharing, conversions, and the seeded generator.
#include "engine/backend.h"
#include "engine/profile.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

TEST_CASE("tensor shape and dtype and layout and description") {
  Tensor t = Tensor::zeros({2, 4, 4, 3}, DType::f32, Layout::nhwc);
  CHECK(t.numel() == 96);
  CHECK(t.rank() == 4);
  CHECK(t.dim(-1) == 3);
  CHECK(t.dtype() == DType::f32);
  CHECK(t.layout() == Layout::nhwc);
  CHECK(t.device() == Device::cpu);
  CHECK(t.describe() == "f32[2,4,4,3] NHWC cpu");
  CHECK(reinterpret_cast<uintptr_t>(t.raw_data()) % 64 == 0);
  for (int64_t i = 0; i < t.numel(); ++i) CHECK(t.at(i) == 0.0);
}

TEST_CASE("from_vector and conversion and clone keep values and detach shares storage") {
  Tensor a = Tensor::from_vector({1.5, -2.25, 3.0, 4.125}, {2, 2}, DType::f64);
  Tensor b = a.to(DType::f32);
  CHECK(b.dtype() == DType::f32);
  CHECK(b.to_vector() == std::vector<double>{1.5, -2.25, 3.0, 4.125});
  Tensor c = a.clone();
  c.set(0, 9.0);
  CHECK(a.at(0) == 1.5);
  Tensor d = a.detach();
  d.set(1, 7.0);
  CHECK(a.at(1) == 7.0);
  CHECK(d.id() != a.id());
  Tensor r = a.reshaped({4});
  CHECK(r.shape() == Shape{4});
  CHECK(r.at(1) == 7.0);
}

TEST_CASE("labels are i32 and item() needs one element") {
  Tensor y = Tensor::from_labels({3, 1, 4});
  CHECK(y.dtype() == DType::i32);
  CHECK(y.to_vector() == std::vector<double>{3, 1, 4});
  CHECK(Tensor::scalar(2.5, DType::f64).item() == 2.5);
  CHECK_THROWS_AS(y.item(), Error);
}

TEST_CASE("seeded generator is reproducible and in range and has the right moments") {
  Generator g1(123), g2(123), g3(124);
  Tensor a = g1.uniform({10000}, -1.0, 2.0, DType::f64);
  Tensor b = g2.uniform({10000}, -1.0, 2.0, DType::f64);
  Tensor c = g3.uniform({10000}, -1.0, 2.0, DType::f64);
  CHECK(a.to_vector() == b.to_vector());
  CHECK(a.to_vector() != c.to_vector());
  double mean = 0;
  for (double v : a.to_vector()) {
    CHECK(v >= -1.0);
    CHECK(v < 2.0);
    mean += v / 10000.0;
  }
  CHECK(mean == doctest::Approx(0.5).epsilon(0.03));

  Tensor n = g1.normal({20000}, 1.0, 2.0, DType::f64);
  double m = 0, s2 = 0;
  for (double v : n.to_vector()) m += v / 20000.0;
  for (double v : n.to_vector()) s2 += (v - m) * (v - m) / 20000.0;
  CHECK(m == doctest::Approx(1.0).epsilon(0.05));
  CHECK(std::sqrt(s2) == doctest::Approx(2.0).epsilon(0.03));

  Tensor k = g1.randint({5000}, 3, 7);
  std::vector<int> counts(4, 0);
  for (double v : k.to_vector()) {
    REQUIRE(v >= 3);
    REQUIRE(v < 7);
    counts[static_cast<int>(v) - 3]++;
  }
  for (int cnt : counts) CHECK(cnt > 1000);
}

TEST_CASE("bf16 tensors exist but CPU ops refuse them with a clear message") {
  Tensor t = Tensor::empty({4}, DType::bf16);
  CHECK(t.dtype() == DType::bf16);
  CHECK_THROWS_WITH_AS(backend::scale(t, 2.0), doctest::Contains("bf16 is not supported on the CPU"), Error);
}

TEST_CASE("the memory ledger files each storage under the phase and kernel call that made it and keeps the peak") {
  memory::set_ledger(true);
  memory::reset_ledger_peak();
  const size_t base = memory::ledger_peak(Device::cpu).total;
  auto bytes_of = [](const memory::LedgerPeak& p, const std::string& phase, const std::string& op) {
    size_t n = 0;
    for (const memory::LedgerEntry& e : p.entries)
      if (e.phase == phase && e.op == op) n += e.bytes;
    return n;
  };
  {
    // Outside any phase; Tensor::full makes the storage before its fill kernel runs.
    Tensor a = Tensor::full({1000}, 1.0, DType::f32, Layout::plain, Device::cpu);
    LLR_PHASE("test phase", Device::cpu);
    Tensor b = backend::add(a, a);                                                   // 4,000 bytes under add
    {
      Tensor c = backend::mul(b, b);  // freed before the peak below
    }
    Tensor d = Tensor::empty({3000}, DType::f64, Layout::plain, Device::cpu);        // 24,000 bytes, no kernel
    memory::LedgerPeak p = memory::ledger_peak(Device::cpu);
    CHECK(p.total == base + 4000 + 4000 + 24000);
    CHECK(bytes_of(p, "-", "-") == 4000);
    CHECK(bytes_of(p, "test phase", "add") == 4000);
    CHECK(bytes_of(p, "test phase", "-") == 24000);
    CHECK(bytes_of(p, "test phase", "mul") == 0);
    CHECK(p.entries.front().bytes == 24000);  // largest first
  }
  // Freed: the peak stays until reset.
  CHECK(memory::ledger_peak(Device::cpu).total == base + 32000);
  memory::reset_ledger_peak();
  CHECK(memory::ledger_peak(Device::cpu).total == base);
  memory::set_ledger(false);
  Tensor e = Tensor::empty({5000}, DType::f64, Layout::plain, Device::cpu);  // the ledger is off: not counted
  CHECK(memory::ledger_peak(Device::cpu).total == base);
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
