// Natural training: the mean cross-entropy of the clean batch.
#include "train/methods/common.h"

namespace llr {

namespace {

class Natural final : public Method {
 public:
  const char* name() const override { return "natural"; }
  const char* summary() const override { return "cross-entropy on the clean batch"; }
  const char* cost() const override { return "3F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<Natural>(*this); }
  void set_steps(RobustSettings&, int) override {}

  ObjectiveResult build(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings&,
                        const StepContext& ctx) const override {
    LLR_PHASE("forward", x.device());
    auto fc = methods::forward_context(nets::BnMode::train, ctx.compute, nullptr, nullptr, ctx.update_running);
    Tensor logits = model.forward(x, fc);
    ObjectiveResult r;
    methods::set_loss(r, mean(cross_entropy(logits, y)));
    r.clean_logits = logits;
    return r;
  }
};

}  // namespace

std::unique_ptr<Method> make_natural() { return std::make_unique<Natural>(); }

}  // namespace llr
