// LLR (Qin et al. 2019): L = (1/N) sum_i [w l_i(x) + lambda |g_i| + mu |d_i|] with d_i = <delta_i, [grad_X S]_i>,
// g_i = l_i(x + delta) - l_i(x) - d_i, delta from the gamma search (the perturbation search on |g_i|).
//
// With the signs fixed the objective equals (1/N) sum_i [(w - lambda s_i) l_i(x) + lambda s_i l_i(x + delta)] +
// (1/N) D_v S, v = (mu sign(d_i) - lambda s_i) delta_i; D_v S comes from one tangent pass over the recorded nominal
// computation (exact), or from (S(x + h v) - S(x - h v)) / 2h (the finite-difference variant). Perturbed and search
// passes normalise with the nominal pass's batch statistics. The perturbed pass is reverse-differentiated as soon as
// it is built (with the nominal statistics as leaves, whose cotangents join the final pass), so its activations are
// freed before the tangent pass allocates its own.
#include <cmath>
#include <optional>

#include "train/methods/common.h"
#include "train/robust/search.h"

namespace llr {

namespace {

class Llr final : public Method {
 public:
  const char* name() const override { return "llr"; }
  const char* summary() const override {
    return "w l(x) + lambda |g| + mu |d| with delta from the gamma search; exact gradient by one tangent pass";
  }
  const char* cost() const override { return "(10 + 2k)F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<Llr>(*this); }
  void set_steps(RobustSettings&, int steps) override { steps_ = steps; }
  int64_t default_eps_warmup() const override { return 500; }
  void visit(SettingVisitor& v) override {
    v.integer({"llr_steps", "LLR gamma-search steps"}, steps_, Range::at_least(1));
    v.text({"llr_search", "LLR search update"}, search_, {"adam", "sign"});
    v.real({"llr_step_size", "LLR search step: Adam learning rate or sign step size"}, step_size_, Range::positive());
    v.real({"lambda", "LLR weight of |g|"}, lambda_, Range::at_least(0));
    v.real({"mu", "LLR weight of |d|"}, mu_, Range::at_least(0));
    v.real({"nominal_weight", "LLR weight of the clean loss"}, nominal_weight_, Range::at_least(0));
    v.text({"llr_grad", "LLR gradient: one tangent pass (exact) or finite differences (fd)"}, grad_, {"exact", "fd"});
    v.real({"fd_step", "LLR finite-difference step h (relative to v)"}, fd_step_, Range::positive());
    v.flag({"llr_recompute_nominal",
            "free the nominal pass during the search and the perturbed pass (and the finite-difference passes) and "
            "record it again for the final reverse pass (less memory, one more forward pass)"},
           recompute_nominal_);
    v.integer({"llr_tangent_segments",
               "exact gradient: 1 keeps the whole tangent pass for the reverse pass; N > 1 keeps only the tangents "
               "crossing N segments and computes each segment again in the reverse pass (less memory, one more "
               "tangent pass)"},
              tangent_segments_, Range::at_least(1));
  }

  ObjectiveResult build(nets::Model& model, const Tensor& x_in, const Tensor& y, const RobustSettings&,
                        const StepContext& ctx) const override {
    const int64_t n = x_in.dim(0);
    Tensor x = x_in.detach();
    Tensor X = x_in.detach().requires_grad_();

    // 1. Nominal pass (recorded, kept), its statistics, and the input gradient of S = sum_i l_i. With
    //    --llr-recompute-nominal the pass is freed after the input gradient (the search and the perturbed pass then
    //    hold only their own activations) and recorded again, with the same statistics, before the tangent pass.
    std::vector<BatchStats> stats;
    Tensor logits, l, S, gx;
    auto nominal_pass = [&](bool update_running) {
      LLR_PHASE("nominal forward", x.device());
      stats.clear();
      auto nominal = methods::forward_context(nets::BnMode::train, ctx.compute, &stats, nullptr, update_running);
      logits = model.forward(X, nominal);
      l = cross_entropy(logits, y);
      S = sum(l);
    };
    std::optional<TapeScope> first_pass;
    if (recompute_nominal_) first_pass.emplace();
    nominal_pass(ctx.update_running);
    {
      LLR_PHASE("input gradient", x.device());
      gx = grad({S}, {backend::full_like(S, 1.0)}, {X}, recompute_nominal_ ? Retain::no : Retain::yes)[0];
    }
    Tensor l_const = l.detach();
    if (recompute_nominal_) {
      for (BatchStats& st : stats) st = {st.mean.detach(), st.var.detach()};
      logits = l = S = Tensor();
      first_pass.reset();
    }

    // 2. The gamma search: maximise |g_i| over the eps-ball (fused update, projection and d_i per step).
    Tensor delta, d;
    if (ctx.fixed_delta) {
      delta = *ctx.fixed_delta;
      d = backend::per_example_dot(delta, gx);
    } else {
      robust::SearchProblem p;
      p.per_example = {y};
      p.loss = [&model, &stats, &ctx](const Tensor& xa, const std::vector<Tensor>& rows, Tensor*) {
        auto fc = methods::forward_context(nets::BnMode::shared, ctx.compute, nullptr, &stats);
        return cross_entropy(model.forward(xa, fc), rows[0]);
      };
      p.gap_base = l_const;
      p.gap_gradient = gx;
      robust::SearchOptions o =
          methods::search_options(ctx, static_cast<int>(steps_), step_size_, methods::draw_counter(ctx, x, 1, 0));
      if (search_ != "sign") o.rule = robust::StepRule::adam;
      robust::SearchResult s = robust::search(x, p, o);
      delta = s.delta;
      d = s.d;
    }

    // 3. The perturbed pass at the final delta, normalising with the nominal statistics taken as leaves, and its
    //    reverse pass right away: its activations are freed before the tangent pass allocates its own, and the
    //    statistics' cotangents join the final reverse pass (the same gradient as one pass over everything).
    ObjectiveResult r;
    std::optional<profile::Scope> perturbed_phase(std::in_place, "perturbed pass", profile::Kind::phase, x.device());
    std::vector<BatchStats> stat_leaves;
    std::vector<Tensor> stat_cotangents;
    for (const BatchStats& st : stats)
      stat_leaves.push_back({st.mean.detach().requires_grad_(), st.var.detach().requires_grad_()});
    Tensor lp;
    {
      auto fc = methods::forward_context(nets::BnMode::shared, ctx.compute, nullptr, &stat_leaves);
      lp = cross_entropy(model.forward(add(x, delta), fc), y);
    }
    LlrCoefficients c = robust::llr_coefficients(l_const, lp.detach(), d, nominal_weight_, lambda_, mu_);
    Tensor v = backend::scale_per_example(delta, c.tangent_weight);
    {
      std::vector<Tensor> params = model.parameters(), wrt = params;
      for (const BatchStats& st : stat_leaves) wrt.push_back(st.mean), wrt.push_back(st.var);
      std::vector<Tensor> g = grad({lp}, {backend::scale(c.perturbed_weight, 1.0 / double(n))}, wrt);
      r.partial_grads.assign(g.begin(), g.begin() + static_cast<long>(params.size()));
      stat_cotangents.assign(g.begin() + static_cast<long>(params.size()), g.end());
    }

    perturbed_phase.reset();
    // The nominal pass for the final reverse pass (recorded again here with --llr-recompute-nominal: before the
    // tangent pass, or after the finite-difference passes, which do not read it), and its statistics' cotangents.
    auto nominal_for_reverse = [&] {
      if (recompute_nominal_) nominal_pass(false);  // the running averages were updated by the first pass
      for (size_t k = 0; k < stats.size(); ++k) {
        r.outputs.push_back(stats[k].mean), r.cotangents.push_back(stat_cotangents[2 * k]);
        r.outputs.push_back(stats[k].var), r.cotangents.push_back(stat_cotangents[2 * k + 1]);
      }
    };
    if (grad_ == "exact") nominal_for_reverse();

    // 4. D_v S: one tangent pass over the nominal computation, or central differences with the batch's own
    //    statistics.
    LLR_PHASE(grad_ == "exact" ? "tangent pass" : "finite-difference passes", x.device());
    Tensor dvs;
    if (grad_ == "exact") {
      dvs = tangent_forward({X}, {v}, {S}, static_cast<int>(tangent_segments_))[0];
    } else {
      // (S(x + hv) - S(x - hv)) / 2h with each pass's own statistics; both passes depend only on the parameters, so
      // each is reverse-differentiated (and freed) at once.
      std::vector<Tensor> params = model.parameters();
      Tensor value;
      for (double sgn : {1.0, -1.0}) {
        auto fc = methods::forward_context(nets::BnMode::train, ctx.compute);
        Tensor s_pm = sum(cross_entropy(model.forward(add(x, backend::scale(v, sgn * fd_step_)), fc), y));
        std::vector<Tensor> g = grad({s_pm}, {backend::full_like(s_pm, sgn * 0.5 / (fd_step_ * double(n)))}, params);
        for (size_t k = 0; k < params.size(); ++k) r.partial_grads[k] = backend::add(r.partial_grads[k], g[k]);
        Tensor part = backend::scale(s_pm.detach(), sgn * 0.5 / fd_step_);
        value = value.defined() ? backend::add(value, part) : part;
      }
      dvs = value;  // a constant here: its gradient is already in partial_grads
      nominal_for_reverse();
    }

    // 5. The rest of the objective, (1/N) [sum_i (w - lambda s_i) l_i + D_v S], for the final reverse pass.
    Tensor rest = scale(add(sum(mul(l, c.nominal_weight)), dvs), 1.0 / double(n));
    r.outputs.push_back(rest);
    r.cotangents.push_back(backend::full_like(rest, 1.0));
    r.loss = backend::add(rest.detach(), backend::scale(backend::sum_all(backend::mul(lp.detach(), c.perturbed_weight)),
                                                        1.0 / double(n)));
    r.delta = delta;
    r.clean_logits = logits;
    r.metrics["llr_gamma"] = methods::batch_mean(c.abs_g);
    r.metrics["llr_abs_d"] = methods::batch_mean(backend::activation_forward(Act::abs, d));
    return r;
  }

  // The definition: d_i from the input gradient of S (with its batch statistics), g_i from the perturbed pass.
  double definition(nets::Model& model, const Tensor& x_in, const Tensor& y, const RobustSettings&,
                    const StepContext& ctx) const override {
    LLR_CHECK(ctx.fixed_delta, "llr definition: needs a fixed perturbation");
    const Tensor& delta = *ctx.fixed_delta;
    const DType compute = ctx.compute;
    GradModeGuard grad_on(true);
    TapeScope scope;
    Tensor x = x_in.detach();
    Tensor X = x.detach().requires_grad_();
    std::vector<BatchStats> stats;
    auto nominal = methods::forward_context(nets::BnMode::train, compute, &stats);
    Tensor l = cross_entropy(model.forward(X, nominal), y);
    Tensor S = sum(l);
    Tensor gx = grad({S}, {backend::full_like(S, 1.0)}, {X})[0];
    Tensor d = backend::per_example_dot(delta, gx);
    NoGradGuard no_grad;
    auto shared = methods::forward_context(nets::BnMode::shared, compute, nullptr, &stats);
    Tensor lp = cross_entropy(model.forward(add(x, delta), shared), y);
    Tensor lh = l.detach().to(Device::cpu), lph = lp.to(Device::cpu), dh = d.to(Device::cpu);
    int64_t n = lh.numel();
    double value = 0;
    for (int64_t i = 0; i < n; ++i) {
      double g = lph.at(i) - lh.at(i) - dh.at(i);
      value += nominal_weight_ * lh.at(i) + lambda_ * std::fabs(g) + mu_ * std::fabs(dh.at(i));
    }
    return value / double(n);
  }

 private:
  int64_t steps_ = 10;
  std::string search_ = "adam";
  double step_size_ = 0.1;  // Adam learning rate, as in the official code (sign steps: the step size)
  double lambda_ = 4.0, mu_ = 1.2, nominal_weight_ = 2.0;
  std::string grad_ = "exact";
  double fd_step_ = 1e-2;
  int64_t tangent_segments_ = 1;
  bool recompute_nominal_ = false;
};

}  // namespace

std::unique_ptr<Method> make_llr() { return std::make_unique<Llr>(); }

}  // namespace llr
