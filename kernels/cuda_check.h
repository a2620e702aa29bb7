// Error checking for CUDA runtime, cuBLAS and cuDNN calls and kernel launches: each captures the expression, file and
// line and throws llr::Error (library code never exits).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <string>

#include "engine/error.h"

#define LLR_CUDA_CHECK(expr)                                                                            \
  do {                                                                                                  \
    cudaError_t llr_cuda_status_ = (expr);                                                              \
    if (llr_cuda_status_ != cudaSuccess)                                                                \
      ::llr::detail::throw_error(#expr, __FILE__, __LINE__,                                             \
                                 std::string("CUDA error: ") + cudaGetErrorString(llr_cuda_status_));   \
  } while (0)

#define LLR_CUBLAS_CHECK(expr)                                                                          \
  do {                                                                                                  \
    cublasStatus_t llr_cublas_status_ = (expr);                                                         \
    if (llr_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::llr::detail::throw_error(#expr, __FILE__, __LINE__,                                             \
                                 std::string("cuBLAS error: ") + cublasGetStatusString(llr_cublas_status_)); \
  } while (0)

#define LLR_CUDNN_CHECK(expr)                                                                           \
  do {                                                                                                  \
    cudnnStatus_t llr_cudnn_status_ = (expr);                                                           \
    if (llr_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                                      \
      ::llr::detail::throw_error(#expr, __FILE__, __LINE__,                                             \
                                 std::string("cuDNN error: ") + cudnnGetErrorString(llr_cudnn_status_)); \
  } while (0)

// After every kernel launch.
#define LLR_CUDA_LAUNCH_CHECK() LLR_CUDA_CHECK(cudaGetLastError())
