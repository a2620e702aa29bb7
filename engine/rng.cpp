#include "engine/rng.h"

#include <cmath>

namespace llr {

namespace {
double normal_at(uint64_t seed, uint64_t index) {
  // Box-Muller on two uniforms of the stream; 1 - u keeps the logarithm finite.
  double u1 = 1.0 - rng_math::uniform01(seed, 2 * index);
  double u2 = rng_math::uniform01(seed, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}
}  // namespace

Tensor Generator::uniform(const Shape& shape, double lo, double hi, DType dtype, Layout layout) {
  LLR_CHECK(hi >= lo, "uniform: empty range [", lo, ", ", hi, ")");
  Tensor t = Tensor::empty(shape, dtype, layout);
  uint64_t base = take(static_cast<uint64_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, lo + (hi - lo) * rng_math::uniform01(seed_, base + i));
  return t;
}

Tensor Generator::normal(const Shape& shape, double mean, double stddev, DType dtype, Layout layout) {
  Tensor t = Tensor::empty(shape, dtype, layout);
  uint64_t base = take(static_cast<uint64_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, mean + stddev * normal_at(seed_ ^ 0x5DEECE66Dull, base + i));
  return t;
}

Tensor Generator::randint(const Shape& shape, int32_t lo, int32_t hi) {
  LLR_CHECK(hi > lo, "randint: empty range [", lo, ", ", hi, ")");
  Tensor t = Tensor::empty(shape, DType::i32);
  uint64_t base = take(static_cast<uint64_t>(t.numel()));
  uint64_t span = static_cast<uint64_t>(hi - lo);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<int32_t>()[i] = lo + static_cast<int32_t>(rng_math::bits(seed_, base + i) % span);
  return t;
}

double Generator::next_uniform() { return rng_math::uniform01(seed_, take(1)); }

int64_t Generator::next_int(int64_t n) {
  LLR_CHECK(n > 0, "next_int: n must be positive");
  return static_cast<int64_t>(rng_math::bits(seed_, take(1)) % static_cast<uint64_t>(n));
}

double Generator::next_normal() { return normal_at(seed_ ^ 0x5DEECE66Dull, take(1)); }

}  // namespace llr
