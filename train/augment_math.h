// Index math of the training augmentation (pad 4 with reflection, random 32x32 crop, random horizontal flip), shared
// by the CPU loop and the CUDA kernel so both produce the same batch for the same (seed, step).
#pragma once

#include <cstdint>

#include "engine/host_device.h"
#include "engine/rng.h"

namespace llr::augment {

constexpr int kPad = 4;

struct Params {
  int dy, dx;  // crop offset in the padded image, 0..2*kPad
  bool flip;
};

LLR_HD Params params(uint64_t seed, uint64_t step, int64_t example) {
  uint64_t b = rng_math::bits(rng_math::mix64(seed ^ 0xA5A5A5A5ull) ^ step, static_cast<uint64_t>(example));
  return {static_cast<int>(b % (2 * kPad + 1)), static_cast<int>((b >> 16) % (2 * kPad + 1)), ((b >> 32) & 1) != 0};
}

// Reflection of an index into [0, n) (numpy's 'reflect': -1 -> 1, n -> n - 2), for |overshoot| < n.
LLR_HD int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// Source pixel (row, col) of output pixel (y, x) of an h x w image.
LLR_HD void source(const Params& p, int y, int x, int h, int w, int* row, int* col) {
  int xs = p.flip ? (w - 1 - x) : x;
  *row = reflect(y + p.dy - kPad, h);
  *col = reflect(xs + p.dx - kPad, w);
}

}  // namespace llr::augment
