// FGSM-RS (Wong, Rice & Kolter 2020, "Fast is better than free"): cross-entropy at x + delta, delta one sign-gradient
// step of alpha = 1.25 eps on the cross-entropy from a uniform start in the eps-ball, projected onto the ball and
// [0, 1]. The perturbation search with one step.
#include "train/methods/common.h"

namespace llr {

namespace {

class FgsmRs final : public Method {
 public:
  const char* name() const override { return "fgsm-rs"; }
  const char* summary() const override {
    return "cross-entropy at x + delta, delta one sign-gradient step of alpha eps from a uniform start in the eps-ball";
  }
  const char* cost() const override { return "5F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<FgsmRs>(*this); }
  // A single-step method by definition: `bench --methods fgsm-rs-K` times the same step for every K.
  void set_steps(RobustSettings&, int) override {}
  void visit(SettingVisitor& v) override {
    v.real({"fgsm_alpha", "FGSM-RS step as a multiple of eps (1.25 in Wong et al.)"}, alpha_, Range::positive());
  }

  ObjectiveResult build(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                        const StepContext& ctx) const override {
    Tensor delta = ctx.fixed_delta ? *ctx.fixed_delta : attack(model, x, y, robust, ctx);
    ObjectiveResult r;
    methods::set_loss(r, methods::adversarial_loss(model, x, delta, y, ctx, &r.adv_logits));
    r.delta = delta;
    return r;
  }

 private:
  Tensor attack(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                const StepContext& ctx) const {
    robust::SearchOptions o =
        methods::search_options(ctx, 1, methods::eps_length(ctx, alpha_), methods::draw_counter(ctx, x, 1, 0));
    return methods::cross_entropy_attack(model, x, y, robust.attack_bn_mode(), ctx, o);
  }

  double alpha_ = 1.25;
};

}  // namespace

std::unique_ptr<Method> make_fgsm_rs() { return std::make_unique<FgsmRs>(); }

}  // namespace llr
