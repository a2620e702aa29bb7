#include "engine/backend.h"
#include <cstring>

#include "engine/cpu/cpu_backend.h"

namespace llr {

namespace {
DeviceCopier* device_copier = nullptr;
}  // namespace

Backend& backend_for(Device device) {
  static CpuBackend cpu;
  return dispatch::for_device<Backend>(device, cpu, "engine backend");
}

void register_backend(Device device, Backend* backend) { dispatch::register_for_device<Backend>(device, backend); }

bool has_backend(Device device) { return device == Device::cpu || dispatch::Registered<Backend>::cuda != nullptr; }

void register_device_copier(DeviceCopier* copier) { device_copier = copier; }

void copy_into(const Tensor& dst, const Tensor& src) {
  note_value_write();
  LLR_CHECK(dst.defined() && src.defined(), "copy_into: undefined tensor");
  LLR_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "copy_into: ", src.describe(), " into ",
            dst.describe());
  size_t bytes = static_cast<size_t>(src.numel()) * dtype_size(src.dtype());
  if (src.device() == Device::cpu && dst.device() == Device::cpu) {
    if (bytes) std::memcpy(dst.raw_data(), src.raw_data(), bytes);
    return;
  }
  LLR_CHECK(device_copier != nullptr, "copy_into: no CUDA backend to copy ", src.describe(), " to ", dst.describe());
  device_copier->copy(dst.raw_data(), dst.device(), src.raw_data(), src.device(), bytes);
}

Tensor to_device(const Tensor& x, Device device) {
  LLR_CHECK(x.defined(), "to_device: undefined tensor");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.layout(), device);
  copy_into(out, x);
  return out;
}

namespace backend {

Tensor zeros(const Shape& shape, DType dtype, Layout layout, Device device) {
  return Tensor::zeros(shape, dtype, layout, device);
}

Tensor full_like(const Tensor& x, double value) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.layout(), x.device());
  backend_for(x.device()).fill(out, value);
  return out;
}

}  // namespace backend
}  // namespace llr
