// The raw compute interface: every heavy or per-element operation the differentiable ops need, without autograd,
// listed once in backend_functions.def. vjp rules call these directly; they are never recorded. Tensors passed
// together must share one device.
#pragma once

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

// Call sites write backend::add(a, b): the picking tensor's device chooses the implementation, after the checks.
namespace backend {

Tensor zeros(const Shape& shape, DType dtype, Layout layout, Device device);
Tensor full_like(const Tensor& x, double value);

#define LLR_KERNEL(ret, name, params, args, dev)                        \
  inline ret name params {                                              \
    ::llr::profile::Scope llr_op_scope_(#name, ::llr::profile::Kind::op, dev.device()); \
    ::llr::dispatch::check_devices(#name, dev.device(), LLR_UNPACK args); \
    ::llr::backend_check::name args;                                    \
    return ::llr::backend_for(dev.device()).name args;                  \
  }
#include "engine/backend_functions.def"
#undef LLR_KERNEL

inline Tensor activation_derivative_mul(Act act, int order, const Tensor& a, const Tensor& t) {
  return activation_derivative_mul(act, order, a, t, Tensor());
}

}  // namespace backend
}  // namespace llr
