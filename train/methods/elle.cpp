// ELLE (Abad Rocamora et al. 2024, "Efficient local linearity regularization to overcome catastrophic overfitting"):
//   L = mean_i CE(x_i + delta_i) + lambda mean_i (l_i(x_c) - alpha_i l_i(x_a) - (1 - alpha_i) l_i(x_b))^2,
// delta a single-step attack (FGSM-RS by default), x_a and x_b uniform in the eps-ball around x (in [0, 1]),
// alpha_i uniform in [0, 1], x_c = alpha x_a + (1 - alpha) x_b, all drawn from (seed, step). As the official code, the
// 3N points go through the network as one batch, normalised with that batch's statistics. No input gradient enters
// the regulariser: its weight gradient is the reverse pass of the 3N losses with the cotangent
// (2 lambda / N) r_i (-alpha_i, -(1 - alpha_i), 1), r_i the residual.
#include "train/methods/common.h"

namespace llr {

namespace {

class Elle final : public Method {
 public:
  const char* name() const override { return "elle"; }
  const char* summary() const override {
    return "single-step cross-entropy + lambda mean (l(x_c) - alpha l(x_a) - (1 - alpha) l(x_b))^2 on random triplets";
  }
  const char* cost() const override { return "14F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<Elle>(*this); }
  // Single-step by definition: `bench --methods elle-K` times the same step for every K.
  void set_steps(RobustSettings&, int) override {}
  void visit(SettingVisitor& v) override {
    v.real({"elle_lambda",
            "ELLE weight of the squared linearity residual (1000 for eps <= 8/255 in the official scripts, 5000 up "
            "to 20/255, 10000 above)"},
           lambda_, Range::at_least(0));
    v.real({"elle_alpha", "ELLE attack step as a multiple of eps"}, alpha_, Range::positive());
    v.text({"elle_start",
            "ELLE attack start: uniform in the eps-ball (FGSM-RS) or zero (FGSM, the official scripts with "
            "elle_alpha 1)"},
           start_, {"uniform", "zero"});
  }

  ObjectiveResult build(nets::Model& model, const Tensor& x_in, const Tensor& y, const RobustSettings& robust,
                        const StepContext& ctx) const override {
    Tensor x = x_in.detach();
    Tensor delta = ctx.fixed_delta ? *ctx.fixed_delta : attack(model, x, y, robust, ctx);

    // The training loss, reverse-differentiated at once so its activations are freed before the 3N-point batch.
    ObjectiveResult r;
    Tensor ce = methods::adversarial_loss(model, x, delta, y, ctx, &r.adv_logits);
    r.partial_grads = grad({ce}, {backend::full_like(ce, 1.0)}, model.parameters());

    ElleTriplets t = robust::elle_triplets(x, y, methods::eps_length(ctx), ctx.seed, triplet_counter(ctx, x));
    auto triplet_pass = methods::forward_context(nets::BnMode::train, ctx.compute);
    Tensor losses = cross_entropy(model.forward(t.points, triplet_pass), t.labels);
    ElleCoefficients c = robust::elle_coefficients(losses.detach(), t.alpha, lambda_);
    r.outputs = {losses};
    r.cotangents = {c.loss_weight};

    Tensor lin_err = methods::batch_mean(backend::mul(c.residual, c.residual));
    r.loss = backend::add(ce.detach(), backend::scale(lin_err, lambda_));
    r.delta = delta;
    r.drawn["elle_points"] = t.points;
    r.drawn["elle_alpha"] = t.alpha;
    r.metrics["elle_lin_err"] = lin_err;
    return r;
  }

  // The definition: the residuals written out here from the 3N losses.
  double definition(nets::Model& model, const Tensor& x_in, const Tensor& y, const RobustSettings&,
                    const StepContext& ctx) const override {
    LLR_CHECK(ctx.fixed_delta, "elle definition: needs a fixed perturbation");
    NoGradGuard no_grad;
    TapeScope scope;
    Tensor x = x_in.detach();
    const int64_t n = x.dim(0);
    auto adversarial_pass = methods::forward_context(nets::BnMode::train, ctx.compute);
    double ce = host_value(mean(cross_entropy(model.forward(add(x, *ctx.fixed_delta), adversarial_pass), y)));
    ElleTriplets t = robust::elle_triplets(x, y, methods::eps_length(ctx), ctx.seed, triplet_counter(ctx, x));
    auto triplet_pass = methods::forward_context(nets::BnMode::train, ctx.compute);
    Tensor l = cross_entropy(model.forward(t.points, triplet_pass), t.labels).to(Device::cpu);
    Tensor alpha = t.alpha.to(Device::cpu);
    double squares = 0;
    for (int64_t i = 0; i < n; ++i) {
      double a = alpha.at(i);
      double residual = l.at(2 * n + i) - a * l.at(i) - (1 - a) * l.at(n + i);
      squares += residual * residual;
    }
    return ce + lambda_ * squares / double(n);
  }

 private:
  // A step draws the attack's start (one batch of counters) and the triplets (x_a, x_b and alpha: three).
  static RandomCounter triplet_counter(const StepContext& ctx, const Tensor& x) {
    return methods::draw_counter(ctx, x, 4, 1);
  }

  Tensor attack(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                const StepContext& ctx) const {
    robust::SearchOptions o =
        methods::search_options(ctx, 1, methods::eps_length(ctx, alpha_), methods::draw_counter(ctx, x, 4, 0));
    o.start = start_ == "zero" ? robust::Start::zero : robust::Start::uniform;
    return methods::cross_entropy_attack(model, x, y, robust.attack_bn_mode(), ctx, o);
  }

  double lambda_ = 1000.0, alpha_ = 1.25;
  std::string start_ = "uniform";
};

}  // namespace

std::unique_ptr<Method> make_elle() { return std::make_unique<Elle>(); }

}  // namespace llr
