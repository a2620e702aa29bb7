// Recorded device work: a fixed sequence of kernels (one attack step of a search, say) recorded once and replayed
// without the host code that launched it, so its launches cost one graph launch (CUDA graphs on the GPU). Off unless
// --cuda-graphs is given.
//
// What a recorded body may do: launch device work on tensors that keep their storage between replays (updated in
// place, like a perturbation and its optimiser state) and on temporaries it allocates itself. What it may not do:
// read a device value on the host (item(), to_vector(), to(Device::cpu)), copy between host and device, or depend on
// a host value that changes between replays: a replay repeats the kernels with the arguments they had when recorded.
// While a body is recorded, such a read throws (check_not_recording), on every device.
//
// On the CPU a "recording" is the body itself, rerun at each replay with the same read checks: the code that uses
// graphs runs the same way there, and CPU tests hold it to the same rules.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "engine/dtype.h"

namespace llr::graph {

// --cuda-graphs: whether code that can replay recorded work does (process-wide; off by default).
bool enabled();
void set_enabled(bool on);

// True while this thread records a body.
bool recording();
// Throws when called while a body is recorded: `what` is the operation that would have read the device.
void check_not_recording(const char* what);

class Replay {
 public:
  virtual ~Replay() = default;
  virtual void launch() = 0;
};

// The device's recorder (the CUDA backend registers one).
class Recorder {
 public:
  virtual ~Recorder() = default;
  // Records body without running it; throws if the device refuses (the body ran nothing then).
  virtual std::unique_ptr<Replay> record(const std::function<void()>& body) = 0;
};
void register_recorder(Device device, Recorder* recorder);

// Records body on `device` (see above for the CPU). Throws what the recording threw.
std::unique_ptr<Replay> record(Device device, const std::function<void()>& body);

// Counts since the process started, for benchmarks and tests.
struct Stats {
  int64_t recordings = 0, replays = 0, failures = 0;
};
Stats stats();
void note_replay();

// Runs `body` `times` times (times >= 0): the first run eagerly (it plans its convolutions and warms the libraries),
// the others from one recording when graphs are enabled and `times` >= 3. If the recording fails, the failure is
// reported on stderr once per process, graphs are switched off, and the remaining runs are eager.
void repeat(Device device, int times, const std::function<void()>& body);

}  // namespace llr::graph
