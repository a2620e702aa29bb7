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
// On the CPU a recording runs the body once and keeps every kernel call it makes (the CPU implementations of the
// kernel interfaces are reached through proxies then, engine/dispatch.h): its arguments as they were, and the tensors
// it returned. A replay calls the same implementations again with those arguments and writes the results into the
// same tensors, without the host code that made the calls, as a CUDA graph does: a host value that changes between
// replays (a step count, a learning rate) keeps its recorded value on the CPU too, so CPU tests catch a body that
// depends on one.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>

#include "engine/dtype.h"

namespace llr::graph {

// --cuda-graphs: whether code that can replay recorded work does (process-wide; off by default).
bool enabled();
void set_enabled(bool on);

// True while this thread records a body.
bool recording();
// How long a recording's replays go on. `scoped`: all of them run before the code that records returns
// (graph::repeat), so device values the host cached before the recording (a weight's compute copy, nets/model.h)
// still hold at each replay. `lasting`: replays go on while the host changes those values between them (a whole
// training step, train/step.h), so such a cache serves a recording only if made in it.
enum class Span { scoped, lasting };
// The lasting recording open on this thread (a number no other recording of the process has), or 0: what a host
// cache of device values made while recording is tagged with.
uint64_t lasting_recording_id();
// Throws when called while a body is recorded: `what` is the operation that would have read the device.
void check_not_recording(const char* what);

class Replay {
 public:
  virtual ~Replay() = default;
  virtual void launch() = 0;
  // Whether recording ran the body's device work once (the CPU) rather than only recording it (CUDA).
  virtual bool ran_while_recording() const { return false; }
};

// The device's recorder (the CUDA backend registers one).
class Recorder {
 public:
  virtual ~Recorder() = default;
  // Records body without running it; throws if the device refuses (the body ran nothing then).
  virtual std::unique_ptr<Replay> record(const std::function<void()>& body) = 0;
};
void register_recorder(Device device, Recorder* recorder);

// Records body on `device` (on the CPU this runs it once, see above). Throws what the recording threw.
std::unique_ptr<Replay> record(Device device, const std::function<void()>& body, Span span = Span::scoped);

// Counts since the process started, for benchmarks and tests.
struct Stats {
  int64_t recordings = 0, replays = 0, failures = 0;
};
Stats stats();
void note_replay();
// A recording or replay that failed: counted, and reported on stderr the first time, as graphs are switched off for
// the rest of the process (the caller then runs the work eagerly).
void switch_off(const char* what, const std::exception& e);

// Runs `body` `times` times (times >= 0): the first run eagerly (it plans its convolutions and warms the libraries),
// the others from one recording when graphs are enabled and `times` >= 3 (on the CPU the recording is the second run
// and the replays the rest). If the recording fails, the failure is
// reported on stderr once per process, graphs are switched off, and the remaining runs are eager.
void repeat(Device device, int times, const std::function<void()>& body);

namespace detail {
// The CPU's recording (see above). While one is open on this thread, each outermost call of a CPU kernel
// implementation is kept for the replays; calls an implementation makes itself are part of it.
bool cpu_recording();
// Marks a call of a CPU implementation for its lifetime; keeps() says whether it is an outermost one to keep.
class CpuCall {
 public:
  CpuCall();
  ~CpuCall();
  CpuCall(const CpuCall&) = delete;
  CpuCall& operator=(const CpuCall&) = delete;
  bool keeps() const { return keeps_; }

 private:
  bool keeps_;
};
// Adds a call to the open CPU recording (under a CpuCall that keeps()).
void keep_cpu_call(std::function<void()> again);
// Throws when the host writes a tensor's values itself (Tensor::set) inside a CPU recording, outside any kernel
// call: on a GPU that would be a copy from the host, which a recorded body must not make.
void check_no_host_write(const char* what);
}  // namespace detail

}  // namespace llr::graph
