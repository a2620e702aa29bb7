#include "engine/graph.h"

#include <atomic>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/profile.h"

namespace llr::graph {

namespace {
std::atomic<bool> graphs_on{false};
thread_local int recording_depth = 0;
thread_local uint64_t open_lasting = 0;
std::atomic<uint64_t> last_recording_id{0};
std::atomic<int64_t> n_recordings{0}, n_replays{0}, n_failures{0};
Recorder* cuda_recorder = nullptr;

struct RecordingScope {
  explicit RecordingScope(Span span) : prev_(open_lasting) {
    ++recording_depth;
    if (span == Span::lasting) open_lasting = ++last_recording_id;
  }
  ~RecordingScope() {
    --recording_depth;
    open_lasting = prev_;
  }
  uint64_t prev_;
};

using CpuCalls = std::vector<std::function<void()>>;
thread_local CpuCalls* cpu_calls = nullptr;  // the open CPU recording's calls
thread_local int cpu_call_depth = 0;

struct CpuRecordingScope {
  explicit CpuRecordingScope(CpuCalls* calls) : prev_(cpu_calls), prev_depth_(cpu_call_depth) {
    cpu_calls = calls;
    cpu_call_depth = 0;
  }
  ~CpuRecordingScope() {
    cpu_calls = prev_;
    cpu_call_depth = prev_depth_;
  }
  CpuCalls* prev_;
  int prev_depth_;
};

// The CPU's recording: the kept calls, made again in order.
class CpuReplay final : public Replay {
 public:
  explicit CpuReplay(CpuCalls calls) : calls_(std::move(calls)) {}
  void launch() override {
    for (auto& c : calls_) c();
  }
  bool ran_while_recording() const override { return true; }

 private:
  CpuCalls calls_;
};
}  // namespace

bool enabled() { return graphs_on.load(); }
void set_enabled(bool on) { graphs_on = on; }

bool recording() { return recording_depth > 0; }
uint64_t lasting_recording_id() { return open_lasting; }

void check_not_recording(const char* what) {
  LLR_CHECK(recording_depth == 0, what, " while device work is being recorded for replay: a recorded step must not "
            "read device values on the host or copy between host and device (run without --cuda-graphs)");
}

void register_recorder(Device device, Recorder* recorder) {
  LLR_CHECK(device == Device::cuda, "graph::register_recorder: only the CUDA backend records graphs");
  cuda_recorder = recorder;
}

std::unique_ptr<Replay> record(Device device, const std::function<void()>& body, Span span) {
  if (device == Device::cpu) {
    CpuCalls calls;
    {
      RecordingScope scope(span);
      CpuRecordingScope cpu(&calls);
      body();
    }
    ++n_recordings;
    return std::make_unique<CpuReplay>(std::move(calls));
  }
  LLR_CHECK(cuda_recorder != nullptr, "graph::record: no CUDA backend to record on");
  RecordingScope scope(span);
  std::unique_ptr<Replay> r = cuda_recorder->record(body);
  ++n_recordings;
  return r;
}

Stats stats() { return {n_recordings.load(), n_replays.load(), n_failures.load()}; }
void note_replay() { ++n_replays; }

void switch_off(const char* what, const std::exception& e) {
  ++n_failures;
  if (graphs_on.exchange(false))
    std::fprintf(stderr, "warning: --cuda-graphs switched off, %s failed: %s\n", what, e.what());
}

void repeat(Device device, int times, const std::function<void()>& body) {
  if (times <= 0) return;
  body();
  int done = 1;
  // Inside a recording (a body that repeats work itself) the runs are simply part of the outer recording.
  if (enabled() && times >= 3 && !profile::timing() && !recording()) {
    std::unique_ptr<Replay> replay;
    try {
      replay = record(device, body);
    } catch (const std::exception& e) {
      switch_off("recording a step", e);
    }
    if (replay) {
      if (replay->ran_while_recording()) ++done;
      try {
        for (; done < times; ++done) {
          replay->launch();
          note_replay();
        }
      } catch (const std::exception& e) {
        // A launch the device refused queued nothing: the remaining runs go eagerly. (A fault inside a replayed kernel
        // is sticky and surfaces at the next eager call.)
        switch_off("replaying a step", e);
      }
    }
  }
  for (; done < times; ++done) body();
}

namespace detail {

bool cpu_recording() { return cpu_calls != nullptr; }

CpuCall::CpuCall() : keeps_(cpu_calls != nullptr && cpu_call_depth == 0) { ++cpu_call_depth; }
CpuCall::~CpuCall() { --cpu_call_depth; }

void keep_cpu_call(std::function<void()> again) {
  LLR_CHECK(cpu_calls != nullptr, "graph: a CPU call kept outside a recording");
  cpu_calls->push_back(std::move(again));
}

void check_no_host_write(const char* what) {
  LLR_CHECK(cpu_calls == nullptr || cpu_call_depth > 0, what, " while device work is being recorded for replay: a "
            "recorded step must not write tensor values from the host (run without --cuda-graphs)");
}

}  // namespace detail

}  // namespace llr::graph
