// LLR_HD marks the per-element math shared by CUDA kernels and CPU loops, so the CPU tests exercise the same
// arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define LLR_HD __host__ __device__ __forceinline__
#else
#define LLR_HD inline
#endif
