// CPU backend: batch gathering with augmentation, and the SGD update.
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/cpu_common.h"
#include "engine/augment_math.h"

namespace llr {

namespace {
// The indices order[begin .. begin+count), checked against the source's first axis.
const int32_t* check_gather(const char* op, const Tensor& source, const Tensor& order, int64_t begin, int64_t count) {
  LLR_CHECK(order.dtype() == DType::i32 && order.rank() == 1, op, ": order must be i32 [M], got ", order.describe());
  LLR_CHECK(order.device() == source.device(), op, ": order and data on different devices");
  LLR_CHECK(begin >= 0 && count >= 0 && begin + count <= order.numel(), op, ": rows [", begin, ", ", begin + count,
            ") outside an order of ", order.numel());
  const int32_t* idx = order.data<int32_t>() + begin;
  for (int64_t b = 0; b < count; ++b)
    LLR_CHECK(idx[b] >= 0 && idx[b] < source.dim(0), op, ": index ", idx[b], " outside [0, ", source.dim(0), ")");
  return idx;
}
}  // namespace

Tensor CpuBackend::count_correct(const Tensor& z, const Tensor& labels) {
  cpu::require_cpu_floating("count_correct", {&z});
  LLR_CHECK(z.rank() == 2, "count_correct: logits must be [N, K], got ", z.describe());
  cpu::require_labels("count_correct", labels, z.dim(0), z.dim(1));
  return dispatch_floating(z.dtype(), "count_correct", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = z.dim(0), k = z.dim(1), correct = 0;
    const T* p = z.data<T>();
    for (int64_t i = 0; i < n; ++i)
      correct += math::row_argmax<T>([p, i, k](int64_t j) { return p[i * k + j]; }, k) == labels.data<int32_t>()[i];
    return Tensor::scalar(double(correct), z.dtype());
  });
}

Tensor CpuBackend::gather_images(const Tensor& images, const Tensor& order, int64_t begin, int64_t count,
                                 bool augment, uint64_t seed, uint64_t step, DType dtype) {
  LLR_CHECK(images.dtype() == DType::u8 && images.layout() == Layout::nhwc, "gather_images: images must be u8 NHWC, got ",
            images.describe());
  const int32_t* idx = check_gather("gather_images", images, order, begin, count);
  int64_t nb = count, h = images.dim(1), w = images.dim(2), c = images.dim(3);
  LLR_CHECK(!augment || (h > augment::kPad && w > augment::kPad), "gather_images: images too small to augment");
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

Tensor CpuBackend::gather_labels(const Tensor& labels, const Tensor& order, int64_t begin, int64_t count) {
  LLR_CHECK(labels.dtype() == DType::i32 && labels.rank() == 1, "gather_labels: labels must be i32 [N], got ",
            labels.describe());
  const int32_t* idx = check_gather("gather_labels", labels, order, begin, count);
  Tensor out = Tensor::empty({count}, DType::i32);
  for (int64_t b = 0; b < count; ++b) out.data<int32_t>()[b] = labels.data<int32_t>()[idx[b]];
  return out;
}

void CpuBackend::sgd_update(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, double lr, double momentum,
                            double weight_decay, bool nesterov, bool first_step) {
  cpu::require_cpu_floating("sgd_update", {&param, &grad, &momentum_buffer});
  cpu::require_same_shape("sgd_update", param, grad);
  cpu::require_same_shape("sgd_update", param, momentum_buffer);
  dispatch_floating(param.dtype(), "sgd_update", [&](auto tag) {
    using T = decltype(tag);
    T *p = param.data<T>(), *m = momentum_buffer.data<T>();
    const T* g = grad.data<T>();
    for (int64_t i = 0, n_ = param.numel(); i < n_; ++i) {
      T gi = g[i] + T(weight_decay) * p[i];
      m[i] = first_step ? gi : T(momentum) * m[i] + gi;
      p[i] -= T(lr) * (nesterov ? gi + T(momentum) * m[i] : m[i]);
    }
    return 0;
  });
}

}  // namespace llr
