// Seeded, counter-based random numbers: element i of a draw is a pure function of (seed, counter + i), so a CUDA
// kernel can produce the same stream as the CPU loop, and a run is reproduced by its printed seed.
#pragma once

#include <cstdint>

#include "engine/host_device.h"
#include "engine/tensor.h"

namespace llr {

namespace rng_math {
LLR_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
LLR_HD uint64_t bits(uint64_t seed, uint64_t index) { return mix64(mix64(seed) ^ (index * 0xD1B54A32D192ED03ull)); }
// Uniform in [0, 1) with 53 random bits.
LLR_HD double uniform01(uint64_t seed, uint64_t index) {
  return static_cast<double>(bits(seed, index) >> 11) * (1.0 / 9007199254740992.0);
}
}  // namespace rng_math

class Generator {
 public:
  explicit Generator(uint64_t seed) : seed_(seed) {}
  uint64_t seed() const { return seed_; }

  Tensor uniform(const Shape& shape, double lo, double hi, DType dtype = DType::f32, Layout layout = Layout::plain);
  Tensor normal(const Shape& shape, double mean, double stddev, DType dtype = DType::f32,
                Layout layout = Layout::plain);
  Tensor randint(const Shape& shape, int32_t lo, int32_t hi);  // i32 in [lo, hi)

  double next_uniform();             // [0, 1)
  int64_t next_int(int64_t n);       // [0, n)
  double next_normal();

 private:
  uint64_t take(uint64_t n) {
    uint64_t c = counter_;
    counter_ += n;
    return c;
  }
  uint64_t seed_;
  uint64_t counter_ = 0;
};

}  // namespace llr
