// The CUDA context of the process: one stream that all work runs on, and the cuBLAS and cuDNN handles bound to it.
// llr::cuda::init() registers the CUDA backend, the caching allocator and the device copier with the engine.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

namespace llr::cuda {

class Context {
 public:
  Context();
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cudnnHandle_t cudnn() const { return cudnn_; }
  int sm_count() const { return sm_count_; }

  // TF32 tensor cores for f32 convolutions and matrix products (on by default; off gives full f32 FMA math).
  bool tf32() const { return tf32_; }
  void set_tf32(bool on) { tf32_ = on; }

  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  void* cublas_workspace_ = nullptr;
  size_t cublas_workspace_bytes_ = 0;
  int sm_count_ = 0;
  bool tf32_ = true;
};

Context& context();                      // created on first use; throws when there is no device
cudaStream_t context_stream_or_null();   // the stream if the context exists, without creating it

// Registers the CUDA backend with the engine (Device::cuda tensors, ops and copies). Throws when no GPU is usable.
void init();
bool available();  // a usable device exists

}  // namespace llr::cuda
