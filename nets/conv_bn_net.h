// A small two-layer conv-BN-activation network (conv 3x3 -> batch norm -> act -> conv 3x3 stride 2 -> batch norm ->
// act -> global average pool -> linear), for gradient checks and `llrtrain selfcheck`.
#pragma once

#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"

namespace llr::nets {

struct ConvBnNet {
  Act act = Act::softplus;
  Tensor w1, g1, b1, w2, g2, b2, fc_w, fc_b;
  double eps = 1e-5;

  // He-initialised parameters for `in_channels` inputs, `width` channels, `classes` outputs.
  static ConvBnNet create(Generator& gen, int64_t in_channels, int64_t width, int64_t classes, DType dtype,
                          Act act);
  std::vector<Tensor> parameters() const { return {w1, g1, b1, w2, g2, b2, fc_w, fc_b}; }

  // Logits for NHWC input x in training mode (batch statistics, differentiated through).
  Tensor forward(const Tensor& x) const;
};

}  // namespace llr::nets
