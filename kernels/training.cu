// The CUDA side of the training loop's kernels (train/training_kernels.def): batch gathering with augmentation (one
// kernel: gather, reflect-pad, crop, flip, scale to [0, 1]), the fused SGD update, and the accuracy and non-finite
// counts. Index math comes from train/augment_math.h, shared with the CPU side.
#include <algorithm>
#include <type_traits>

#include "train/augment_math.h"
#include "train/sgd_math.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

namespace {

template <class T>
Tensor count_correct_impl(const Tensor& z, const Tensor& labels) {
  using S = acc_t<T>;
  int64_t n = z.dim(0), k = z.dim(1);
  Tensor out = Tensor::empty({}, stat_dtype(z.dtype()), Layout::plain, Device::cuda);
  const T* pz = ptr<T>(z);
  const int32_t* y = ptr<int32_t>(labels);
  total_sum<S>(n, [=] __device__(int64_t i) {
    auto at = [pz, i, k](int64_t j) { return ld(pz, i * k + j); };
    return math::row_argmax<S>(at, k) == y[i] ? S(1) : S(0);
  }, ptr<S>(out));
  return out;
}

template <class T>
Tensor count_nonfinite_impl(const Tensor& t) {
  Tensor out = Tensor::empty({}, DType::f64, Layout::plain, Device::cuda);
  const T* p = ptr<T>(t);
  total_sum<double>(t.numel(), [=] __device__(int64_t i) { return isfinite(ld(p, i)) ? 0.0 : 1.0; }, ptr<double>(out));
  return out;
}

template <class T>
Tensor gather_images_impl(const Tensor& images, const Tensor& order, int64_t begin, int64_t nb, bool augment,
                          uint64_t seed, uint64_t step) {
  int h = int(images.dim(1)), w = int(images.dim(2)), c = int(images.dim(3));
  Tensor out = Tensor::empty({nb, h, w, c}, dtype_of_storage<T>(), Layout::nhwc, Device::cuda);
  const uint8_t* src = ptr<uint8_t>(images);
  const int32_t* idx = ptr<int32_t>(order) + begin;
  int64_t n_images = images.dim(0);
  T* o = ptr<T>(out);
  for_each(out.numel(), [=] __device__(int64_t i) {
    int k = int(i % c);
    int64_t pix = i / c;
    int x = int(pix % w), y = int((pix / w) % h);
    int64_t b = pix / (int64_t(w) * h);
    int row = y, col = x;
    if (augment) augment::source(augment::params(seed, step, b), y, x, h, w, &row, &col);
    int64_t img = idx[b];
    if (img < 0 || img >= n_images) {  // out-of-range index: poison rather than read out of bounds
      st(o, i, acc_t<T>(NAN));
      return;
    }
    st(o, i, acc_t<T>(src[((img * h + row) * w + col) * c + k]) / acc_t<T>(255));
  });
  return out;
}

// Up to kSgdTensors parameters per launch, in the kernel's arguments (about 2.4 KB: under the 4 KB every CUDA version
// takes); each element finds its tensor by binary search over the running element counts. C: the dtype of the
// parameters' copies (c[k] null where a parameter has none).
constexpr int kSgdTensors = 48;
template <class T, class C>
struct SgdTensors {
  T* p[kSgdTensors];
  const T* g[kSgdTensors];
  T* m[kSgdTensors];
  C* c[kSgdTensors];
  acc_t<T> wd[kSgdTensors];
  int64_t end[kSgdTensors];  // elements of tensors 0..k together
  int count = 0;
};

template <class T, class C>
void sgd_launch(const SgdTensors<T, C>& c, double lr, double momentum, bool nesterov, bool first, double* bad) {
  using S = acc_t<T>;
  const S lr_ = S(lr), mo = S(momentum);
  for_each(c.end[c.count - 1], [=] __device__(int64_t i) {
    int lo = 0, hi = c.count - 1;
    while (lo < hi) {
      int mid = (lo + hi) / 2;
      if (c.end[mid] > i) hi = mid;
      else lo = mid + 1;
    }
    const int64_t j = i - (lo ? c.end[lo - 1] : 0);
    S mj = ld(c.m[lo], j);
    S updated = sgd_math::update(ld(c.p[lo], j), ld(c.g[lo], j), mj, lr_, mo, c.wd[lo], nesterov, first);
    st(c.m[lo], j, mj);
    st(c.p[lo], j, updated);
    // Rounded as convert_pair rounds a cast: through the wide value to the copy's accumulation type, then stored.
    if (c.c[lo]) st(c.c[lo], j, static_cast<acc_t<C>>(static_cast<double>(updated)));
    if (!isfinite(updated)) atomicAdd(bad, 1.0);  // only a diverging run pays for the atomics
  });
}

template <class T, class C>
void sgd_tensors(std::vector<Tensor>& params, const std::vector<Tensor>& grads, std::vector<Tensor>& buffers,
                 std::vector<Tensor>& copies, const std::vector<double>& weight_decay, double lr, double momentum,
                 bool nesterov, bool first, Tensor& nonfinite) {
  double* bad = ptr<double>(nonfinite);
  SgdTensors<T, C> c;
  int64_t total = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    if (params[k].numel() == 0) continue;
    c.p[c.count] = ptr<T>(params[k]);
    c.g[c.count] = ptr<T>(grads[k]);
    c.m[c.count] = ptr<T>(buffers[k]);
    c.c[c.count] = copies[k].defined() ? ptr<C>(copies[k]) : nullptr;
    c.wd[c.count] = acc_t<T>(weight_decay[k]);
    total += params[k].numel();
    c.end[c.count] = total;
    if (++c.count == kSgdTensors) {
      sgd_launch(c, lr, momentum, nesterov, first, bad);
      c.count = 0;
      total = 0;
    }
  }
  if (c.count > 0) sgd_launch(c, lr, momentum, nesterov, first, bad);
}

