// The CUDA implementations of the three kernel interfaces, registered by llr::cuda::init(): the engine's backend
// (engine/backend_functions.def: cuDNN convolutions, cuBLAS matrix products and the kernels of elementwise.cu,
// batchnorm.cu, loss.cu, pooling.cu), the perturbation kernels (train/robust/robust_kernels.def: robust.cu) and the
// training loop's kernels (train/training_kernels.def: training.cu). f32, bf16 (bf16 storage, f32 accumulation;
// per-channel and per-example values in f32) and f64. Arguments are checked by the dispatch before these run.
#pragma once

#include "engine/backend.h"
#include "train/robust/robust_kernels.h"
#include "train/training_kernels.h"

namespace llr::cuda {

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }
  void synchronize() override;
#define LLR_KERNEL LLR_DECLARE_OVERRIDE
#include "engine/backend_functions.def"
#undef LLR_KERNEL
};

class CudaRobustKernels final : public RobustKernels {
 public:
#define LLR_KERNEL LLR_DECLARE_OVERRIDE
#include "train/robust/robust_kernels.def"
#undef LLR_KERNEL
};

class CudaTrainingKernels final : public TrainingKernels {
 public:
#define LLR_KERNEL LLR_DECLARE_OVERRIDE
#include "train/training_kernels.def"
#undef LLR_KERNEL
};

}  // namespace llr::cuda
