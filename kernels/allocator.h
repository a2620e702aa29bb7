// Caching device allocator over cudaMalloc: requests are rounded up to size classes and freed blocks go to per-class
// free lists for reuse (all work runs on one stream, so a freed block is safe to hand out again; the lists are
// engine/block_cache.h, with its pools for CUDA graphs). Counts bytes in use, bytes held (in use + cached) and the
// peak in use. Out of memory: frees the cache, retries once, then throws with
// the request and what is held. Any other cudaMalloc failure is thrown as what it is, with its CUDA error name.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <mutex>
#include <string>

#include "engine/block_cache.h"
#include "engine/tensor.h"

namespace llr::cuda {

struct AllocatorStats {
  size_t bytes_in_use = 0;    // held by tensors (and cuBLAS's workspace: count_library_memory)
  size_t bytes_cached = 0;    // free for any request
  size_t bytes_reserved = 0;  // free but kept for a recording's replays (engine/block_cache.h)
  // The peak of bytes in use and reserved: a recording's working set counts while it lives, though its replays
  // allocate nothing.
  size_t peak_bytes_in_use = 0;
  size_t cuda_malloc_calls = 0;
  size_t reuses = 0;
};

class CachingAllocator final : public DeviceAllocator {
 public:
  ~CachingAllocator() override;
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  size_t peak_bytes_in_use() const override { return stats().peak_bytes_in_use; }

  static size_t size_class(size_t bytes);  // the rounded size a request is served with
  AllocatorStats stats() const;
  void reset_peak() override;
  size_t bytes_available() const override;
  void release_cache();  // cudaFree every cached block (pools keep theirs)
  // A graph recording's pool (engine/block_cache.h): open it before the capture, close it after, release it once the
  // graph is destroyed (its last replay was queued before anything allocated afterwards can run).
  int open_pool();
  void close_pool(int id);
  void release_pool(int id);
  size_t live_pools() const;
  // Device memory a library holds for the process outside this allocator (cuBLAS's workspace): counted in bytes in
  // use and in every peak from now on, so the peaks compare with a framework whose allocator serves that workspace.
  void count_library_memory(size_t bytes) { count_in_use(bytes); }
  // Fill every new allocation with 0xFF bytes (NaN for f32/bf16), so a kernel that leaves an element unwritten
  // fails the CUDA-vs-CPU tests.
  void set_poison(bool on) { poison_ = on; }
  bool poison() const { return poison_; }

 private:
  void count_in_use(size_t bytes);  // bytes in use and the peak grow by `bytes`

  mutable std::mutex mutex_;
  BlockCache cache_;
  AllocatorStats stats_;
  bool poison_ = false;
};

CachingAllocator& allocator();

// The error a failed cudaMalloc of `bytes` is thrown with: out of memory (cudaErrorMemoryAllocation, with what the
// allocator holds), or any other status named as such, since it means an earlier fault rather than a full GPU.
std::string malloc_failure_message(cudaError_t status, size_t bytes, const AllocatorStats& held);

}  // namespace llr::cuda
