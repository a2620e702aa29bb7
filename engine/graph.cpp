#include "engine/graph.h"

#include <atomic>
#include <cstdio>
#include <exception>
#include <string>

#include "engine/error.h"
#include "engine/profile.h"

namespace llr::graph {

namespace {
std::atomic<bool> graphs_on{false};
thread_local int recording_depth = 0;
std::atomic<int64_t> n_recordings{0}, n_replays{0}, n_failures{0};
Recorder* cuda_recorder = nullptr;

struct RecordingScope {
  RecordingScope() { ++recording_depth; }
  ~RecordingScope() { --recording_depth; }
};

// The CPU's "recording": the body, rerun at each replay under the same read checks.
class CpuReplay final : public Replay {
 public:
  explicit CpuReplay(std::function<void()> body) : body_(std::move(body)) {}
  void launch() override {
    RecordingScope scope;
    body_();
  }

 private:
  std::function<void()> body_;
};
}  // namespace

bool enabled() { return graphs_on.load(); }
void set_enabled(bool on) { graphs_on = on; }

bool recording() { return recording_depth > 0; }

void check_not_recording(const char* what) {
  LLR_CHECK(recording_depth == 0, what, " while device work is being recorded for replay: a recorded step must not "
            "read device values on the host or copy between host and device (run without --cuda-graphs)");
}

void register_recorder(Device device, Recorder* recorder) {
  LLR_CHECK(device == Device::cuda, "graph::register_recorder: only the CUDA backend records graphs");
  cuda_recorder = recorder;
}

std::unique_ptr<Replay> record(Device device, const std::function<void()>& body) {
  if (device == Device::cpu) {
    ++n_recordings;
    return std::make_unique<CpuReplay>(body);
  }
  LLR_CHECK(cuda_recorder != nullptr, "graph::record: no CUDA backend to record on");
  RecordingScope scope;
  std::unique_ptr<Replay> r = cuda_recorder->record(body);
  ++n_recordings;
  return r;
}

Stats stats() { return {n_recordings.load(), n_replays.load(), n_failures.load()}; }
void note_replay() { ++n_replays; }

void repeat(Device device, int times, const std::function<void()>& body) {
  if (times <= 0) return;
  body();
  int done = 1;
  if (enabled() && times >= 3 && !profile::timing()) {
    std::unique_ptr<Replay> replay;
    try {
      replay = record(device, body);
    } catch (const std::exception& e) {
      ++n_failures;
      if (graphs_on.exchange(false))
        std::fprintf(stderr, "warning: --cuda-graphs switched off, recording a step failed: %s\n", e.what());
    }
    if (replay) {
      for (; done < times; ++done) {
        replay->launch();
        note_replay();
      }
    }
  }
  for (; done < times; ++done) body();
}

}  // namespace llr::graph