// The copies' dtype (the checks in training_kernels.cpp allow one, narrower than the parameters'): bf16 copies of f32
// or f64 parameters, or f32 copies of f64 ones; none (then C = T, never written).
template <class T>
void sgd_impl(std::vector<Tensor>& params, const std::vector<Tensor>& grads, std::vector<Tensor>& buffers,
              std::vector<Tensor>& copies, const std::vector<double>& weight_decay, double lr, double momentum,
              bool nesterov, bool first, Tensor& nonfinite) {
  auto copy = std::find_if(copies.begin(), copies.end(), [](const Tensor& t) { return t.defined(); });
  if (copy != copies.end() && copy->dtype() == DType::bf16)
    return sgd_tensors<T, bf16>(params, grads, buffers, copies, weight_decay, lr, momentum, nesterov, first, nonfinite);
  if constexpr (!std::is_same_v<T, float>)
    if (copy != copies.end())
      return sgd_tensors<T, float>(params, grads, buffers, copies, weight_decay, lr, momentum, nesterov, first,
                                   nonfinite);
  sgd_tensors<T, T>(params, grads, buffers, copies, weight_decay, lr, momentum, nesterov, first, nonfinite);
}

}  // namespace

Tensor CudaTrainingKernels::count_correct(const Tensor& z, const Tensor& labels) {
  return LLR_CUDA_DISPATCH(z.dtype(), "count_correct", count_correct_impl, z, labels);
}

Tensor CudaTrainingKernels::count_nonfinite(const Tensor& t) {
  return LLR_CUDA_DISPATCH(t.dtype(), "count_nonfinite", count_nonfinite_impl, t);
}

void CudaTrainingKernels::mark_first_step(Tensor& marker, const Tensor& count, int64_t step) {
  double* m = ptr<double>(marker);
  const double* c = ptr<double>(count);
  for_each(1, [=] __device__(int64_t) {
    if (*m < 0 && *c != 0) *m = double(step);
  });
}

Tensor CudaTrainingKernels::gather_images(const Tensor& images, const Tensor& order, int64_t begin, int64_t count,
                                  bool augment, uint64_t seed, uint64_t step, DType dtype) {
  return LLR_CUDA_DISPATCH(dtype, "gather_images", gather_images_impl, images, order, begin, count, augment, seed,
                           step);
}

Tensor CudaTrainingKernels::gather_labels(const Tensor& labels, const Tensor& order, int64_t begin, int64_t count) {
  Tensor out = Tensor::empty({count}, DType::i32, Layout::plain, Device::cuda);
  const int32_t *l = ptr<int32_t>(labels), *idx = ptr<int32_t>(order) + begin;
  int32_t* o = ptr<int32_t>(out);
  int64_t n = labels.numel();
  for_each(count, [=] __device__(int64_t b) { o[b] = (idx[b] >= 0 && idx[b] < n) ? l[idx[b]] : -1; });
  return out;
}

void CudaTrainingKernels::sgd_update(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                                     std::vector<Tensor>& buffers, std::vector<Tensor>& copies,
                                     const std::vector<double>& weight_decay, double lr, double momentum,
                                     bool nesterov, bool first_step, Tensor& nonfinite) {
  if (params.empty()) return;
  LLR_CUDA_DISPATCH(params[0].dtype(), "sgd_update", sgd_impl, params, grads, buffers, copies, weight_decay, lr,
                    momentum, nesterov, first_step, nonfinite);
}

}  // namespace llr::cuda
