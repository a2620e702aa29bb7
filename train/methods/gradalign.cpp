// GradAlign (Andriushchenko & Flammarion 2020, "Understanding and improving fast adversarial training"):
//   L = mean_i CE(x_i + delta_i) + lambda (1 - mean_i cos(g1_i, g2_i)),
// g1 = grad_x of the batch's mean cross-entropy at x, g2 the same at x + eta (eta uniform in the eps-ball, drawn from
// (seed, step)), delta the FGSM point eps sign(g1) projected onto [0, 1] (the reference code's zero start, whose
// 1.25 eps step the eps-ball clips to eps). Every pass normalises with its own batch statistics, as the reference code
// (model.train() throughout).
//
// The weight gradient of the cosine term without double backprop (DESIGN.md, "Second-order regularisers"): with
// u_k = d cos / d g_k held per example, it equals the gradient of <u1, g1> + <u2, g2> = (1/N) (D_u1 S(x) +
// D_u2 S(x + eta)), S the summed cross-entropy: one tangent pass along u_k over each recorded pass, then the reverse
// pass.
#include <algorithm>
#include <cmath>

#include "train/methods/common.h"

namespace llr {

namespace {

// The floor of each gradient norm in the cosine: PyTorch's cosine_similarity default, which the reference code uses.
constexpr double kNormGuard = 1e-8;

class GradAlign final : public Method {
 public:
  const char* name() const override { return "gradalign"; }
  const char* summary() const override {
    return "FGSM cross-entropy + lambda (1 - cos(grad l(x), grad l(x + eta))); exact gradient by two tangent passes";
  }
  // Per recorded pass (x and x + eta): forward 1F, input gradient 1F, tangent pass 1F, their share of the reverse
  // pass 4F; the FGSM loss 3F.
  const char* cost() const override { return "17F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<GradAlign>(*this); }
  // Single-step by definition: `bench --methods gradalign-K` times the same step for every K.
  void set_steps(RobustSettings&, int) override {}
  void visit(SettingVisitor& v) override {
    v.real({"gradalign_lambda",
            "GradAlign weight of 1 - cos (0.2 for eps 8/255 in Andriushchenko & Flammarion; they scale it as "
            "0.02 * 10^(eps * 255 / 8))"},
           lambda_, Range::at_least(0));
    v.integer({"gradalign_tangent_segments",
               "1 keeps both tangent passes for the reverse pass; N > 1 keeps only the tangents crossing N segments "
               "and computes each segment again in the reverse pass (less memory, two more tangent passes)"},
              tangent_segments_, Range::at_least(1));
  }

  ObjectiveResult build(nets::Model& model, const Tensor& x_in, const Tensor& y, const RobustSettings&,
                        const StepContext& ctx) const override {
    const double inv_n = 1.0 / double(x_in.dim(0));
    Tensor x = x_in.detach();

    // 1. The pass at x (recorded, kept for its tangent pass) and g1, which is also FGSM's gradient.
    Tensor X = x.detach().requires_grad_();
    auto clean_pass = methods::forward_context(nets::BnMode::train, ctx.compute);
    Tensor clean_logits = model.forward(X, clean_pass);
    Tensor S = sum(cross_entropy(clean_logits, y));
    Tensor g1 = grad({S}, {backend::full_like(S, inv_n)}, {X}, Retain::yes)[0];

    // 2. FGSM from zero: delta = eps sign(g1), in [0, 1].
    Tensor delta;
    if (ctx.fixed_delta) {
      delta = *ctx.fixed_delta;
    } else {
      delta = backend::full_like(x, 0.0);
      PerturbationParams p;
      p.update = PerturbationUpdate::sign;
      p.step_size = methods::eps_length(ctx);
      p.eps = methods::eps_length(ctx);
      Tensor none, m, v, dots, steps;
      robust::perturbation_step(delta, x, g1, none, none, m, v, dots, steps, p);
    }

    // 3. The training loss at x + delta, reverse-differentiated at once: it shares nothing with the other passes, and
    //    its activations are freed before the pass at x + eta allocates its own.
    ObjectiveResult r;
    Tensor ce = methods::adversarial_loss(model, x, delta, y, ctx, &r.adv_logits);
    r.partial_grads = grad({ce}, {backend::full_like(ce, 1.0)}, model.parameters());

    // 4. The pass at x + eta (recorded, kept) and g2.
    Tensor eta =
        robust::perturbation_init(x, methods::eps_length(ctx), 0.0, ctx.seed, methods::draw_counter(ctx, x, 1, 0));
    Tensor XE = add(x, eta).detach().requires_grad_();
    auto eta_pass = methods::forward_context(nets::BnMode::train, ctx.compute);
    Tensor SE = sum(cross_entropy(model.forward(XE, eta_pass), y));
    Tensor g2 = grad({SE}, {backend::full_like(SE, inv_n)}, {XE}, Retain::yes)[0];

    // 5. -lambda/N sum_i cos_i through <u1, g1> + <u2, g2> = (1/N) (D_u1 S + D_u2 SE), u held.
    GradientAlignment a = robust::gradient_alignment(g1, g2, kNormGuard);
    const int segments = static_cast<int>(tangent_segments_);
    Tensor d1 = tangent_forward({X}, {a.d_cos_d_g1}, {S}, segments)[0];
    Tensor d2 = tangent_forward({XE}, {a.d_cos_d_g2}, {SE}, segments)[0];
    Tensor alignment = scale(add(d1, d2), -lambda_ * inv_n * inv_n);
    r.outputs = {alignment};
    r.cotangents = {backend::full_like(alignment, 1.0)};

    Tensor mean_cos = methods::batch_mean(a.cos);
    Tensor misalignment = backend::sub(backend::full_like(mean_cos, 1.0), mean_cos);
    r.loss = backend::add(ce.detach(), backend::scale(misalignment, lambda_));
    r.delta = delta;
    r.clean_logits = clean_logits;
    r.drawn["gradalign_eta"] = eta;
    r.metrics["gradalign_cos"] = mean_cos;
    return r;
  }

  // The definition: both input gradients by reverse passes, their cosine written out here in f64.
  double definition(nets::Model& model, const Tensor& x_in, const Tensor& y, const RobustSettings&,
                    const StepContext& ctx) const override {
    LLR_CHECK(ctx.fixed_delta, "gradalign definition: needs a fixed perturbation");
    GradModeGuard grad_on(true);
    TapeScope scope;
    Tensor x = x_in.detach();
    const int64_t n = x.dim(0);
    auto input_gradient = [&](const Tensor& point) {
      Tensor P = point.detach().requires_grad_();
      auto own = methods::forward_context(nets::BnMode::train, ctx.compute);
      Tensor s = mean(cross_entropy(model.forward(P, own), y));
      return grad({s}, {backend::full_like(s, 1.0)}, {P})[0].to(Device::cpu);
    };
    Tensor eta =
        robust::perturbation_init(x, methods::eps_length(ctx), 0.0, ctx.seed, methods::draw_counter(ctx, x, 1, 0));
    Tensor g1 = input_gradient(x), g2 = input_gradient(add(x, eta));
    NoGradGuard no_grad;
    auto own = methods::forward_context(nets::BnMode::train, ctx.compute);
    double ce = host_value(mean(cross_entropy(model.forward(add(x, *ctx.fixed_delta), own), y)));
    const int64_t inner = g1.numel() / n;
    double cos_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      double dot = 0, aa = 0, bb = 0;
      for (int64_t j = i * inner; j < (i + 1) * inner; ++j) {
        dot += g1.at(j) * g2.at(j);
        aa += g1.at(j) * g1.at(j);
        bb += g2.at(j) * g2.at(j);
      }
      cos_sum += dot / (std::max(std::sqrt(aa), kNormGuard) * std::max(std::sqrt(bb), kNormGuard));
    }
    return ce + lambda_ * (1.0 - cos_sum / double(n));
  }

 private:
  double lambda_ = 0.2;
  int64_t tangent_segments_ = 1;
};

}  // namespace

std::unique_ptr<Method> make_gradalign() { return std::make_unique<GradAlign>(); }

}  // namespace llr
