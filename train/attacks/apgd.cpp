// APGD-CE and APGD-T (Croce & Hein 2020): step size 2 eps halved at checkpoints where the loss stalls, momentum 0.75,
// restarts from the best point; APGD-T maximises the targeted DLR loss towards each of the 9 most likely other
// classes.
#include <algorithm>

#include "engine/backend.h"
#include "engine/ops.h"
#include "train/attacks/common.h"

namespace llr {

namespace {

robust::SearchOptions apgd_options(const AttackContext& ctx, int steps, int restarts) {
  robust::SearchOptions o;
  o.steps = steps;
  o.rule = robust::StepRule::apgd;
  o.step_size = 2.0;  // eta = 2 eps
  o.eps = ctx.eps;
  o.restarts = restarts;
  o.seed = ctx.seed;
  o.early_stop = true;
  return o;
}

class ApgdCe final : public Attack {
 public:
  ApgdCe(const AttackArgs& a)
      : Attack(a.label), steps_(a.has_steps ? a.steps : 100), restarts_(a.has_restarts ? a.restarts : 1) {
    LLR_CHECK(restarts_ >= 1, "attack '", a.label, "': restarts must be >= 1");
  }
  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    auto p = attacks::logit_problem(ctx, y, {y}, [](const Tensor& z, const std::vector<Tensor>& r) { return cross_entropy(z, r[0]); });
    robust::SearchResult s = robust::search(x, p, apgd_options(ctx, steps_, restarts_), robust);
    return attacks::result_of(s);
  }

 private:
  int steps_, restarts_;
};

// Targeted DLR: (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2), pi the classes sorted by the current logits (the
// ranking is piecewise constant: no gradient flows through it).
Tensor targeted_dlr(const Tensor& z, const Tensor& y, const Tensor& t) {
  Tensor zd = z.detach();
  Tensor num = sub(gather_logit(z, t), gather_logit(z, y));
  Tensor den = sub(gather_logit(z, robust::class_at_rank(zd, {}, 1)),
                   scale(add(gather_logit(z, robust::class_at_rank(zd, {}, 3)),
                             gather_logit(z, robust::class_at_rank(zd, {}, 4))),
                         0.5));
  return div(num, add(den, backend::full_like(den, 1e-12)));
}

class ApgdT final : public Attack {
 public:
  ApgdT(const AttackArgs& a)
      : Attack(a.label), steps_(a.has_steps ? a.steps : 100), restarts_(a.has_restarts ? a.restarts : 1) {
    LLR_CHECK(restarts_ >= 1, "attack '", a.label, "': restarts must be >= 1");
  }
  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    LLR_CHECK(ctx.model.classes() >= 4, "apgd-t needs at least 4 classes for the DLR loss");
    return attacks::over_targets(ctx, x, y, robust, [&](const Tensor& target, uint64_t counter, const Tensor& active) {
      auto p = attacks::logit_problem(ctx, y, {y, target}, [](const Tensor& z, const std::vector<Tensor>& r) {
        return targeted_dlr(z, r[0], r[1]);
      });
      robust::SearchOptions o = apgd_options(ctx, steps_, restarts_);
      o.counter = counter;
      return robust::search(x, p, o, active);
    });
  }

 private:
  int steps_, restarts_;
};

}  // namespace

AttackInfo apgd_ce_attack() {
  return {"apgd-ce", "apgd-ce[:STEPS]",
          "APGD on cross-entropy (Croce & Hein 2020): step size 2 eps halved at checkpoints, momentum 0.75 (100 steps)",
          [](const AttackArgs& a) { return std::make_unique<ApgdCe>(a); }};
}

AttackInfo apgd_t_attack() {
  return {"apgd-t", "apgd-t[:STEPS]",
          "APGD-T on the targeted DLR loss, the 9 most likely other classes as targets (100 steps each)",
          [](const AttackArgs& a) { return std::make_unique<ApgdT>(a); }};
}

}  // namespace llr
