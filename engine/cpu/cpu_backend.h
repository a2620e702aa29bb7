// The CPU backend: Eigen for the matrix work, plain loops over the shared per-element math for the rest. Its
// functions (engine/backend_functions.def) are defined in the files of this folder; the dispatch has checked their
// arguments before they run.
#pragma once

#include "engine/backend.h"

namespace llr {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void synchronize() override {}
#define LLR_KERNEL LLR_DECLARE_OVERRIDE
#include "engine/backend_functions.def"
#undef LLR_KERNEL
};

}  // namespace llr
