// AutoAttack's standard suite (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
// diverse parameter-free attacks"), l_inf: APGD-CE (100 steps, 1 restart), APGD-T (100 steps, 9 targets), FAB-T
// (100 steps, 9 targets) and Square (5,000 queries), in that order, each on the examples the ones before it left
// robust. The result holds each stage's robust mask and time, for `llrtrain eval` to report.
#include <chrono>

#include "engine/backend.h"
#include "train/attacks/attack.h"

namespace llr {

namespace {

class AutoAttack final : public Attack {
 public:
  AutoAttack(const AttackArgs& a) : Attack(a.label), stages_(parse_attacks("apgd-ce,apgd-t,fab-t,square")) {
    LLR_CHECK(!a.has_steps, "attack '", a.label, "': autoattack takes no numbers (its attacks have the suite's)");
  }

  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    AttackResult res{robust, backend::full_like(x, 0.0), {}};
    for (const std::unique_ptr<Attack>& stage : stages_) {
      auto t0 = std::chrono::steady_clock::now();
      AttackResult r = stage->run(ctx, x, y, res.robust);
      res.delta = backend::add(res.delta, r.delta);  // rows this stage broke were robust, with zero perturbations
      res.robust = r.robust;
      // Stage times are wall-clock: the queued work is waited for once per stage.
      backend_for(x.device()).synchronize();
      res.stages.push_back(
          {stage->label(), res.robust, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
    }
    return res;
  }

 private:
  std::vector<std::unique_ptr<Attack>> stages_;
};

}  // namespace

AttackInfo autoattack_attack() {
  return {"autoattack", "autoattack",
          "AutoAttack's standard suite: apgd-ce, apgd-t, fab-t, square (5,000 queries), each on the examples still "
          "robust",
          [](const AttackArgs& a) { return std::make_unique<AutoAttack>(a); }};
}

}  // namespace llr
