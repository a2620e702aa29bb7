// Device dispatch for the kernel interfaces (engine/backend.h for the ops, train/robust/robust_kernels.h for the
// perturbation kernels, train/training_kernels.h for SGD and batch gathering). Each interface is one list of entries
//   LLR_KERNEL(return type, name, (parameters), (arguments), tensor that picks the device)
// in a .def file, expanded three times:
//   - LLR_DECLARE_PURE:      the interface's pure virtual functions;
//   - LLR_DECLARE_OVERRIDE:  each device implementation's declarations (the arithmetic, nothing else);
//   - the interface's own dispatch macro: an inline function that checks every defined tensor argument is on the
//     device of the picking tensor, runs the entry's argument check (shapes, dtypes, layouts: written once, in the
//     interface's checks file) and calls the device's implementation.
// A return type with a comma needs an alias (TensorPair).
#pragma once

#include <type_traits>
#include <utility>
#include <vector>

#include "engine/graph.h"
#include "engine/profile.h"
#include "engine/tensor.h"

#define LLR_UNPACK(...) __VA_ARGS__
#define LLR_DECLARE_PURE(ret, name, params, args, dev) virtual ret name params = 0;
#define LLR_DECLARE_OVERRIDE(ret, name, params, args, dev) ret name params override;
#define LLR_DECLARE_CHECK(ret, name, params, args, dev) void name params;
// A proxy's override (see dispatch::recorded): the call with copies of its arguments, kept while a CPU recording is
// open. The proxy class has an `inner_` implementation and a static `after_replay(name, result)`.
#define LLR_DECLARE_RECORDED(ret, name, params, args, dev)                                                    \
  ret name params override {                                                                                 \
    auto* llr_inner_ = &inner_;                                                                              \
    return ::llr::dispatch::recorded<ret>(                                                                   \
        #name, [=]() mutable -> ret { return llr_inner_->name args; },                                       \
        [](const char* llr_name_, auto& llr_result_) { after_replay(llr_name_, llr_result_); });              \
  }

namespace llr::dispatch {

// Every defined tensor argument of a kernel lives on `device`; other arguments are ignored.
template <class... Args>
void check_devices(const char* kernel, Device device, const Args&... args) {
  auto one = [&](const auto& a) {
    using A = std::decay_t<decltype(a)>;
    if constexpr (std::is_same_v<A, Tensor>) {
      LLR_CHECK(!a.defined() || a.device() == device, kernel, ": ", a.describe(), " is not on the ",
                device_name(device), " like the other arguments");
    }
  };
  (one(args), ...);
}

}  // namespace llr::dispatch

namespace llr {

// The bytes a kernel argument or result occupies, for the profile's traffic column: a defined tensor's elements, the
// tensors of a pair or of a result struct (overloads beside the struct, found by argument-dependent lookup); nothing
// for the rest (scalars, shapes, options).
inline double bytes_of(const Tensor& t) {
  return t.defined() ? double(t.numel()) * double(dtype_size(t.dtype())) : 0.0;
}
template <class A, class B>
double bytes_of(const std::pair<A, B>& p) {
  return bytes_of(p.first) + bytes_of(p.second);
}
inline double bytes_of(const std::vector<Tensor>& ts) {
  double n = 0;
  for (const Tensor& t : ts) n += bytes_of(t);
  return n;
}
template <class T>
double bytes_of(const T&) {
  return 0.0;
}

// The tensors of a kernel's result, in a fixed order (overloads beside each result struct, found by argument-dependent
// lookup), for a replay on the CPU to write its results into the recorded ones.
inline std::vector<Tensor> tensors_of(const Tensor& t) { return {t}; }
inline std::vector<Tensor> tensors_of(const std::pair<Tensor, Tensor>& p) { return {p.first, p.second}; }

namespace dispatch {

// f() with the bytes of its arguments and result given to the kernel's profile scope (when a profiler listens).
template <class R, class F, class... Args>
R measured(profile::Scope& scope, F&& f, const Args&... args) {
  if constexpr (std::is_void_v<R>) {
    f();
    if (scope.active()) scope.set_bytes((0.0 + ... + bytes_of(args)));
  } else {
    R out = f();
    if (scope.active()) scope.set_bytes((bytes_of(out) + ... + bytes_of(args)));
    return out;
  }
}

// The implementation of interface K registered for a device other than the CPU (whose implementation each
// interface keeps as a static instance beside its definition).
template <class K>
struct Registered {
  static inline K* cuda = nullptr;
};

// Writes a replayed call's fresh result into the tensors the recorded call returned (which later calls read).
void write_replayed(const Tensor& recorded, const Tensor& fresh);
template <class R>
void write_replayed(const R& recorded, const R& fresh) {
  std::vector<Tensor> a = tensors_of(recorded), b = tensors_of(fresh);
  for (size_t i = 0; i < a.size(); ++i) write_replayed(a[i], b[i]);
}

// A CPU kernel call through a recording proxy: runs it, and when a CPU recording is open and this is an outermost
// call, keeps it (`call` holds copies of its arguments: tensors share their storage, host values are frozen) so each
// replay calls it again and writes the result into this call's result tensors (after `after`, e.g. bf16 emulation).
template <class R, class Call, class After>
R recorded(const char* name, Call call, After after) {
  graph::detail::CpuCall scope;
  if constexpr (std::is_void_v<R>) {
    call();
    if (scope.keeps()) graph::detail::keep_cpu_call([call]() mutable { call(); });
  } else {
    R out = call();
    if (scope.keeps())
      graph::detail::keep_cpu_call([call, out, name, after]() mutable {
        R fresh = call();
        after(name, fresh);
        write_replayed(out, fresh);
      });
    return out;
  }
}

// The CPU implementation, or its recording proxy while a CPU recording is open on this thread.
template <class K>
K& for_device(Device device, K& cpu, K& recording_proxy, const char* what) {
  if (device == Device::cpu) return graph::detail::cpu_recording() ? recording_proxy : cpu;
  LLR_CHECK(Registered<K>::cuda != nullptr, "no CUDA implementation of the ", what,
            ": this build has no CUDA support, or llr::cuda::init() was not called");
  return *Registered<K>::cuda;
}

template <class K>
void register_for_device(Device device, K* kernels) {
  LLR_CHECK(device == Device::cuda, "only CUDA implementations are registered at run time");
  Registered<K>::cuda = kernels;
}

}  // namespace dispatch
}  // namespace llr
