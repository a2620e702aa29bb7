#include "train/optimizer.h"

#include <optional>

#include "engine/backend.h"
#include "train/training_kernels.h"

namespace llr {

Sgd::Sgd(nets::Model& model, SgdOptions options) : options_(options) {
  for (const nets::NamedTensor& e : model.registry().entries()) {
    if (e.kind == nets::TensorKind::buffer) continue;
    params_.push_back(e.tensor);
    compute_.push_back(e.compute);
    decay_.push_back(e.kind == nets::TensorKind::weight);
    buffers_.push_back(Tensor::zeros(e.tensor.shape(), e.tensor.dtype(), e.tensor.layout(), e.tensor.device()));
    if (!nonfinite_.defined()) nonfinite_ = Tensor::zeros({}, DType::f64, Layout::plain, e.tensor.device());
  }
}

void Sgd::step(const std::vector<Tensor>& grads, double lr) {
  LLR_CHECK(grads.size() == params_.size(), "Sgd::step: ", grads.size(), " gradients for ", params_.size(),
            " parameters");
  if (params_.empty()) return;
  std::vector<Tensor> params, copies;  // updated in place, outside the tape
  std::vector<double> decay;
  std::optional<DType> copy_dtype;
  for (size_t i = 0; i < params_.size(); ++i) {
    params.push_back(params_[i].detach());
    // The update writes copies of one dtype, narrower than the parameters' (what bf16 training makes); any others
    // are converted as they are used.
    Tensor copy = compute_[i] ? compute_[i]->target() : Tensor();
    if (copy.defined() && !copy_dtype && dtype_size(copy.dtype()) < dtype_size(params_[i].dtype()))
      copy_dtype = copy.dtype();
    copies.push_back(copy.defined() && copy.dtype() == copy_dtype ? copy : Tensor());
    decay.push_back(decay_[i] ? options_.weight_decay : 0.0);
  }
  training::sgd_update(params, grads, buffers_, copies, decay, lr, options_.momentum, options_.nesterov, steps_ == 0,
                       nonfinite_);
  ++steps_;
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].note_value_write();
    if (copies[i].defined()) compute_[i]->written(params[i]);
  }
}

}  // namespace llr
