// The per-element SGD update (PyTorch's rule), shared by the CPU loop and the CUDA kernel of sgd_update.
#pragma once

#include "engine/host_device.h"

namespace llr::sgd_math {

// g' = g + wd p; m = g' on the first step, else momentum m + g'; returns p - lr (nesterov ? g' + momentum m : m).
template <class S>
LLR_HD S update(S p, S g, S& m, S lr, S momentum, S wd, bool nesterov, bool first) {
  S gi = g + wd * p;
  m = first ? gi : momentum * m + gi;
  return p - lr * (nesterov ? gi + momentum * m : m);
}

}  // namespace llr::sgd_math
