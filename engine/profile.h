// Where a step's time goes. Every kernel call through a dispatch (engine/dispatch.h) and every named phase of a step
// (nominal forward, search step, tangent pass, ...) is reported to the installed observers: the CUDA backend installs
// one that opens an NVTX range for each (for Nsight), and `llrtrain bench --profile` installs a Profiler that times
// them with the device's clock (CUDA events on the GPU) and prints a table of ms and share of the step per op and per
// phase, and for each op the bytes its tensors occupy (every argument and result once: the memory traffic it cannot
// avoid) over its time, so an element-wise kernel's distance from the memory bandwidth can be read off. With no
// observer installed a scope costs one branch.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace llr::profile {

enum class Kind { op, phase };

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void begin(const char* name, Kind kind, Device device) = 0;
  // bytes: what set_bytes() gave the scope (0 for phases and for kernels that report none).
  virtual void end(const char* name, Kind kind, Device device, double bytes) = 0;
};

void add_observer(Observer* o);
void remove_observer(Observer* o);

namespace detail {
extern bool any_observer;
// The innermost kernel call and phase now running on this thread (nullptr outside any): what the memory ledger
// (engine/tensor.h, memory::) files each new tensor under.
extern thread_local const char* current_op;
extern thread_local const char* current_phase;
void notify_begin(const char* name, Kind kind, Device device);
void notify_end(const char* name, Kind kind, Device device, double bytes);
}  // namespace detail

// Reports a kernel call or a phase for its lifetime.
class Scope {
 public:
  Scope(const char* name, Kind kind, Device device) : name_(name), kind_(kind), device_(device) {
    const char*& where = kind == Kind::op ? detail::current_op : detail::current_phase;
    outer_ = where;
    where = name;
    if (detail::any_observer) {
      active_ = true;
      detail::notify_begin(name_, kind_, device_);
    }
  }
  ~Scope() {
    if (active_) detail::notify_end(name_, kind_, device_, bytes_);
    (kind_ == Kind::op ? detail::current_op : detail::current_phase) = outer_;
  }
  bool active() const { return active_; }
  void set_bytes(double bytes) { bytes_ = bytes; }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  const char* name_;
  const char* outer_;
  Kind kind_;
  Device device_;
  bool active_ = false;
  double bytes_ = 0;
};

// A point on a device's timeline and the time between two of them: host time on the CPU, CUDA events on the GPU
// (registered by the CUDA backend). elapsed_ms may wait for the device.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int stamp() = 0;
  virtual double elapsed_ms(int from, int to) = 0;
  virtual void reset() = 0;  // forget every stamp
};
void register_clock(Device device, std::unique_ptr<Clock> (*make)());
std::unique_ptr<Clock> make_clock(Device device);

// True while a Profiler exists (recorded device work is not replayed then: the profile times each launch).
bool timing();

// Times ops (the outermost kernel call only, so nested calls are not counted twice) and phases on one device.
class Profiler final : public Observer {
 public:
  explicit Profiler(Device device);
  ~Profiler() override;
  void begin(const char* name, Kind kind, Device device) override;
  void end(const char* name, Kind kind, Device device, double bytes) override;
  // A whole step between two stamps: call step_begin() and step_end() around it; collect() after the device finished.
  void step_begin();
  void step_end();
  void collect();
  // Prints the per-phase and per-op tables (ms per step, share of the step, calls per step; for ops also GB per step
  // and GB/s).
  void print(int steps) const;

  struct Total {
    double ms = 0;
    int64_t calls = 0;
    double bytes = 0;
  };
  // What collect() has gathered for one op (nullptr if it never ran).
  const Total* op(const std::string& name) const {
    auto it = ops_.find(name);
    return it == ops_.end() ? nullptr : &it->second;
  }

 private:
  struct Open {
    const char* name;
    Kind kind;
    int stamp;
  };
  struct Interval {
    std::string name;
    Kind kind;
    int from, to;
    double bytes;
  };
  Device device_;
  std::unique_ptr<Clock> clock_;
  std::vector<Open> open_;
  std::vector<Interval> pending_;
  int op_depth_ = 0;
  int step_from_ = -1;
  double step_ms_ = 0;
  std::map<std::string, Total> ops_, phases_;
};

}  // namespace llr::profile

// A named phase of a step, for the profile and Nsight: LLR_PHASE("tangent pass", x.device()).
#define LLR_PHASE_CAT2(a, b) a##b
#define LLR_PHASE_CAT(a, b) LLR_PHASE_CAT2(a, b)
#define LLR_PHASE(name, device) \
  ::llr::profile::Scope LLR_PHASE_CAT(llr_phase_, __LINE__)(name, ::llr::profile::Kind::phase, device)
