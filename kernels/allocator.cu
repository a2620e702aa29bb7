#include <sstream>

#include "kernels/allocator.h"
#include "kernels/context.h"
#include "kernels/cuda_check.h"
#include "engine/graph.h"

namespace llr::cuda {

namespace {
std::string mib(size_t bytes) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << static_cast<double>(bytes) / (1024.0 * 1024.0) << " MiB";
  return os.str();
}
}  // namespace

std::string malloc_failure_message(cudaError_t status, size_t bytes, const AllocatorStats& held) {
  std::ostringstream os;
  if (status == cudaErrorMemoryAllocation) {
    os << "CUDA out of memory: asked for " << mib(bytes) << " (" << bytes << " bytes) with " << mib(held.bytes_in_use)
       << " in use by tensors, " << mib(held.bytes_reserved) << " reserved for recorded steps (--cuda-graphs) and "
       << mib(held.bytes_cached) << " cached, after freeing the cache and retrying";
  } else {
    // Anything else is not about memory: usually a sticky error that an earlier kernel left (an illegal address, a
    // launch failure), which cudaMalloc is merely the first call to report. Every later CUDA call fails the same way.
    os << "cudaMalloc of " << mib(bytes) << " (" << bytes << " bytes) failed with " << cudaGetErrorName(status)
       << " (" << cudaGetErrorString(status) << "), not an out-of-memory: an earlier kernel or CUDA call probably "
       << "failed, and the CUDA context may be corrupted (rerun under compute-sanitizer to find the first fault)";
  }
  return os.str();
}

CachingAllocator& allocator() {
  static CachingAllocator* instance = new CachingAllocator();  // never destroyed: tensors may outlive main's scope
  return *instance;
}

CachingAllocator::~CachingAllocator() { release_cache(); }

size_t CachingAllocator::size_class(size_t bytes) {
  if (bytes == 0) return 256;
  // Small: multiples of 512 bytes. Large (>= 1 MiB): multiples of 2 MiB, so blocks of similar tensors are shared.
  const size_t small = 512, large = size_t(2) << 20;
  if (bytes < (size_t(1) << 20)) return (bytes + small - 1) / small * small;
  return (bytes + large - 1) / large * large;
}

namespace {
// cudaMalloc while this thread captures a graph: allowed for the capture's pool (the block outlives every replay),
// which the capture's default mode would refuse as unsafe.
cudaError_t device_malloc(void** ptr, size_t bytes) {
  if (!graph::recording()) return cudaMalloc(ptr, bytes);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&mode);
  cudaError_t status = cudaMalloc(ptr, bytes);
  cudaThreadExchangeStreamCaptureMode(&mode);
  return status;
}
}  // namespace

void* CachingAllocator::allocate(size_t bytes) {
  size_t cls = size_class(bytes);
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ptr = cache_.take(cls);
    if (ptr) ++stats_.reuses;
  }
  if (!ptr) {
    cudaError_t status = device_malloc(&ptr, cls);
    if (status == cudaErrorMemoryAllocation && !graph::recording()) {
      cudaGetLastError();  // not sticky: clear it so the next launch check does not report it
      release_cache();
      status = device_malloc(&ptr, cls);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();  // clears a non-sticky error; a sticky one stays, and the message says so
      LLR_FAIL(malloc_failure_message(status, bytes, stats()));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    cache_.adopt(ptr);
    ++stats_.cuda_malloc_calls;
  }
  count_in_use(cls);
  if (poison_) {
    cudaError_t status = cudaMemsetAsync(ptr, 0xFF, cls, context().stream());
    if (status != cudaSuccess) {
      deallocate(ptr, bytes);  // nobody holds it yet: back to the cache before the error is reported
      LLR_CUDA_CHECK(status);
    }
  }
  return ptr;
}

void CachingAllocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  size_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  cache_.give_back(ptr, cls);
  stats_.bytes_in_use -= cls;
}

int CachingAllocator::open_pool() {
  std::lock_guard<std::mutex> lock(mutex_);
  return cache_.open_pool();
}

void CachingAllocator::close_pool(int id) {
  std::lock_guard<std::mutex> lock(mutex_);
  cache_.close_pool(id);
}

void CachingAllocator::release_pool(int id) {
  std::lock_guard<std::mutex> lock(mutex_);
  cache_.release_pool(id);
}

size_t CachingAllocator::live_pools() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cache_.live_pools();
}

void CachingAllocator::count_in_use(size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.bytes_in_use += bytes;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use + cache_.reserved_bytes());
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  AllocatorStats s = stats_;
  s.bytes_cached = cache_.shared_bytes();
  s.bytes_reserved = cache_.reserved_bytes();
  return s;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use + cache_.reserved_bytes();
}

size_t CachingAllocator::bytes_available() const {
  size_t free = 0, total = 0;
  LLR_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free + stats().bytes_cached;
}

void CachingAllocator::release_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  cudaStreamSynchronize(context_stream_or_null());
  for (auto& [cls, list] : cache_.drain()) {
    for (void* p : list) cudaFree(p);
  }
}

}  // namespace llr::cuda
