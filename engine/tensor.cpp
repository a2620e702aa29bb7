#include "engine/tensor.h"

#include "engine/backend.h"
#include "engine/graph.h"
#include "engine/profile.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace llr {

namespace {
std::atomic<uint64_t> next_tensor_id{1};
DeviceAllocator* device_allocator_ = nullptr;
}  // namespace

namespace {
std::atomic<size_t> host_in_use{0}, host_peak{0};
void host_allocated(size_t bytes) {
  size_t now = host_in_use += bytes;
  size_t peak = host_peak.load();
  while (now > peak && !host_peak.compare_exchange_weak(peak, now)) {
  }
}
}  // namespace

HostMemoryStats host_memory_stats() { return {host_in_use.load(), host_peak.load()}; }
void reset_host_memory_peak() { host_peak = host_in_use.load(); }
size_t host_memory_available() {
  long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

void register_device_allocator(DeviceAllocator* allocator) { device_allocator_ = allocator; }

namespace memory {
namespace {
using Key = std::pair<const char*, const char*>;  // phase, op (static strings: compared by address)
struct Ledger {
  std::map<Key, size_t> live, at_peak;
  size_t total = 0, peak = 0;
};
std::atomic<bool> ledger_enabled{false};
std::mutex ledger_mutex;
Ledger ledgers[2];  // cpu, cuda
Ledger& ledger_of(Device d) { return ledgers[d == Device::cpu ? 0 : 1]; }

void ledger_add(Device d, Key k, size_t bytes) {
  std::lock_guard<std::mutex> lock(ledger_mutex);
  Ledger& l = ledger_of(d);
  l.live[k] += bytes;
  l.total += bytes;
  if (l.total > l.peak) {
    l.peak = l.total;
    l.at_peak = l.live;
  }
}

void ledger_remove(Device d, Key k, size_t bytes) {
  std::lock_guard<std::mutex> lock(ledger_mutex);
  Ledger& l = ledger_of(d);
  auto it = l.live.find(k);
  if (it == l.live.end()) return;
  it->second -= std::min(it->second, bytes);
  l.total -= std::min(l.total, bytes);
}
}  // namespace

void set_ledger(bool on) { ledger_enabled = on; }
bool ledger_on() { return ledger_enabled.load(); }

void reset_ledger_peak() {
  std::lock_guard<std::mutex> lock(ledger_mutex);
  for (Ledger& l : ledgers) {
    l.peak = l.total;
    l.at_peak = l.live;
  }
}

LedgerPeak ledger_peak(Device device) {
  std::lock_guard<std::mutex> lock(ledger_mutex);
  const Ledger& l = ledger_of(device);
  LedgerPeak out;
  out.total = l.peak;
  // By name: the same literal may sit at different addresses in different translation units.
  std::map<std::pair<std::string, std::string>, size_t> by_name;
  for (const auto& [k, bytes] : l.at_peak) by_name[{k.first ? k.first : "-", k.second ? k.second : "-"}] += bytes;
  for (const auto& [names, bytes] : by_name)
    if (bytes > 0) out.entries.push_back({names.first, names.second, bytes});
  std::sort(out.entries.begin(), out.entries.end(),
            [](const LedgerEntry& a, const LedgerEntry& b) { return a.bytes > b.bytes; });
  return out;
}
}  // namespace memory

DeviceAllocator* device_allocator() { return device_allocator_; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    LLR_CHECK(d >= 0, "negative dimension in shape ", shape_str(s));
    n *= d;
  }
  return n;
}

// A CPU step frees and reallocates the same activation-sized blocks over and over. glibc's defaults hand blocks of a
// few MB back to the kernel (mmap, or trimming the heap's top) and fault them in again, zeroed, on the next step: a
// quarter of a million page faults per WRN-10-1 PGD-10 step, 5-10% of its time. Keep freed memory below 32 MB a block
// in the process (the largest mmap threshold glibc takes) and never trim the heap.
namespace {
bool keep_host_heap() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  return true;
}
}  // namespace

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (device == Device::cuda) {
    LLR_CHECK(device_allocator_ != nullptr,
              "no CUDA allocator: this build has no CUDA support, or llr::cuda::init() was not called");
    data_ = device_allocator_->allocate(bytes);
  } else {
    static const bool heap_tuned = keep_host_heap();
    (void)heap_tuned;
    size_t rounded = (bytes + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    LLR_CHECK(data_ != nullptr, "out of host memory allocating ", bytes, " bytes");
    host_allocated(bytes_);
  }
  if (memory::ledger_on()) {
    op_ = profile::detail::current_op;
    phase_ = profile::detail::current_phase;
    in_ledger_ = true;
    memory::ledger_add(device, {phase_, op_}, bytes);
  }
}

