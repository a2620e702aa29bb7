#include "engine/backend.h"
#include "kernels/allocator.h"
#include "kernels/context.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_check.h"
#include "kernels/device_info.h"

namespace llr::cuda {

void register_profiling();  // profile_cuda.cu
void register_graphs();     // graph.cu

namespace {
Context* the_context = nullptr;

class CudaCopier final : public DeviceCopier {
 public:
  void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) override {
    if (bytes == 0) return;
    cudaMemcpyKind kind = src_device == Device::cpu
                              ? (dst_device == Device::cpu ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice)
                              : (dst_device == Device::cpu ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice);
    cudaStream_t s = context().stream();
    LLR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, s));
    // Host memory here is pageable and owned by the caller: finish before returning.
    if (kind != cudaMemcpyDeviceToDevice) LLR_CUDA_CHECK(cudaStreamSynchronize(s));
  }
};
}  // namespace

Context::Context() {
  int n = device_count();
  LLR_CHECK(n > 0, "no usable CUDA device: ", device_summary());
  LLR_CUDA_CHECK(cudaSetDevice(0));
  LLR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  LLR_CUBLAS_CHECK(cublasCreate(&cublas_));
  LLR_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  // A workspace of our own (cuBLAS's recommendation: 32 MiB on Hopper, 4 MiB before), so a product recorded in a CUDA
  // graph never allocates inside the recording. cublasSetStream resets it: set after.
  int major = 0;
  LLR_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  cublas_workspace_bytes_ = size_t(major >= 9 ? 32 : 4) << 20;
  LLR_CUDA_CHECK(cudaMalloc(&cublas_workspace_, cublas_workspace_bytes_));
  allocator().count_library_memory(cublas_workspace_bytes_);  // as PyTorch's peaks count theirs
  LLR_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, cublas_workspace_bytes_));
  LLR_CUDNN_CHECK(cudnnCreate(&cudnn_));
  LLR_CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
  LLR_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, 0));
}

Context::~Context() {
  if (cudnn_) cudnnDestroy(cudnn_);
  if (cublas_) cublasDestroy(cublas_);
  if (cublas_workspace_) cudaFree(cublas_workspace_);
  if (stream_) cudaStreamDestroy(stream_);
}

void Context::synchronize() const { LLR_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

Context& context() {
  if (!the_context) the_context = new Context();  // lives for the process: cached blocks and handles outlive main
  return *the_context;
}

cudaStream_t context_stream_or_null() { return the_context ? the_context->stream() : nullptr; }

bool available() { return device_count() > 0; }

void init() {
  static bool done = false;
  if (done) return;
  context();
  static CudaBackend backend;
  static CudaRobustKernels robust;
  static CudaTrainingKernels training;
  static CudaCopier copier;
  register_device_allocator(&allocator());
  register_backend(Device::cuda, &backend);
  dispatch::register_for_device<RobustKernels>(Device::cuda, &robust);
  dispatch::register_for_device<TrainingKernels>(Device::cuda, &training);
  register_device_copier(&copier);
  register_profiling();
  register_graphs();
  done = true;
}

}  // namespace llr::cuda
