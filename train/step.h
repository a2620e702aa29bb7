// One training step: the method's objective on a batch, its gradient by one reverse pass, the SGD update. Everything
// it records on the tape is freed when it returns. Nothing is read back to the host: the returned values are
// one-element device tensors for the metrics window to sum.
#pragma once

#include <map>
#include <string>

#include "train/methods/method.h"
#include "train/optimizer.h"

namespace llr {

struct StepOutput {
  Tensor loss;
  Tensor clean_correct;  // correctly classified clean examples (undefined where the method has no clean logits)
  Tensor adv_correct;    // correctly classified perturbed examples (undefined for natural training and LLR)
  std::map<std::string, Tensor> metrics;
};

StepOutput training_step(nets::Model& model, Sgd& optimizer, const Method& method, const RobustSettings& robust,
                         const Tensor& x, const Tensor& y, const StepContext& ctx, double lr);

}  // namespace llr
