#include "train/step.h"

#include "engine/autograd.h"
#include "engine/profile.h"
#include "train/training_kernels.h"

namespace llr {

StepOutput training_step(nets::Model& model, Sgd& optimizer, const Method& method, const RobustSettings& robust,
                         const Tensor& x, const Tensor& y, const StepContext& ctx, double lr) {
  TapeScope scope;
  ObjectiveResult r = method.build(model, x, y, robust, ctx);
  std::vector<Tensor> grads;
  {
    LLR_PHASE("final reverse pass", x.device());
    grads = objective_gradients(r, model.parameters());
  }
  StepOutput out;
  out.loss = r.loss;
  if (r.clean_logits.defined()) out.clean_correct = training::count_correct(r.clean_logits.detach(), y);
  if (r.adv_logits.defined()) out.adv_correct = training::count_correct(r.adv_logits.detach(), y);
  out.metrics = r.metrics;
  LLR_PHASE("optimiser", x.device());
  optimizer.step(grads, lr);
  return out;
}

}  // namespace llr
