#include "train/attacks/attack.h"

#include <algorithm>

#include "engine/backend.h"
#include "engine/ops.h"
#include "train/attacks/common.h"
#include "train/robust/search.h"
#include "train/settings.h"

namespace llr {

#define LLR_ATTACK(info) AttackInfo info();
#include "train/attacks/attacks.def"
#undef LLR_ATTACK

const std::vector<AttackInfo>& attack_registry() {
  static const std::vector<AttackInfo> all = {
#define LLR_ATTACK(info) info(),
#include "train/attacks/attacks.def"
#undef LLR_ATTACK
  };
  return all;
}

std::string attack_usage() {
  std::string s;
  for (const AttackInfo& a : attack_registry()) s += (s.empty() ? "" : ", ") + std::string(a.usage);
  return s;
}

std::vector<std::unique_ptr<Attack>> parse_attacks(const std::string& list) {
  std::vector<std::unique_ptr<Attack>> out;
  size_t at = 0;
  while (at <= list.size()) {
    size_t comma = list.find(',', at);
    if (comma == std::string::npos) comma = list.size();
    std::string tok = list.substr(at, comma - at);
    at = comma + 1;
    if (tok.empty()) continue;
    AttackArgs a;
    a.label = tok;
    size_t colon = tok.find(':');
    std::string kind = tok.substr(0, colon);
    if (colon != std::string::npos) {
      std::string arg = tok.substr(colon + 1);
      size_t x = arg.find('x');
      std::string what = "attack '" + tok + "'";
      a.steps = static_cast<int>(parse_integer(arg.substr(0, x), what + " (KIND:STEPS or KIND:STEPSxRESTARTS)"));
      a.has_steps = true;
      if (x != std::string::npos) {
        a.restarts = static_cast<int>(parse_integer(arg.substr(x + 1), what + " (KIND:STEPSxRESTARTS)"));
        a.has_restarts = true;
      }
      LLR_CHECK(a.steps >= 1, "attack '", tok, "': needs at least one step");
      LLR_CHECK(!a.has_restarts || a.restarts >= 0, "attack '", tok, "': restarts must be >= 0");
    }
    const AttackInfo* info = nullptr;
    for (const AttackInfo& i : attack_registry())
      if (kind == i.name) info = &i;
    LLR_CHECK(info != nullptr, "unknown attack '", tok, "' (", attack_usage(), ")");
    out.push_back(info->make(a));
  }
  LLR_CHECK(!out.empty(), "no attacks given");
  return out;
}

namespace attacks {

robust::SearchProblem logit_problem(const AttackContext& ctx, const Tensor& y, std::vector<Tensor> per_example,
                                    LogitLoss loss) {
  robust::SearchProblem p;
  p.per_example = std::move(per_example);
  p.labels = y;
  nets::Model* model = &ctx.model;
  DType compute = ctx.compute;
  p.loss = [model, compute, loss](const Tensor& xa, const std::vector<Tensor>& rows, Tensor* logits) {
    Tensor z = eval_logits(*model, xa, compute);
    if (logits) *logits = z;
    return loss(z, rows);
  };
  return p;
}

AttackResult over_targets(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust,
                          const TargetRun& run_target) {
  Tensor zc;
  {
    NoGradGuard no_grad;
    TapeScope scope;
    zc = eval_logits(ctx.model, x, ctx.compute);
  }
  const uint64_t stride = static_cast<uint64_t>(x.numel());
  const int64_t targets = std::min<int64_t>(zc.dim(1) - 1, 9);
  AttackResult res{robust, backend::full_like(x, 0.0)};
  for (int64_t rank = 1; rank <= targets; ++rank) {
    Tensor target = robust::class_at_rank(zc, y, static_cast<int>(rank));
    robust::SearchResult s = run_target(target, static_cast<uint64_t>(rank) * 16 * stride, res.robust);
    res.delta = backend::add(res.delta, s.broken_delta);  // rows broken by this target were zero before it
    res.robust = s.robust;
  }
  return res;
}

}  // namespace attacks

Tensor eval_logits(nets::Model& model, const Tensor& x, DType compute) {
  nets::ForwardContext c;
  c.bn = nets::BnMode::eval;
  c.compute = compute;
  return model.forward(x, c);
}

Tensor correct_mask(nets::Model& model, const Tensor& x, const Tensor& y, DType compute) {
  NoGradGuard no_grad;
  TapeScope scope;
  Tensor z = eval_logits(model, x, compute);
  Tensor m = robust::predicted_correct(z, y);
  return m.dtype() == x.dtype() ? m : m.to(x.dtype());
}

PerExampleLoss model_cross_entropy(nets::Model& model, const Tensor& y, DType compute) {
  return [&model, y, compute](const Tensor& x) { return cross_entropy(eval_logits(model, x, compute), y); };
}

Tensor measure_gamma(const PerExampleLoss& loss, const Tensor& x_in, double eps, int steps, int restarts,
                     uint64_t seed) {
  GradModeGuard grad_on(true);
  TapeScope scope;
  Tensor x = x_in.detach();
  Tensor X = x.detach().requires_grad_();
  Tensor l = loss(X);
  Tensor gx = grad({l}, {backend::full_like(l, 1.0)}, {X})[0];
  robust::SearchProblem p;
  p.loss = [&loss](const Tensor& xa, const std::vector<Tensor>&, Tensor*) { return loss(xa); };
  p.gap_base = l.detach();
  p.gap_gradient = gx;
  robust::SearchOptions o;
  o.steps = steps;
  o.rule = robust::StepRule::adam;
  o.step_size = 0.1;
  o.eps = eps;
  o.restarts = restarts;
  o.seed = seed;
  o.track_max = true;
  return robust::search(x, p, o).max_value;
}

}  // namespace llr
