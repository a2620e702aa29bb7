// PGD attacks: on the cross-entropy with sign steps (Madry et al. 2018), on the margin with Adam (the official LLR
// evaluation), and MultiTargeted (Gowal et al. 2019: the margin towards each other class in turn).
#include <algorithm>

#include "engine/backend.h"
#include "engine/ops.h"
#include "train/attacks/common.h"

namespace llr {

namespace {

using attacks::logit_problem;
using attacks::result_of;

class PgdCe final : public Attack {
 public:
  PgdCe(const AttackArgs& a) : Attack(a.label), steps_(a.has_steps ? a.steps : 20), restarts_(a.has_restarts ? a.restarts : 1) {}
  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    auto p = logit_problem(ctx, y, {y}, [](const Tensor& z, const std::vector<Tensor>& r) { return cross_entropy(z, r[0]); });
    robust::SearchOptions o;
    o.steps = steps_;
    o.rule = robust::StepRule::sign;
    o.step_size = ctx.eps / 4;
    o.eps = ctx.eps;
    o.start = restarts_ == 0 ? robust::Start::zero : robust::Start::uniform;
    o.restarts = std::max(1, restarts_);
    o.seed = ctx.seed;
    o.early_stop = true;
    return result_of(robust::search(x, p, o, robust));
  }

 private:
  int steps_, restarts_;
};

class PgdMargin final : public Attack {
 public:
  PgdMargin(const AttackArgs& a) : Attack(a.label), steps_(a.has_steps ? a.steps : 50), restarts_(a.has_restarts ? a.restarts : 1) {
    LLR_CHECK(restarts_ >= 1, "attack '", a.label, "': restarts must be >= 1");
  }
  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    auto p = logit_problem(ctx, y, {y},
                           [](const Tensor& z, const std::vector<Tensor>& r) { return scale(margin_loss(z, r[0]), -1.0); });
    robust::SearchOptions o;
    o.steps = steps_;
    o.rule = robust::StepRule::adam;
    o.step_size = 0.1;
    o.eps = ctx.eps;
    o.restarts = restarts_;
    o.seed = ctx.seed;
    o.early_stop = true;
    return result_of(robust::search(x, p, o, robust));
  }

 private:
  int steps_, restarts_;
};

class MultiTargeted final : public Attack {
 public:
  MultiTargeted(const AttackArgs& a) : Attack(a.label), steps_(a.has_steps ? a.steps : 20), restarts_(a.has_restarts ? a.restarts : 1) {
    LLR_CHECK(restarts_ >= 1, "attack '", a.label, "': restarts must be >= 1");
  }
  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    return attacks::over_targets(ctx, x, y, robust, [&](const Tensor& target, uint64_t counter, const Tensor& active) {
      auto p = logit_problem(ctx, y, {y, target}, [](const Tensor& z, const std::vector<Tensor>& r) {
        return sub(gather_logit(z, r[1]), gather_logit(z, r[0]));
      });
      robust::SearchOptions o;
      o.steps = steps_;
      o.rule = robust::StepRule::sign;
      o.step_size = ctx.eps / 4;
      o.eps = ctx.eps;
      o.restarts = restarts_;
      o.seed = ctx.seed;
      o.counter = counter;
      o.early_stop = true;
      return robust::search(x, p, o, active);
    });
  }

 private:
  int steps_, restarts_;
};

}  // namespace

AttackInfo pgd_ce_attack() {
  return {"pgd-ce", "pgd-ce:STEPSxRESTARTS",
          "PGD on cross-entropy, sign steps of eps/4, uniform random starts (20x1; x0: one run from delta = 0)",
          [](const AttackArgs& a) { return std::make_unique<PgdCe>(a); }};
}

AttackInfo pgd_margin_attack() {
  return {"pgd-margin", "pgd-margin:STEPS", "PGD on the margin loss with Adam, lr 0.1 (50 steps; the official LLR evaluation)",
          [](const AttackArgs& a) { return std::make_unique<PgdMargin>(a); }};
}

AttackInfo multi_targeted_attack() {
  return {"mt", "mt:STEPS",
          "MultiTargeted (Gowal et al. 2019): PGD on z_t - z_y towards each of the 9 most likely other classes (20 steps)",
          [](const AttackArgs& a) { return std::make_unique<MultiTargeted>(a); }};
}

}  // namespace llr
