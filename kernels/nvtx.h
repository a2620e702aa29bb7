// LLR_NVTX_RANGE("name"): an NVTX range for the enclosing scope, so Nsight Systems shows each op family and phase.
// Compiled away unless LLR_NVTX is defined (CMake option LLR_NVTX, on by default in CUDA builds).
#pragma once

#if defined(LLR_NVTX)
#include <nvtx3/nvToolsExt.h>
namespace llr::cuda {
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
}  // namespace llr::cuda
#define LLR_NVTX_CONCAT_(a, b) a##b
#define LLR_NVTX_CONCAT(a, b) LLR_NVTX_CONCAT_(a, b)
#define LLR_NVTX_RANGE(name) ::llr::cuda::NvtxRange LLR_NVTX_CONCAT(llr_nvtx_range_, __LINE__)(name)
#else
#define LLR_NVTX_RANGE(name) \
  do {                       \
  } while (0)
#endif
