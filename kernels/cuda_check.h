// Error checking for CUDA runtime calls and kernel launches: captures the expression, file and line and throws
// llr::Error (library code never exits).
#pragma once

#include <cuda_runtime.h>

#include "engine/error.h"

#define LLR_CUDA_CHECK(expr)                                                                            \
  do {                                                                                                  \
    cudaError_t llr_cuda_status_ = (expr);                                                              \
    if (llr_cuda_status_ != cudaSuccess)                                                                \
      ::llr::detail::throw_error(#expr, __FILE__, __LINE__,                                             \
                                 std::string("CUDA error: ") + cudaGetErrorString(llr_cuda_status_));   \
  } while (0)

// After every kernel launch.
#define LLR_CUDA_LAUNCH_CHECK() LLR_CUDA_CHECK(cudaGetLastError())
