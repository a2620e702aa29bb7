// SGD with momentum (optionally Nesterov) and weight decay on convolution and linear weights only, with PyTorch's
// update rule; one fused call updates every parameter (a few kernels on the GPU, not one per parameter) and writes
// the weights' compute-dtype copies (bf16 convolution weights) that a forward pass has made, so that no pass
// converts them again (nets::ComputeCopy).
#pragma once

#include <memory>
#include <vector>

#include "nets/model.h"

namespace llr {

struct SgdOptions {
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 5e-4;
};

class Sgd {
 public:
  Sgd(nets::Model& model, SgdOptions options);
  // One update with gradients in the order of model.parameters().
  void step(const std::vector<Tensor>& grads, double lr);
  int64_t steps_taken() const { return steps_; }
  void set_steps_taken(int64_t s) { steps_ = s; }
  const SgdOptions& options() const { return options_; }
  std::vector<Tensor>& momentum_buffers() { return buffers_; }
  // How many parameter values the updates so far left NaN or infinite: a one-element f64 tensor on the parameters'
  // device, read when the caller synchronises anyway.
  const Tensor& nonfinite_updates() const { return nonfinite_; }
  const std::vector<Tensor>& momentum_buffers() const { return buffers_; }

 private:
  std::vector<Tensor> params_;
  std::vector<std::shared_ptr<nets::ComputeCopy>> compute_;  // the layers' compute-dtype copies (null: none)
  std::vector<bool> decay_;
  std::vector<Tensor> buffers_;
  SgdOptions options_;
  int64_t steps_ = 0;
  Tensor nonfinite_;
};

}  // namespace llr
