// The CPU backend: Eigen for the matrix work, plain loops over the shared per-element math for the rest.
// Its methods are defined in elementwise.cpp, conv.cpp, batchnorm.cpp and loss.cpp beside this file.
#pragma once

#include "engine/backend.h"

namespace llr {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
#include "engine/backend_overrides.inc"
};

}  // namespace llr
