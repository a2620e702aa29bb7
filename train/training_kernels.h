// The training loop's kernels (training_kernels.def): one implementation per device, cpu_training_kernels.cpp for the
// CPU and kernels/training.cu for CUDA (registered by llr::cuda::init()). Call sites write
// training::sgd_update(...); the picking tensor's device chooses the implementation after the checks.
#pragma once

#include "engine/dispatch.h"
#include "engine/profile.h"
#include "engine/tensor.h"

namespace llr {

class TrainingKernels {
 public:
  virtual ~TrainingKernels() = default;
#define LLR_KERNEL LLR_DECLARE_PURE
#include "train/training_kernels.def"
#undef LLR_KERNEL
};

TrainingKernels& training_kernels_for(Device device);

namespace training_check {
#define LLR_KERNEL LLR_DECLARE_CHECK
#include "train/training_kernels.def"
#undef LLR_KERNEL
}  // namespace training_check

namespace training {
#define LLR_KERNEL(ret, name, params, args, dev)                          \
  inline ret name params {                                                \
    ::llr::profile::Scope llr_op_scope_(#name, ::llr::profile::Kind::op, dev.device()); \
    ::llr::dispatch::check_devices(#name, dev.device(), LLR_UNPACK args); \
    ::llr::training_check::name args;                                     \
    return ::llr::dispatch::measured<ret>(                                \
        llr_op_scope_, [&]() -> ret { return ::llr::training_kernels_for(dev.device()).name args; }, LLR_UNPACK args); \
  }
#include "train/training_kernels.def"
#undef LLR_KERNEL
}  // namespace training

}  // namespace llr
