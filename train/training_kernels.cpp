// The argument checks of the training loop's kernels (training_kernels.def), run by the dispatch before any device's
// implementation.
#include "train/training_kernels.h"

#include <cmath>

#include "train/augment_math.h"

namespace llr::training_check {

namespace {

void order_range(const char* op, const Tensor& order, int64_t begin, int64_t count) {
  LLR_CHECK(order.defined() && order.dtype() == DType::i32 && order.rank() == 1, op, ": order must be i32 [M], got ",
            order.defined() ? order.describe() : "undefined");
  LLR_CHECK(begin >= 0 && count >= 0 && begin + count <= order.numel(), op, ": rows [", begin, ", ", begin + count,
            ") outside an order of ", order.numel());
}

}  // namespace

void count_correct(const Tensor& z, const Tensor& labels) {
  LLR_CHECK(z.defined() && is_floating(z.dtype()) && z.rank() == 2, "count_correct: logits must be floating [N, K], got ",
            z.defined() ? z.describe() : "undefined");
  LLR_CHECK(labels.defined() && labels.dtype() == DType::i32 && labels.rank() == 1 && labels.dim(0) == z.dim(0),
            "count_correct: labels must be i32 [", z.dim(0), "], got ",
            labels.defined() ? labels.describe() : "undefined");
}

void count_nonfinite(const Tensor& t) {
  LLR_CHECK(t.defined() && is_floating(t.dtype()), "count_nonfinite: expected a floating tensor, got ",
            t.defined() ? t.describe() : "undefined");
}

void mark_first_step(Tensor& marker, const Tensor& count, int64_t) {
  for (const Tensor* t : {static_cast<const Tensor*>(&marker), &count})
    LLR_CHECK(t->defined() && t->dtype() == DType::f64 && t->numel() == 1,
              "mark_first_step: marker and count must be one f64 element each, got ",
              t->defined() ? t->describe() : "undefined");
}

void gather_images(const Tensor& images, const Tensor& order, int64_t begin, int64_t count, bool augment, uint64_t,
                   uint64_t, DType dtype) {
  LLR_CHECK(images.defined() && images.dtype() == DType::u8 && images.layout() == Layout::nhwc,
            "gather_images: images must be u8 NHWC, got ", images.defined() ? images.describe() : "undefined");
  order_range("gather_images", order, begin, count);
  LLR_CHECK(!augment || (images.dim(1) > augment::kPad && images.dim(2) > augment::kPad),
            "gather_images: images too small to augment");
  LLR_CHECK(is_floating(dtype), "gather_images: batches are floating, not ", dtype_name(dtype));
}

void gather_labels(const Tensor& labels, const Tensor& order, int64_t begin, int64_t count) {
  LLR_CHECK(labels.defined() && labels.dtype() == DType::i32 && labels.rank() == 1,
            "gather_labels: labels must be i32 [N], got ", labels.defined() ? labels.describe() : "undefined");
  order_range("gather_labels", order, begin, count);
}

void sgd_update(std::vector<Tensor>& params, const std::vector<Tensor>& grads, std::vector<Tensor>& buffers,
                std::vector<Tensor>& copies, const std::vector<double>& weight_decay, double lr, double momentum, bool,
                bool, Tensor& nonfinite) {
  LLR_CHECK(nonfinite.defined() && nonfinite.dtype() == DType::f64 && nonfinite.numel() == 1,
            "sgd_update: the non-finite counter must be one f64 element, got ",
            nonfinite.defined() ? nonfinite.describe() : "undefined");
  LLR_CHECK(grads.size() == params.size() && buffers.size() == params.size() && copies.size() == params.size() &&
                weight_decay.size() == params.size(),
            "sgd_update: ", params.size(), " parameters with ", grads.size(), " gradients, ", buffers.size(),
            " momentum buffers, ", copies.size(), " copies and ", weight_decay.size(), " weight decays");
  const Tensor* first_copy = nullptr;
  for (size_t k = 0; k < params.size(); ++k) {
    const Tensor& param = params[k];
    for (const Tensor* t : std::initializer_list<const Tensor*>{&param, &grads[k], &buffers[k]}) {
      LLR_CHECK(t->defined() && is_floating(t->dtype()) && t->dtype() == params[0].dtype(),
                "sgd_update: parameters, gradients and momentum must be floating of one dtype, got ",
                t->defined() ? t->describe() : "undefined", " for ", param.describe());
      LLR_CHECK(t->shape() == param.shape(), "sgd_update: shape mismatch, ", param.describe(), " vs ", t->describe());
      LLR_CHECK(t->device() == nonfinite.device(), "sgd_update: ", t->describe(), " is not on the ",
                device_name(nonfinite.device()), " like the non-finite counter");
    }
    LLR_CHECK(std::isfinite(weight_decay[k]), "sgd_update: non-finite weight decay ", weight_decay[k]);
    const Tensor& copy = copies[k];
    if (!copy.defined()) continue;
    if (!first_copy) first_copy = &copy;
    LLR_CHECK(is_floating(copy.dtype()) && dtype_size(copy.dtype()) < dtype_size(param.dtype()) &&
                  copy.dtype() == first_copy->dtype() && copy.shape() == param.shape() &&
                  copy.layout() == param.layout() && copy.device() == param.device() &&
                  copy.raw_data() != param.raw_data(),
              "sgd_update: the copy ", copy.describe(), " of ", param.describe(),
              " must be a narrower floating tensor of its shape, layout and device (one dtype for all copies)");
  }
  LLR_CHECK(std::isfinite(lr) && std::isfinite(momentum), "sgd_update: non-finite hyperparameters (lr ", lr,
            ", momentum ", momentum, ")");
}

}  // namespace llr::training_check
