// PGD-k adversarial training (Madry et al. 2018): cross-entropy at x + delta, delta from k sign-gradient steps on the
// cross-entropy from a uniform random start in the eps-ball.
#include "train/methods/common.h"
#include "train/robust/search.h"

namespace llr {

namespace {

class Pgd final : public Method {
 public:
  const char* name() const override { return "pgd"; }
  const char* summary() const override {
    return "cross-entropy at x + delta from a k-step sign-gradient attack with a random start";
  }
  const char* cost() const override { return "(3 + 2k)F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<Pgd>(*this); }

  ObjectiveResult build(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                        const StepContext& ctx) const override {
    Tensor delta = ctx.fixed_delta ? *ctx.fixed_delta : attack(model, x, y, robust, ctx);
    LLR_PHASE("forward", x.device());
    auto fc = methods::forward_context(nets::BnMode::train, ctx.compute, nullptr, nullptr, ctx.update_running);
    Tensor logits = model.forward(add(x, delta), fc);
    ObjectiveResult r;
    methods::set_loss(r, mean(cross_entropy(logits, y)));
    r.delta = delta;
    r.adv_logits = logits;
    return r;
  }

 private:
  static Tensor attack(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                       const StepContext& ctx) {
    robust::SearchOptions o = methods::search_options(ctx, static_cast<int>(robust.attack_steps),
                                                      robust.attack_step, methods::draw_counter(ctx, x, 1, 0));
    o.phase = "attack step";
    return methods::cross_entropy_attack(model, x, y, robust.attack_bn_mode(), ctx, o);
  }
};

}  // namespace

std::unique_ptr<Method> make_pgd() { return std::make_unique<Pgd>(); }

}  // namespace llr
