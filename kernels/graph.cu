// CUDA graphs for engine/graph.h: a body is captured on the context's stream (thread-local mode: another thread's
// unsafe call does not spoil it) with the allocator's pool open, so its temporaries keep their addresses for the
// replays; the pool is released when the graph is destroyed.
#include <string>

#include "engine/graph.h"
#include "kernels/allocator.h"
#include "kernels/context.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_check.h"

namespace llr::cuda {

namespace {

class CudaReplay final : public graph::Replay {
 public:
  CudaReplay(cudaGraph_t g, cudaGraphExec_t exec, int pool) : graph_(g), exec_(exec), pool_(pool) {}
  ~CudaReplay() override {
    // An executable graph still running is freed when it finishes; work queued after this on the stream runs after
    // the last replay, so the pool's blocks can be handed out again at once.
    cudaGraphExecDestroy(exec_);
    cudaGraphDestroy(graph_);
    allocator().release_pool(pool_);
  }
  CudaReplay(const CudaReplay&) = delete;
  CudaReplay& operator=(const CudaReplay&) = delete;
  void launch() override { LLR_CUDA_CHECK(cudaGraphLaunch(exec_, context().stream())); }

 private:
  cudaGraph_t graph_;
  cudaGraphExec_t exec_;
  int pool_;
};

class CudaRecorder final : public graph::Recorder {
 public:
  std::unique_ptr<graph::Replay> record(const std::function<void()>& body) override {
    cudaStream_t s = context().stream();
    CachingAllocator& a = allocator();
    const int pool = a.open_pool();
    cudaGraph_t g = nullptr;
    cudaGraphExec_t exec = nullptr;
    auto abandon = [&] {
      // Ends a capture that failed (the body ran nothing) and clears the capture's own, non-sticky error. Nothing
      // here throws: the error being handled is the one reported.
      cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(s, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
        cudaGraph_t partial = nullptr;
        cudaStreamEndCapture(s, &partial);
        if (partial) cudaGraphDestroy(partial);
      }
      if (exec) cudaGraphExecDestroy(exec);
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      a.release_pool(pool);  // closes it too, if still open
    };
    try {
      LLR_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      body();
      LLR_CUDA_CHECK(cudaStreamEndCapture(s, &g));
      LLR_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
      auto replay = std::make_unique<CudaReplay>(g, exec, pool);
      g = nullptr;  // the replay owns them now
      exec = nullptr;
      a.close_pool(pool);
      return replay;
    } catch (...) {
      abandon();
      throw;
    }
  }
};

}  // namespace

void register_graphs() {
  static CudaRecorder recorder;
  graph::register_recorder(Device::cuda, &recorder);
}

}  // namespace llr::cuda