Storage::~Storage() {
  if (in_ledger_) memory::ledger_remove(device_, {phase_, op_}, bytes_);
  if (device_ == Device::cuda)
    device_allocator_->deallocate(data_, bytes_);
  else {
    std::free(data_);
    host_in_use -= bytes_;
  }
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Layout layout, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  impl->id = next_tensor_id++;
  impl->shape = shape;
  impl->numel = shape_numel(shape);
  impl->dtype = dtype;
  impl->device = device;
  impl->layout = layout;
  if (layout == Layout::nhwc || layout == Layout::nchw || layout == Layout::krsc || layout == Layout::kcrs)
    LLR_CHECK(shape.size() == 4, "layout ", layout_name(layout), " needs a rank-4 shape, got ", shape_str(shape));
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(impl->numel) * dtype_size(dtype), device);
  return Tensor(impl);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Layout layout, Device device) {
  Tensor t = empty(shape, dtype, layout, device);
  if (device == Device::cpu && !graph::detail::cpu_recording())
    std::memset(t.raw_data(), 0, t.numel() * dtype_size(dtype));
  else
    backend_for(device).fill(t, 0.0);
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Layout layout, Device device) {
  Tensor t = empty(shape, dtype, layout, device);
  backend_for(device).fill(t, value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Layout layout) {
  LLR_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
            " values for shape ", shape_str(shape));
  Tensor t = empty(shape, dtype, layout);
  for (size_t i = 0; i < values.size(); ++i) t.set(static_cast<int64_t>(i), values[i]);
  return t;
}

