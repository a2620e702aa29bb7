// Tensor: shape, dtype, device, layout and shared contiguous storage, plus the autograd bookkeeping (the node that
// produced it on the tape, a leaf's accumulated gradient, and an optional forward-mode tangent).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/error.h"

namespace llr {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Device memory comes from an allocator the CUDA backend registers (a caching allocator); never managed memory.
class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  virtual size_t peak_bytes_in_use() const = 0;
  virtual void reset_peak() = 0;
  // Device memory a new allocation could still get: free on the device plus what the allocator caches.
  virtual size_t bytes_available() const = 0;
};
void register_device_allocator(DeviceAllocator* allocator);
DeviceAllocator* device_allocator();  // the registered one, or nullptr

// Bytes of tensor storage on the host now and at the peak since the last reset (what `llrtrain bench` reports for
// CPU runs; the CUDA allocator counts device memory).
struct HostMemoryStats {
  size_t bytes_in_use, peak_bytes_in_use;
};
HostMemoryStats host_memory_stats();
void reset_host_memory_peak();
// Physical host memory not in use by anything (the operating system's free pages).
size_t host_memory_available();

// Where tensor memory goes (`llrtrain bench --memory`): while the ledger is on, every storage is counted under the
// phase and the kernel call that allocated it (profile::Scope's innermost names), per device, and the counts at the
// largest total since the last reset are kept. Device workspaces (cuDNN's) are storages too.
namespace memory {
struct LedgerEntry {
  std::string phase, op;  // "-" outside any
  size_t bytes = 0;
};
struct LedgerPeak {
  size_t total = 0;                  // bytes of live storages at the peak
  std::vector<LedgerEntry> entries;  // what they were, largest first
};
void set_ledger(bool on);
bool ledger_on();
void reset_ledger_peak();  // the peak becomes what is live now
LedgerPeak ledger_peak(Device device);
}  // namespace memory

// Contiguous bytes on one device. CPU storage is 64-byte aligned host memory.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  // Writes into the values outside the ops so far (Tensor::note_value_write).
  uint64_t version() const { return version_; }
  void note_write() { ++version_; }

 private:
  void* data_ = nullptr;
  uint64_t version_ = 0;
  size_t bytes_ = 0;
  Device device_;
  const char* op_ = nullptr;  // the memory ledger's labels, when it was on at allocation
  const char* phase_ = nullptr;
  bool in_ledger_ = false;
};

struct Node;

struct TensorImpl {
  uint64_t id = 0;
  Shape shape;
  int64_t numel = 0;  // product of shape, kept in step with it
  DType dtype = DType::f32;
  Device device = Device::cpu;
  Layout layout = Layout::plain;
  std::shared_ptr<Storage> storage;
  bool leaf_requires_grad = false;
  bool recorded = false;      // produced by a node on the tape
  std::weak_ptr<Node> node;   // that node; expires when the tape is cleared
  std::shared_ptr<TensorImpl> grad;     // accumulated gradient of a leaf
  std::shared_ptr<TensorImpl> tangent;  // forward-mode tangent carried by this tensor
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Layout layout = Layout::plain,
                      Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Layout layout = Layout::plain,
                      Device device = Device::cpu);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Layout layout = Layout::plain,
                     Device device = Device::cpu);
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype = DType::f32,
                            Layout layout = Layout::plain);
  static Tensor from_labels(const std::vector<int32_t>& labels);
  static Tensor scalar(double value, DType dtype = DType::f32);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int64_t dim(int i) const;  // negative counts from the end
  int rank() const { return static_cast<int>(shape().size()); }
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  Layout layout() const;
  uint64_t id() const;
  std::string describe() const;  // e.g. "f32[2,8,8,3] NHWC cpu"

  // Raw element access; checks dtype and device.
  template <class T>
  T* data();
  template <class T>
  const T* data() const;
  void* raw_data() const;

  double item() const;                    // a one-element tensor's value
  std::vector<double> to_vector() const;  // any floating or integer dtype, as double
  double at(int64_t flat_index) const;
  void set(int64_t flat_index, double value);  // in-place, outside autograd
  // Writes into the storage's values outside the ops (a checkpoint load, an optimiser step, set(), copy_into) count
  // here: a conversion kept of values that have not changed since (a weight cast to the compute dtype once per
  // update instead of once per forward pass: nets::ComputeCopy) is valid while the count stands still. Views that
  // share the storage share the count.
  uint64_t value_version() const;
  void note_value_write() const;

  Tensor to(DType dtype) const;        // converted copy on the same device (not recorded)
  Tensor to(Device device) const;      // copy on another device (not recorded)
  Tensor clone() const;                // copy of the values (not recorded)
  Tensor detach() const;               // shares storage; no node, no grad, no tangent
  Tensor with_layout(Layout l) const;  // shares storage, relabels the layout (not recorded)
  Tensor reshaped(const Shape& shape, Layout l = Layout::plain) const;  // shares storage (not recorded)

  // Leaf gradient flag; a tensor produced by a recorded op requires grad implicitly.
  Tensor& requires_grad_(bool value = true);
  bool requires_grad() const;
  bool is_leaf() const;
  Tensor grad() const;  // undefined until a backward() accumulated into this leaf
  void zero_grad();

  // Forward-mode tangent carried by this tensor (undefined = zero tangent).
  Tensor tangent() const;
  bool has_tangent() const;
  void set_tangent(const Tensor& t);
  void clear_tangent();

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  void check_defined(const char* what) const;
  std::shared_ptr<TensorImpl> impl_;
};

// Calls f(T{}) with T the C++ type of a floating dtype on the CPU (f32 or f64); throws for others.
template <class F>
decltype(auto) dispatch_floating(DType dtype, const char* op, F&& f) {
  if (dtype == DType::f32) return f(float{});
  if (dtype == DType::f64) return f(double{});
  LLR_FAIL(op, ": dtype ", dtype_name(dtype), " is not supported on the CPU (f32 or f64)");
}

}  // namespace llr
