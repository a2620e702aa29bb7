#include "engine/backend.h"
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/cpu/cpu_backend.h"

namespace llr {

namespace {
DeviceCopier* device_copier = nullptr;
}  // namespace

namespace {
// The CPU backend as an open CPU recording reaches it (engine/graph.h): every outermost call kept for the replays.
class RecordingCpuBackend final : public Backend {
 public:
  explicit RecordingCpuBackend(Backend& inner) : inner_(inner) {}
  const char* name() const override { return inner_.name(); }
  void synchronize() override { inner_.synchronize(); }
  // A replayed result is rounded as the backend's dispatch rounds it under bf16 emulation.
  template <class R>
  static void after_replay(const char* function, R& result) {
    if (emulate_bf16::active()) emulate_bf16::round_outputs(function, result);
  }
#define LLR_KERNEL LLR_DECLARE_RECORDED
#include "engine/backend_functions.def"
#undef LLR_KERNEL

 private:
  Backend& inner_;
};
}  // namespace

Backend& backend_for(Device device) {
  static CpuBackend cpu;
  static RecordingCpuBackend recording(cpu);
  return dispatch::for_device<Backend>(device, cpu, recording, "engine backend");
}

void register_backend(Device device, Backend* backend) { dispatch::register_for_device<Backend>(device, backend); }

bool has_backend(Device device) { return device == Device::cpu || dispatch::Registered<Backend>::cuda != nullptr; }

void register_device_copier(DeviceCopier* copier) { device_copier = copier; }

namespace dispatch {
void write_replayed(const Tensor& recorded, const Tensor& fresh) {
  if (!recorded.defined()) return;
  LLR_CHECK(fresh.defined() && fresh.numel() == recorded.numel() && fresh.dtype() == recorded.dtype() &&
                fresh.device() == Device::cpu && recorded.device() == Device::cpu,
            "graph: a replayed CPU call returned ", fresh.defined() ? fresh.describe() : "nothing", " where it had "
            "returned ", recorded.describe());
  size_t bytes = static_cast<size_t>(fresh.numel()) * dtype_size(fresh.dtype());
  if (bytes && recorded.raw_data() != fresh.raw_data()) std::memmove(recorded.raw_data(), fresh.raw_data(), bytes);
}
}  // namespace dispatch

void copy_into(const Tensor& dst, const Tensor& src) {
  LLR_CHECK(dst.defined() && src.defined(), "copy_into: undefined tensor");
  dst.note_value_write();
  LLR_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "copy_into: ", src.describe(), " into ",
            dst.describe());
  size_t bytes = static_cast<size_t>(src.numel()) * dtype_size(src.dtype());
  if (src.device() == Device::cpu && dst.device() == Device::cpu) {
    if (bytes) std::memcpy(dst.raw_data(), src.raw_data(), bytes);
    // Inside a CPU recording the copy is device work like a kernel's: kept for the replays.
    graph::detail::CpuCall call;
    if (call.keeps() && bytes)
      graph::detail::keep_cpu_call([dst, src, bytes] { std::memmove(dst.raw_data(), src.raw_data(), bytes); });
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

namespace llr::emulate_bf16 {
namespace {
const std::string& skip_list() {
  static const std::string list = [] {
    const char* v = std::getenv("LLR_EMULATE_BF16_SKIP");
    return "," + std::string(v ? v : "") + ",";
  }();
  return list;
}
// Round to nearest, ties to even, as __float2bfloat16 does.
float to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;  // inf, NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}
// What the CUDA backend would hold in bf16: activation-sized tensors and convolution-weight gradients, all 4-D (the
// classifier and the losses compute in f32 there too).
bool stored_in_bf16(const Tensor& t) {
  return t.defined() && t.dtype() == DType::f32 && t.device() == Device::cpu && t.rank() == 4 && t.numel() >= 1024;
}
void maybe(const char* function, Tensor& t) {
  if (!stored_in_bf16(t) || skip_list().find("," + std::string(function) + ",") != std::string::npos) return;
  round_in_place(t);
}
bool& flag() {
  static bool on = [] {
    const char* v = std::getenv("LLR_EMULATE_BF16");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}
}  // namespace

bool active() { return flag(); }
void set_active(bool on) { flag() = on; }
void round_in_place(Tensor& t) {
  LLR_CHECK(t.dtype() == DType::f32 && t.device() == Device::cpu, "bf16 emulation: ", t.describe());
  float* p = static_cast<float*>(t.raw_data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = to_bf16(p[i]);
}
void round_outputs(const char* f, Tensor& t) { maybe(f, t); }
void round_outputs(const char* f, TensorPair& t) { maybe(f, t.first), maybe(f, t.second); }
void round_outputs(const char* f, BatchStatsTangentGrads& t) { maybe(f, t.x), maybe(f, t.xdot); }
// With need_stats (mean's cotangent defined) the CUDA backend writes dx in f32 (backend_functions.def).
void round_outputs(const char* f, BnNormalizeGrads& t) {
  if (!t.mean.defined()) maybe(f, t.x);
}
void round_outputs(const char* f, BnTangentGrads& t) { maybe(f, t.x), maybe(f, t.xdot); }
Tensor cotangent_as_used(const Tensor& t) {
  if (!active() || !stored_in_bf16(t)) return t;
  Tensor c = t.clone();
  round_in_place(c);
  return c;
}
}  // namespace llr::emulate_bf16