Tensor Tensor::from_labels(const std::vector<int32_t>& labels) {
  Tensor t = empty({static_cast<int64_t>(labels.size())}, DType::i32);
  std::memcpy(t.raw_data(), labels.data(), labels.size() * sizeof(int32_t));
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

void Tensor::check_defined(const char* what) const {
  LLR_CHECK(impl_ != nullptr, what, " on an undefined tensor");
}

const Shape& Tensor::shape() const {
  check_defined("shape()");
  return impl_->shape;
}

int64_t Tensor::dim(int i) const {
  const Shape& s = shape();
  int n = static_cast<int>(s.size());
  int j = i < 0 ? i + n : i;
  LLR_CHECK(j >= 0 && j < n, "dim(", i, ") out of range for shape ", shape_str(s));
  return s[j];
}

int64_t Tensor::numel() const {
  check_defined("numel()");
  return impl_->numel;
}
DType Tensor::dtype() const {
  check_defined("dtype()");
  return impl_->dtype;
}
Device Tensor::device() const {
  check_defined("device()");
  return impl_->device;
}
Layout Tensor::layout() const {
  check_defined("layout()");
  return impl_->layout;
}
uint64_t Tensor::id() const {
  check_defined("id()");
  return impl_->id;
}

std::string Tensor::describe() const {
  if (!impl_) return "undefined";
  std::ostringstream os;
  os << dtype_name(impl_->dtype) << shape_str(impl_->shape);
  if (impl_->layout != Layout::plain) os << " " << layout_name(impl_->layout);
  os << " " << device_name(impl_->device);
  return os.str();
}

void* Tensor::raw_data() const {
  check_defined("data()");
  return impl_->storage->data();
}

template <class T>
T* Tensor::data() {
  check_defined("data()");
  LLR_CHECK(impl_->dtype == dtype_of<T>::value, "data<", dtype_name(dtype_of<T>::value), ">() on a ",
            describe(), " tensor");
  LLR_CHECK(impl_->device == Device::cpu, "host access to a CUDA tensor; copy it to the CPU first");
  return static_cast<T*>(impl_->storage->data());
}

template <class T>
const T* Tensor::data() const {
  return const_cast<Tensor*>(this)->data<T>();
}

template float* Tensor::data<float>();
template double* Tensor::data<double>();
template int32_t* Tensor::data<int32_t>();
template uint8_t* Tensor::data<uint8_t>();
template const float* Tensor::data<float>() const;
template const double* Tensor::data<double>() const;
template const int32_t* Tensor::data<int32_t>() const;
template const uint8_t* Tensor::data<uint8_t>() const;

double Tensor::at(int64_t i) const {
  LLR_CHECK(i >= 0 && i < numel(), "index ", i, " out of range for ", describe());
  LLR_CHECK(device() == Device::cpu, "host access to a CUDA tensor");
  switch (dtype()) {
    case DType::f32: return data<float>()[i];
    case DType::f64: return data<double>()[i];
    case DType::i32: return data<int32_t>()[i];
    case DType::u8: return data<uint8_t>()[i];
    case DType::bf16: break;
  }
  LLR_FAIL("element access to a bf16 tensor on the CPU");
}

uint64_t Tensor::value_version() const {
  check_defined("value_version()");
  return impl_->storage ? impl_->storage->version() : 0;
}

void Tensor::note_value_write() const {
  check_defined("note_value_write()");
  if (impl_->storage) impl_->storage->note_write();
}

void Tensor::set(int64_t i, double value) {
  graph::detail::check_no_host_write("Tensor::set()");
  note_value_write();
  LLR_CHECK(i >= 0 && i < numel(), "index ", i, " out of range for ", describe());
  switch (dtype()) {
    case DType::f32: data<float>()[i] = static_cast<float>(value); return;
    case DType::f64: data<double>()[i] = value; return;
    case DType::i32: data<int32_t>()[i] = static_cast<int32_t>(value); return;
    case DType::u8: data<uint8_t>()[i] = static_cast<uint8_t>(value); return;
    case DType::bf16: break;
  }
  LLR_FAIL("element access to a bf16 tensor on the CPU");
}

double Tensor::item() const {
  graph::check_not_recording("Tensor::item()");
  LLR_CHECK(numel() == 1, "item() on ", describe(), ", which has ", numel(), " elements");
  return at(0);
}

std::vector<double> Tensor::to_vector() const {
  graph::check_not_recording("Tensor::to_vector()");
  std::vector<double> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[i] = at(i);
  return v;
}

Tensor Tensor::to(DType dtype) const {
  check_defined("to()");
  if (dtype == impl_->dtype) return clone();
  return backend::convert(*this, dtype);
}

Tensor Tensor::to(Device device) const {
  check_defined("to()");
  if (device == Device::cpu || this->device() == Device::cpu)
    graph::check_not_recording("a copy between host and device");
  return to_device(*this, device);
}

Tensor Tensor::clone() const {
  check_defined("clone()");
  return to_device(*this, device());
}

Tensor Tensor::detach() const {
  check_defined("detach()");
  auto impl = std::make_shared<TensorImpl>();
  impl->id = next_tensor_id++;
  impl->shape = impl_->shape;
  impl->numel = impl_->numel;
  impl->dtype = impl_->dtype;
  impl->device = impl_->device;
  impl->layout = impl_->layout;
  impl->storage = impl_->storage;
  return Tensor(impl);
}

Tensor Tensor::with_layout(Layout l) const {
  Tensor t = detach();
  if (l == Layout::nhwc || l == Layout::nchw || l == Layout::krsc || l == Layout::kcrs)
    LLR_CHECK(rank() == 4, "layout ", layout_name(l), " needs a rank-4 tensor, got ", describe());
  t.impl_->layout = l;
  return t;
}

Tensor Tensor::reshaped(const Shape& new_shape, Layout l) const {
  LLR_CHECK(shape_numel(new_shape) == numel(), "reshape of ", describe(), " to ", shape_str(new_shape),
            " changes the number of elements");
  Tensor t = detach();
  t.impl_->shape = new_shape;
  t.impl_->numel = shape_numel(new_shape);
  return t.with_layout(l);
}

Tensor& Tensor::requires_grad_(bool value) {
  check_defined("requires_grad_()");
  LLR_CHECK(!impl_->recorded, "requires_grad_() on a tensor produced by a recorded op; detach() it first");
  LLR_CHECK(!value || is_floating(impl_->dtype), "only floating tensors can require grad, got ", describe());
  impl_->leaf_requires_grad = value;
  return *this;
}

bool Tensor::requires_grad() const { return impl_ && (impl_->leaf_requires_grad || impl_->recorded); }
bool Tensor::is_leaf() const { return impl_ && !impl_->recorded; }

Tensor Tensor::grad() const {
  check_defined("grad()");
  return Tensor(impl_->grad);
}

void Tensor::zero_grad() {
  check_defined("zero_grad()");
  impl_->grad.reset();
}

Tensor Tensor::tangent() const {
  check_defined("tangent()");
  return Tensor(impl_->tangent);
}

bool Tensor::has_tangent() const { return impl_ && impl_->tangent != nullptr; }

void Tensor::set_tangent(const Tensor& t) {
  check_defined("set_tangent()");
  if (!t.defined()) {
    impl_->tangent.reset();
    return;
  }
  LLR_CHECK(t.shape() == shape(), "tangent shape ", shape_str(t.shape()), " does not match tensor ", describe());
  LLR_CHECK(t.dtype() == dtype(), "tangent dtype ", dtype_name(t.dtype()), " does not match tensor ", describe());
  LLR_CHECK(t.device() == device(), "tangent device does not match tensor ", describe());
  impl_->tangent = t.impl_ptr();
}

void Tensor::clear_tangent() {
  check_defined("clear_tangent()");
  impl_->tangent.reset();
}

}  // namespace llr
