#include "train/optimizer.h"

#include "engine/backend.h"
#include "train/training_kernels.h"

namespace llr {

Sgd::Sgd(nets::Model& model, SgdOptions options) : options_(options) {
  for (const nets::NamedTensor& e : model.registry().entries()) {
    if (e.kind == nets::TensorKind::buffer) continue;
    params_.push_back(e.tensor);
    decay_.push_back(e.kind == nets::TensorKind::weight);
    buffers_.push_back(Tensor::zeros(e.tensor.shape(), e.tensor.dtype(), e.tensor.layout(), e.tensor.device()));
    if (!nonfinite_.defined()) nonfinite_ = Tensor::zeros({}, DType::f64, Layout::plain, e.tensor.device());
  }
}

void Sgd::step(const std::vector<Tensor>& grads, double lr) {
  LLR_CHECK(grads.size() == params_.size(), "Sgd::step: ", grads.size(), " gradients for ", params_.size(),
            " parameters");
  if (params_.empty()) return;
  std::vector<Tensor> params;  // updated in place, outside the tape
  std::vector<double> decay;
  for (size_t i = 0; i < params_.size(); ++i) {
    params.push_back(params_[i].detach());
    decay.push_back(decay_[i] ? options_.weight_decay : 0.0);
  }
  training::sgd_update(params, grads, buffers_, decay, lr, options_.momentum, options_.nesterov, steps_ == 0,
                       nonfinite_);
  ++steps_;
  note_value_write();
}

}  // namespace llr
