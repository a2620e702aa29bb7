// The raw compute interface: every heavy or per-element operation the differentiable ops need, without autograd,
// listed once in backend_functions.def. vjp rules call these directly; they are never recorded. Tensors passed
// together must share one device.
#pragma once

#include <type_traits>
#include <utility>

#include "engine/dispatch.h"
#include "engine/profile.h"
#include "engine/elementwise_math.h"
#include "engine/tensor.h"

namespace llr {

struct Conv2dGeometry {
  int stride = 1;
  int padding = 0;
};

// Output spatial size of a convolution, checking that it is positive.
int64_t conv2d_output_size(int64_t in, int64_t kernel, const Conv2dGeometry& g);

using TensorPair = std::pair<Tensor, Tensor>;

struct BatchStatsTangentGrads {
  Tensor x, mean, xdot;
};
struct BnNormalizeGrads {
  Tensor x, mean, var, scale, shift;
};
struct BnTangentGrads {
  Tensor x, mean, var, scale, xdot, mean_dot, var_dot;
};
// Their tensors (a CPU replay writes them back, engine/dispatch.h) and bytes (the profile).
inline std::vector<Tensor> tensors_of(const BatchStatsTangentGrads& g) { return {g.x, g.mean, g.xdot}; }
inline std::vector<Tensor> tensors_of(const BnNormalizeGrads& g) { return {g.x, g.mean, g.var, g.scale, g.shift}; }
inline std::vector<Tensor> tensors_of(const BnTangentGrads& g) {
  return {g.x, g.mean, g.var, g.scale, g.xdot, g.mean_dot, g.var_dot};
}
inline double bytes_of(const BatchStatsTangentGrads& g) { return bytes_of(tensors_of(g)); }
inline double bytes_of(const BnNormalizeGrads& g) { return bytes_of(tensors_of(g)); }
inline double bytes_of(const BnTangentGrads& g) { return bytes_of(tensors_of(g)); }

// The engine's compute interface, one implementation per device: engine/cpu/ (Eigen) for Device::cpu, kernels/
// (cuDNN, cuBLAS, our kernels) for Device::cuda, which registers itself at start-up. Its functions are listed once,
// in engine/backend_functions.def.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Waits until the device has finished all queued work (a no-op on the CPU).
  virtual void synchronize() = 0;
#define LLR_KERNEL LLR_DECLARE_PURE
#include "engine/backend_functions.def"
#undef LLR_KERNEL
};

// The backend of a device; throws a clear error when this build or process has none for it.
Backend& backend_for(Device device);
void register_backend(Device device, Backend* backend);
bool has_backend(Device device);

// Device copies (through the CUDA backend's registered copier).
class DeviceCopier {
 public:
  virtual ~DeviceCopier() = default;
  virtual void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) = 0;
};
void register_device_copier(DeviceCopier* copier);
Tensor to_device(const Tensor& x, Device device);  // a copy on `device` (same dtype, layout)
// Copies src's values into dst's storage (same shape and dtype; any devices), e.g. loading a checkpoint in place.
void copy_into(const Tensor& dst, const Tensor& src);

// The argument checks of the backend functions (engine/backend_checks.cpp): shapes, dtypes and layouts, once for
// every device. Value checks a GPU could only make by synchronising (labels in range) are the CPU backend's.
namespace backend_check {
#define LLR_KERNEL LLR_DECLARE_CHECK
#include "engine/backend_functions.def"
#undef LLR_KERNEL
}  // namespace backend_check

// bf16 storage emulated on the CPU, a diagnostic of where bf16 loses precision (LLR_EMULATE_BF16=1, f32 data): every
// data-sized output of a backend function (1,024 elements or more: activations, their gradients, weight gradients;
// not per-channel or per-example values) is rounded to the nearest bf16, as the CUDA backend stores its bf16
// outputs, with f32 arithmetic inside each function as there. LLR_EMULATE_BF16_SKIP=add,bn_act_backward,... leaves
// those functions' outputs unrounded.
namespace emulate_bf16 {
bool active();
void set_active(bool on);  // overrides LLR_EMULATE_BF16 (tests)
void round_outputs(const char* function, Tensor& t);
void round_outputs(const char* function, TensorPair& t);
void round_outputs(const char* function, BatchStatsTangentGrads& t);
void round_outputs(const char* function, BnNormalizeGrads& t);
void round_outputs(const char* function, BnTangentGrads& t);
void round_in_place(Tensor& t);  // every element of an f32 CPU tensor to its nearest bf16
// A cotangent as a vjp takes it: the autograd sums cotangents unrounded and converts the sum to the tensor's dtype
// once, which is the rounding emulated here (4-D f32 CPU tensors; a copy, the sum may be shared).
Tensor cotangent_as_used(const Tensor& t);
// Emulation off while it lives (the autograd's sums of cotangents, which are in the wider dtype there).
class Suspend {
 public:
  Suspend() : was_(active()) { set_active(false); }
  ~Suspend() { set_active(was_); }
  Suspend(const Suspend&) = delete;
  Suspend& operator=(const Suspend&) = delete;

 private:
  bool was_;
};

template <class R, class F>
R call(const char* function, Device device, F&& f) {
  if constexpr (std::is_void_v<R>) {
    f();
  } else {
    R out = f();
    if (device == Device::cpu && active()) round_outputs(function, out);
    return out;
  }
}
}  // namespace emulate_bf16

// Call sites write backend::add(a, b): the picking tensor's device chooses the implementation, after the checks.
namespace backend {

Tensor zeros(const Shape& shape, DType dtype, Layout layout, Device device);
Tensor full_like(const Tensor& x, double value);

#define LLR_KERNEL(ret, name, params, args, dev)                        \
  inline ret name params {                                              \
    ::llr::profile::Scope llr_op_scope_(#name, ::llr::profile::Kind::op, dev.device()); \
    ::llr::dispatch::check_devices(#name, dev.device(), LLR_UNPACK args); \
    ::llr::backend_check::name args;                                    \
    return ::llr::dispatch::measured<ret>(                              \
        llr_op_scope_,                                                  \
        [&]() -> ret {                                                  \
          return ::llr::emulate_bf16::call<ret>(#name, dev.device(),    \
                                                [&]() -> ret { return ::llr::backend_for(dev.device()).name args; }); \
        },                                                              \
        LLR_UNPACK args);                                               \
  }
#include "engine/backend_functions.def"
#undef LLR_KERNEL

inline Tensor activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t) {
  return activation_derivative_mul(act, order, a, t, Tensor());
}

}  // namespace backend
}  // namespace llr
