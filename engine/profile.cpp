#include "engine/profile.h"

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "engine/error.h"

namespace llr::profile {

namespace {

std::vector<Observer*>& observers() {
  static std::vector<Observer*> all;
  return all;
}

// Host time: the CPU computes synchronously, so a stamp is taken when the work is done.
class HostClock final : public Clock {
 public:
  int stamp() override {
    times_.push_back(std::chrono::steady_clock::now());
    return static_cast<int>(times_.size()) - 1;
  }
  double elapsed_ms(int from, int to) override {
    return std::chrono::duration<double, std::milli>(times_.at(to) - times_.at(from)).count();
  }
  void reset() override { times_.clear(); }

 private:
  std::vector<std::chrono::steady_clock::time_point> times_;
};

std::unique_ptr<Clock> (*cuda_clock)() = nullptr;

}  // namespace

namespace detail {

bool any_observer = false;
thread_local const char* current_op = nullptr;
thread_local const char* current_phase = nullptr;

void notify_begin(const char* name, Kind kind, Device device) {
  for (Observer* o : observers()) o->begin(name, kind, device);
}

void notify_end(const char* name, Kind kind, Device device, double bytes) {
  for (auto it = observers().rbegin(); it != observers().rend(); ++it) (*it)->end(name, kind, device, bytes);
}

}  // namespace detail

void add_observer(Observer* o) {
  observers().push_back(o);
  detail::any_observer = true;
}

void remove_observer(Observer* o) {
  auto& all = observers();
  all.erase(std::remove(all.begin(), all.end(), o), all.end());
  detail::any_observer = !all.empty();
}

void register_clock(Device device, std::unique_ptr<Clock> (*make)()) {
  LLR_CHECK(device == Device::cuda, "only the CUDA clock is registered at run time");
  cuda_clock = make;
}

std::unique_ptr<Clock> make_clock(Device device) {
  if (device == Device::cpu) return std::make_unique<HostClock>();
  LLR_CHECK(cuda_clock != nullptr, "no CUDA clock: this build has no CUDA support, or llr::cuda::init() was not called");
  return cuda_clock();
}

namespace {
std::atomic<int> live_profilers{0};
}  // namespace

bool timing() { return live_profilers.load() > 0; }

Profiler::Profiler(Device device) : device_(device), clock_(make_clock(device)) {
  add_observer(this);
  ++live_profilers;
}

Profiler::~Profiler() {
  --live_profilers;
  remove_observer(this);
}

void Profiler::begin(const char* name, Kind kind, Device device) {
  if (device != device_ || step_from_ < 0) return;
  if (kind == Kind::op && op_depth_++ > 0) return;
  open_.push_back({name, kind, clock_->stamp()});
}

void Profiler::end(const char* name, Kind kind, Device device, double bytes) {
  if (device != device_ || step_from_ < 0) return;
  if (kind == Kind::op && --op_depth_ > 0) return;
  // Scopes close in reverse order of opening; find this one's opening (ops and phases interleave).
  for (auto it = open_.rbegin(); it != open_.rend(); ++it)
    if (it->kind == kind && it->name == name) {
      pending_.push_back({name, kind, it->stamp, clock_->stamp(), bytes});
      open_.erase(std::next(it).base());
      return;
    }
}

void Profiler::step_begin() {
  open_.clear();
  op_depth_ = 0;
  step_from_ = clock_->stamp();
}

void Profiler::step_end() {
  pending_.push_back({"", Kind::phase, step_from_, clock_->stamp(), 0.0});
  step_from_ = -1;
}

void Profiler::collect() {
  for (const Interval& i : pending_) {
    double ms = clock_->elapsed_ms(i.from, i.to);
    if (i.name.empty()) {
      step_ms_ += ms;
      continue;
    }
    Total& t = (i.kind == Kind::op ? ops_ : phases_)[i.name];
    t.ms += ms;
    t.bytes += i.bytes;
    ++t.calls;
  }
  pending_.clear();
  clock_->reset();
}

void Profiler::print(int steps) const {
  double step = step_ms_ / steps;
  auto table = [&](const char* title, const std::map<std::string, Total>& rows, bool traffic) {
    std::vector<std::pair<std::string, Total>> sorted(rows.begin(), rows.end());
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    double sum = 0;
    std::printf("\n%-34s %10s %8s %10s", title, "ms/step", "share", "calls/step");
    if (traffic) std::printf(" %10s %8s", "GB/step", "GB/s");
    std::printf("\n");
    for (const auto& [name, t] : sorted) {
      sum += t.ms;
      std::printf("%-34s %10.3f %7.1f%% %10.1f", name.c_str(), t.ms / steps, 100.0 * t.ms / step_ms_,
                  double(t.calls) / steps);
      if (traffic) std::printf(" %10.3f %8.0f", t.bytes * 1e-9 / steps, t.ms > 0 ? t.bytes * 1e-6 / t.ms : 0.0);
      std::printf("\n");
    }
    std::printf("%-34s %10.3f %7.1f%%\n", "(outside these)", step - sum / steps, 100.0 * (1.0 - sum / step_ms_));
  };
  std::printf("\nprofile over %d steps: %.3f ms per step\n", steps, step);
  table("phase", phases_, false);
  table("op (outermost kernel call)", ops_, true);
  std::printf("(GB: the op's argument and result tensors, each counted once: the traffic it cannot avoid; GB/s near "
              "the memory bandwidth means a memory-bound op is done)\n");
}

}  // namespace llr::profile
