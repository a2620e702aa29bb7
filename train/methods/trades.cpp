// TRADES (Zhang et al. 2019): CE(x) + beta KL(p(x) || p(x + delta)), delta from k sign-gradient steps on the KL term
// from a small normal start.
#include "train/methods/common.h"
#include "train/robust/search.h"

namespace llr {

namespace {

class Trades final : public Method {
 public:
  const char* name() const override { return "trades"; }
  const char* summary() const override {
    return "CE(x) + beta KL(p(x) || p(x + delta)), delta from a k-step attack on the KL term";
  }
  const char* cost() const override { return "(5 + 2k)F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<Trades>(*this); }
  void visit(SettingVisitor& v) override {
    v.real({"trades_beta", "TRADES weight of the KL term"}, beta_, Range::at_least(0));
  }

  ObjectiveResult build(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                        const StepContext& ctx) const override {
    Tensor delta = ctx.fixed_delta ? *ctx.fixed_delta : attack(model, x, robust, ctx);
    LLR_PHASE("forward", x.device());
    auto nominal = methods::forward_context(nets::BnMode::train, ctx.compute, nullptr, nullptr, ctx.update_running);
    Tensor logits = model.forward(x, nominal);
    auto adversarial = methods::forward_context(nets::BnMode::train, ctx.compute);
    Tensor adv_logits = model.forward(add(x, delta), adversarial);
    ObjectiveResult r;
    methods::set_loss(r, add(mean(cross_entropy(logits, y)), scale(mean(kl_div(logits, adv_logits)), beta_)));
    r.delta = delta;
    r.clean_logits = logits;
    r.adv_logits = adv_logits;
    return r;
  }

 private:
  static Tensor attack(nets::Model& model, const Tensor& x, const RobustSettings& robust, const StepContext& ctx) {
    nets::BnMode bn = robust.attack_bn_mode();
    Tensor target;
    {
      LLR_PHASE("attack target", x.device());
      NoGradGuard no_grad;
      auto fc = methods::forward_context(bn, ctx.compute);
      target = model.forward(x, fc);
    }
    robust::SearchProblem p;
    p.per_example = {target};
    p.loss = [&model, bn, &ctx](const Tensor& xa, const std::vector<Tensor>& rows, Tensor*) {
      auto fc = methods::forward_context(bn, ctx.compute);
      return kl_div(rows[0], model.forward(xa, fc));
    };
    robust::SearchOptions o = methods::search_options(ctx, static_cast<int>(robust.attack_steps),
                                                      robust.attack_step, methods::draw_counter(ctx, x, 1, 0));
    o.start = robust::Start::normal;
    o.normal_scale = 0.001;
    o.phase = "attack step";
    return robust::search(x, p, o).delta;
  }

  double beta_ = 6.0;
};

}  // namespace

std::unique_ptr<Method> make_trades() { return std::make_unique<Trades>(); }

}  // namespace llr
