// The CPU side of the training loop's kernels (training_kernels.def): batch gathering with augmentation (the
// per-element math of augment_math.h, shared with kernels/training.cu), the SGD update and the device-side counts.
// Arguments were checked by the dispatch; indices are checked here, where reading them is free.
#include <cmath>

#include "engine/elementwise_math.h"
#include "train/augment_math.h"
#include "train/sgd_math.h"
#include "train/training_kernels.h"

namespace llr {

namespace {

class CpuTrainingKernels final : public TrainingKernels {
 public:
#define LLR_KERNEL LLR_DECLARE_OVERRIDE
#include "train/training_kernels.def"
#undef LLR_KERNEL
};

// The indices order[begin .. begin+count), checked against the source's first axis.
const int32_t* check_gather(const char* op, const Tensor& source, const Tensor& order, int64_t begin, int64_t count) {
  const int32_t* idx = order.data<int32_t>() + begin;
  for (int64_t b = 0; b < count; ++b)
    LLR_CHECK(idx[b] >= 0 && idx[b] < source.dim(0), op, ": index ", idx[b], " outside [0, ", source.dim(0), ")");
  return idx;
}
}  // namespace

namespace {
// The CPU's training kernels as an open CPU recording reaches them (engine/graph.h).
class RecordingCpuTrainingKernels final : public TrainingKernels {
 public:
  explicit RecordingCpuTrainingKernels(TrainingKernels& inner) : inner_(inner) {}
  template <class R>
  static void after_replay(const char*, R&) {}
#define LLR_KERNEL LLR_DECLARE_RECORDED
#include "train/training_kernels.def"
#undef LLR_KERNEL

 private:
  TrainingKernels& inner_;
};
}  // namespace

TrainingKernels& training_kernels_for(Device device) {
  static CpuTrainingKernels cpu;
  static RecordingCpuTrainingKernels recording(cpu);
  return dispatch::for_device<TrainingKernels>(device, cpu, recording, "training kernels");
}

Tensor CpuTrainingKernels::count_correct(const Tensor& z, const Tensor& labels) {
  return dispatch_floating(z.dtype(), "count_correct", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = z.dim(0), k = z.dim(1), correct = 0;
    const T* p = z.data<T>();
    for (int64_t i = 0; i < n; ++i)
      correct += math::row_argmax<T>([p, i, k](int64_t j) { return p[i * k + j]; }, k) == labels.data<int32_t>()[i];
    return Tensor::scalar(double(correct), z.dtype());
  });
}

Tensor CpuTrainingKernels::count_nonfinite(const Tensor& t) {
  return dispatch_floating(t.dtype(), "count_nonfinite", [&](auto tag) {
    using T = decltype(tag);
    const T* p = t.data<T>();
    int64_t bad = 0;
    for (int64_t i = 0, n = t.numel(); i < n; ++i) bad += !std::isfinite(p[i]);
    return Tensor::scalar(double(bad), DType::f64);
  });
}

void CpuTrainingKernels::mark_first_step(Tensor& marker, const Tensor& count, int64_t step) {
  double* m = marker.data<double>();
  if (*m < 0 && count.data<double>()[0] != 0) *m = double(step);
}

Tensor CpuTrainingKernels::gather_images(const Tensor& images, const Tensor& order, int64_t begin, int64_t count,
                                 bool augment, uint64_t seed, uint64_t step, DType dtype) {
  const int32_t* idx = check_gather("gather_images", images, order, begin, count);
  int64_t nb = count, h = images.dim(1), w = images.dim(2), c = images.dim(3);
  const uint8_t* src = images.data<uint8_t>();
  Tensor out = Tensor::empty({nb, h, w, c}, dtype, Layout::nhwc);
  dispatch_floating(dtype, "gather_images", [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data<T>();
    for (int64_t b = 0; b < nb; ++b) {
      augment::Params p = augment ? augment::params(seed, step, b) : augment::Params{augment::kPad, augment::kPad, false};
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          int row = y, col = x;
          if (augment) augment::source(p, y, x, int(h), int(w), &row, &col);
          const uint8_t* px = src + ((idx[b] * h + row) * w + col) * c;
          T* q = o + ((b * h + y) * w + x) * c;
          for (int64_t k = 0; k < c; ++k) q[k] = static_cast<T>(px[k]) / T(255);
        }
    }
    return 0;
  });
  return out;
}

Tensor CpuTrainingKernels::gather_labels(const Tensor& labels, const Tensor& order, int64_t begin, int64_t count) {
  const int32_t* idx = check_gather("gather_labels", labels, order, begin, count);
  Tensor out = Tensor::empty({count}, DType::i32);
  for (int64_t b = 0; b < count; ++b) out.data<int32_t>()[b] = labels.data<int32_t>()[idx[b]];
  return out;
}

void CpuTrainingKernels::sgd_update(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                                    std::vector<Tensor>& buffers, std::vector<Tensor>& copies,
                                    const std::vector<double>& weight_decay, double lr, double momentum, bool nesterov,
                                    bool first_step, Tensor& nonfinite) {
  // The CPU's only narrower floating dtype: f32 copies of f64 parameters (refused before anything is written).
  for (const Tensor& c : copies)
    LLR_CHECK(!c.defined() || c.dtype() == DType::f32, "sgd_update: the CPU writes f32 copies only, got ",
              c.describe());
  int64_t bad = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    dispatch_floating(params[k].dtype(), "sgd_update", [&](auto tag) {
      using T = decltype(tag);
      T *p = params[k].data<T>(), *m = buffers[k].data<T>();
      const T* g = grads[k].data<T>();
      float* c = copies[k].defined() ? copies[k].data<float>() : nullptr;
      const T lr_ = T(lr), mo = T(momentum), wd = T(weight_decay[k]);
      const int64_t n_ = params[k].numel();
#pragma omp parallel for reduction(+ : bad) schedule(static) if (n_ > (1 << 16))
      for (int64_t i = 0; i < n_; ++i) {
        p[i] = sgd_math::update(p[i], g[i], m[i], lr_, mo, wd, nesterov, first_step);
        if (c) c[i] = static_cast<float>(p[i]);
        bad += !std::isfinite(p[i]);
      }
      return 0;
    });
  }
  nonfinite.data<double>()[0] += double(bad);
}

}  // namespace llr
