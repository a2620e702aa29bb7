// The GPU side of engine/profile.h: a clock of CUDA events recorded on the context's stream (for `llrtrain bench
// --profile`), and an observer that opens an NVTX range for every kernel call and phase (for Nsight; compiled only
// with LLR_NVTX).
#include <memory>
#include <vector>

#include "engine/profile.h"
#include "kernels/context.h"
#include "kernels/cuda_check.h"

#if defined(LLR_NVTX)
#include <nvtx3/nvToolsExt.h>
#endif

namespace llr::cuda {

namespace {

class EventClock final : public profile::Clock {
 public:
  ~EventClock() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  int stamp() override {
    if (used_ == events_.size()) {
      cudaEvent_t e;
      LLR_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    LLR_CUDA_CHECK(cudaEventRecord(events_[used_], context().stream()));
    return static_cast<int>(used_++);
  }
  double elapsed_ms(int from, int to) override {
    LLR_CUDA_CHECK(cudaEventSynchronize(events_.at(to)));
    float ms = 0;
    LLR_CUDA_CHECK(cudaEventElapsedTime(&ms, events_.at(from), events_.at(to)));
    return ms;
  }
  void reset() override { used_ = 0; }  // the events are kept for the next steps

 private:
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
};

std::unique_ptr<profile::Clock> make_event_clock() { return std::make_unique<EventClock>(); }

#if defined(LLR_NVTX)
class NvtxObserver final : public profile::Observer {
 public:
  void begin(const char* name, profile::Kind, Device device) override {
    if (device == Device::cuda) nvtxRangePushA(name);
  }
  void end(const char*, profile::Kind, Device device, double) override {
    if (device == Device::cuda) nvtxRangePop();
  }
};
#endif

}  // namespace

void register_profiling() {
  profile::register_clock(Device::cuda, make_event_clock);
#if defined(LLR_NVTX)
  static NvtxObserver nvtx;
  profile::add_observer(&nvtx);
#endif
}

}  // namespace llr::cuda
