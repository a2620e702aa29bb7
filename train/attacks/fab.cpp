// FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack"), l_inf,
// targeted, as AutoAttack's standard suite runs it: towards each of the 9 most likely other classes in turn, 100
// steps from the clean point (one run, no random start), overshoot eta = 1.05, alpha_max = 0.1, backward step
// beta = 0.9. Each step linearises z_t - z_y at the current point, projects both the current and the original
// point onto that hyperplane within the box (train/robust/fab_math.h) and moves to a mix of the two that leans
// towards the original point; FAB minimises the perturbation's norm, and an example counts as broken once the
// smallest adversarial perturbation it found is within eps.
#include <cmath>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "train/attacks/common.h"

namespace llr {

namespace {

constexpr double kOvershoot = 1.05, kAlphaMax = 0.1, kBackstep = 0.9;

Tensor per_example_full(int64_t n, double value, const Tensor& like) {
  return Tensor::full({n}, value, like.dtype(), Layout::plain, like.device());
}

// One targeted run on the rows of `active`: per-example state on the device, no reads inside the steps.
robust::SearchResult fab_targeted(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& target,
                                  const Tensor& active, int steps) {
  robust::SearchResult res;
  res.robust = active.clone();
  res.broken_delta = backend::full_like(x, 0.0);
  int64_t count = 0;
  Tensor idx = robust::rows_of(active, &count);
  if (count == 0) return res;
  Tensor x0 = robust::taken(x, idx), ys = robust::taken(y, idx), ts = robust::taken(target, idx);
  Tensor delta = backend::full_like(x0, 0.0), best_delta = backend::full_like(x0, 0.0);
  Tensor best_norm = per_example_full(count, INFINITY, x0), still = per_example_full(count, 1.0, x0);
  for (int step = 0; step < steps; ++step) {
    Tensor g, f;
    {
      TapeScope scope;
      Tensor dv = delta.detach().requires_grad_();
      Tensor z = eval_logits(ctx.model, add(x0, dv), ctx.compute);
      Tensor diff = sub(gather_logit(z, ts), gather_logit(z, ys));
      g = grad({diff}, {backend::full_like(diff, 1.0)}, {dv})[0];
      f = diff.detach();
    }
    robust::fab_step(delta, x0, g, f.dtype() == x0.dtype() ? f : f.to(x0.dtype()), kOvershoot, kAlphaMax);
    Tensor correct = correct_mask(ctx.model, backend::add(x0, delta), ys, ctx.compute);
    robust::fab_track(delta, correct, best_delta, best_norm, still, kBackstep, ctx.eps);
  }
  Tensor broken = backend::sub(per_example_full(count, 1.0, x0), still);
  robust::place(res.robust, still, idx);
  robust::place(res.broken_delta, robust::select_rows(backend::full_like(x0, 0.0), best_delta, broken), idx);
  return res;
}

class FabT final : public Attack {
 public:
  FabT(const AttackArgs& a) : Attack(a.label), steps_(a.has_steps ? a.steps : 100) {
    LLR_CHECK(!a.has_restarts, "attack '", a.label, "': fab-t takes no restarts (fab-t[:STEPS])");
  }
  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    return attacks::over_targets(ctx, x, y, robust, [&](const Tensor& target, uint64_t, const Tensor& active) {
      return fab_targeted(ctx, x, y, target, active, steps_);
    });
  }

 private:
  int steps_;
};

}  // namespace

AttackInfo fab_t_attack() {
  return {"fab-t", "fab-t[:STEPS]",
          "FAB-T (Croce & Hein 2020): minimal-norm boundary steps towards each of the 9 most likely other classes, "
          "broken when the smallest adversarial perturbation found is within eps (100 steps each)",
          [](const AttackArgs& a) { return std::make_unique<FabT>(a); }};
}

}  // namespace llr
