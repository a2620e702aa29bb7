// The CUDA backend: cuDNN convolutions, cuBLAS matrix products and the kernels of this folder, in f32, bf16 (bf16
// storage, f32 accumulation; per-channel and per-example values in f32) and f64. Methods are defined in
// elementwise.cu, conv.cu, batchnorm.cu and loss.cu.
#pragma once

#include "engine/backend.h"

namespace llr::cuda {

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }
#include "engine/backend_overrides.inc"
};

}  // namespace llr::cuda
