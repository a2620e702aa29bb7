// N-FGSM (de Jorge et al. 2022, "Make some noise"): cross-entropy at x + delta, delta = eta + alpha sign(grad l(x +
// eta)) with noise eta uniform in [-k eps, k eps] (k = 2) and alpha = eps, projected onto [0, 1] only: neither the
// noise nor the step is clipped to the eps-ball, as in the paper's default. The perturbation search with one step, a
// start of radius k eps and the box projection.
#include "train/methods/common.h"

namespace llr {

namespace {

class NFgsm final : public Method {
 public:
  const char* name() const override { return "n-fgsm"; }
  const char* summary() const override {
    return "cross-entropy at x + eta + alpha sign(grad), eta uniform in the k eps-ball; no projection onto the ball";
  }
  const char* cost() const override { return "5F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<NFgsm>(*this); }
  // A single-step method by definition: `bench --methods n-fgsm-K` times the same step for every K.
  void set_steps(RobustSettings&, int) override {}
  void visit(SettingVisitor& v) override {
    v.real({"nfgsm_noise", "N-FGSM noise radius k as a multiple of eps (2 in de Jorge et al.)"}, noise_,
           Range::at_least(0));
    v.real({"nfgsm_alpha", "N-FGSM step as a multiple of eps (1 in de Jorge et al.)"}, alpha_, Range::positive());
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
    o.start_scale = noise_;
    o.projection = Projection::box;
    return methods::cross_entropy_attack(model, x, y, robust.attack_bn_mode(), ctx, o);
  }

  double noise_ = 2.0, alpha_ = 1.0;
};

}  // namespace

std::unique_ptr<Method> make_n_fgsm() { return std::make_unique<NFgsm>(); }

}  // namespace llr
