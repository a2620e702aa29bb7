#include "train/objectives.h"

#include <algorithm>
#include <cmath>

#include "engine/ops.h"

namespace llr {

Method ObjectiveConfig::parse_method(const std::string& s) {
  if (s == "natural") return Method::natural;
  if (s == "pgd") return Method::pgd;
  if (s == "trades") return Method::trades;
  if (s == "llr") return Method::llr;
  LLR_FAIL("unknown method '", s, "' (natural, pgd, trades or llr)");
}

namespace {

// Batch means stay on the device: no host synchronisation inside a training step.
Tensor device_mean(const Tensor& t) { return backend::scale(backend::sum_all(t), 1.0 / double(t.numel())); }

Tensor accuracy(const Tensor& logits, const Tensor& y) {
  return backend::scale(backend::count_correct(logits, y), 1.0 / double(logits.dim(0)));
}

Tensor ones_like_stat(const Tensor& t) { return backend::full_like(t, 1.0); }

double current_eps(const ObjectiveConfig& cfg, uint64_t step) {
  if (cfg.eps_warmup_steps <= 0) return cfg.eps;
  return cfg.eps * std::min(1.0, double(step) / double(cfg.eps_warmup_steps));
}

nets::ForwardContext context(nets::BnMode bn, DType compute, std::vector<BatchStats>* record = nullptr,
                             const std::vector<BatchStats>* use = nullptr, bool update_running = false) {
  nets::ForwardContext c;
  c.bn = bn;
  c.compute = compute;
  c.record = record;
  c.use = use;
  c.update_running = update_running;
  return c;
}

// Sign-gradient ascent on a per-example attack loss from a random start, projected after every step.
// loss_fn(x_adv) returns per-example losses [N].
template <class LossFn>
Tensor pgd_attack(const Tensor& x, int steps, double alpha, double eps, double normal_scale, uint64_t seed,
                  uint64_t counter, LossFn loss_fn) {
  Tensor delta = backend::perturbation_init(x, eps, normal_scale, seed, counter);
  Tensor none;
  PerturbationParams p;
  p.update = PerturbationUpdate::sign;
  p.step_size = alpha;
  p.eps = eps;
  for (int t = 0; t < steps; ++t) {
    Tensor d = delta.detach().requires_grad_();
    Tensor l = loss_fn(add(x, d));
    Tensor g = grad({l}, {ones_like_stat(l)}, {d})[0];
    Tensor m, v;
    backend::perturbation_step(delta, x, g, none, none, m, v, p);
  }
  return delta;
}

// A loss whose whole gradient comes from the final reverse pass.
void set_loss(ObjectiveResult& r, const Tensor& loss) {
  r.loss = loss.detach();
  r.outputs = {loss};
  r.cotangents = {backend::full_like(loss, 1.0)};
}

ObjectiveResult natural(nets::Model& model, const Tensor& x, const Tensor& y, const ObjectiveOptions& o) {
  auto ctx = context(nets::BnMode::train, o.compute, nullptr, nullptr, o.update_running);
  Tensor logits = model.forward(x, ctx);
  ObjectiveResult r;
  set_loss(r, mean(cross_entropy(logits, y)));
  r.logits_for_accuracy = logits;
  return r;
}

ObjectiveResult pgd(nets::Model& model, const Tensor& x, const Tensor& y, const ObjectiveConfig& cfg,
                    const ObjectiveOptions& o) {
  double eps = current_eps(cfg, o.step);
  Tensor delta;
  if (o.fixed_delta) {
    delta = *o.fixed_delta;
  } else {
    delta = pgd_attack(x, cfg.pgd_steps, cfg.pgd_alpha, eps, 0.0, o.seed, o.step * uint64_t(x.numel()),
                       [&](const Tensor& xa) {
                         auto c = context(cfg.attack_bn, o.compute);
                         return cross_entropy(model.forward(xa, c), y);
                       });
  }
  auto ctx = context(nets::BnMode::train, o.compute, nullptr, nullptr, o.update_running);
  Tensor logits = model.forward(add(x, delta), ctx);
  ObjectiveResult r;
  set_loss(r, mean(cross_entropy(logits, y)));
  r.delta = delta;
  r.logits_for_accuracy = logits;
  r.metrics["adv_accuracy"] = accuracy(logits, y);
  return r;
}

ObjectiveResult trades(nets::Model& model, const Tensor& x, const Tensor& y, const ObjectiveConfig& cfg,
                       const ObjectiveOptions& o) {
  double eps = current_eps(cfg, o.step);
  Tensor delta;
  if (o.fixed_delta) {
    delta = *o.fixed_delta;
  } else {
    Tensor target;
    {
      NoGradGuard no_grad;
      auto c = context(cfg.attack_bn, o.compute);
      target = model.forward(x, c);
    }
    delta = pgd_attack(x, cfg.pgd_steps, cfg.pgd_alpha, eps, 0.001, o.seed, o.step * uint64_t(x.numel()),
                       [&](const Tensor& xa) {
                         auto c = context(cfg.attack_bn, o.compute);
                         return kl_div(target, model.forward(xa, c));
                       });
  }
  auto nominal = context(nets::BnMode::train, o.compute, nullptr, nullptr, o.update_running);
  Tensor logits = model.forward(x, nominal);
  auto adversarial = context(nets::BnMode::train, o.compute);
  Tensor adv_logits = model.forward(add(x, delta), adversarial);
  ObjectiveResult r;
  set_loss(r, add(mean(cross_entropy(logits, y)), scale(mean(kl_div(logits, adv_logits)), cfg.trades_beta)));
  r.delta = delta;
  r.logits_for_accuracy = adv_logits;
  r.metrics["adv_accuracy"] = accuracy(adv_logits, y);
  return r;
}

ObjectiveResult llr(nets::Model& model, const Tensor& x_in, const Tensor& y, const ObjectiveConfig& cfg,
                    const ObjectiveOptions& o) {
  const int64_t n = x_in.dim(0);
  double eps = current_eps(cfg, o.step);
  Tensor x = x_in.detach();
  Tensor X = x_in.detach().requires_grad_();

  // 1. Nominal pass (recorded, kept), its statistics, and the input gradient of S = sum_i l_i.
  std::vector<BatchStats> stats;
  auto nominal = context(nets::BnMode::train, o.compute, &stats, nullptr, o.update_running);
  Tensor logits = model.forward(X, nominal);
  Tensor l = cross_entropy(logits, y);
  Tensor S = sum(l);
  Tensor gx = grad({S}, {ones_like_stat(S)}, {X}, Retain::yes)[0];
  Tensor l_const = l.detach();
  auto perturbed_loss = [&](const Tensor& xp) {
    auto c = context(nets::BnMode::shared, o.compute, nullptr, &stats);
    return cross_entropy(model.forward(xp, c), y);
  };

  // 2. The gamma search: maximise |g_i| over the eps-ball (fused update, projection and d_i per step).
  Tensor delta, d;
  if (o.fixed_delta) {
    delta = *o.fixed_delta;
    d = backend::per_example_dot(delta, gx);
  } else {
    delta = backend::perturbation_init(x, eps, 0.0, o.seed, o.step * uint64_t(x.numel()));
    d = backend::per_example_dot(delta, gx);
    PerturbationParams p;
    p.update = cfg.llr_search;
    p.step_size = cfg.llr_step_size;
    p.eps = eps;
    Tensor m, v;
    if (p.update == PerturbationUpdate::adam) {
      m = backend::full_like(delta, 0.0);
      v = backend::full_like(delta, 0.0);
    }
    for (int t = 0; t < cfg.llr_steps; ++t) {
      Tensor dv = delta.detach().requires_grad_();
      Tensor lp = perturbed_loss(add(x, dv));
      LlrCoefficients c = backend::llr_coefficients(l_const, lp.detach(), d, cfg.nominal_weight, cfg.lambda, cfg.mu);
      Tensor gw = grad({lp}, {c.sign_g}, {dv})[0];  // sign(g_i) grad l_i(x + delta)
      p.t = t + 1;
      d = backend::perturbation_step(delta, x, gw, gx, c.sign_g, m, v, p);
    }
  }

  // 3. The perturbed pass at the final delta, normalising with the nominal statistics taken as leaves, and its reverse
  //    pass right away: its activations are freed before the tangent pass allocates its own, and the statistics'
  //    cotangents join the final reverse pass (the same gradient as one pass over everything).
  ObjectiveResult r;
  std::vector<BatchStats> stat_leaves;
  for (const BatchStats& st : stats)
    stat_leaves.push_back({st.mean.detach().requires_grad_(), st.var.detach().requires_grad_()});
  Tensor lp;
  {
    auto ctx = context(nets::BnMode::shared, o.compute, nullptr, &stat_leaves);
    lp = cross_entropy(model.forward(add(x, delta), ctx), y);
  }
  LlrCoefficients c = backend::llr_coefficients(l_const, lp.detach(), d, cfg.nominal_weight, cfg.lambda, cfg.mu);
  Tensor v = backend::scale_per_example(delta, c.tangent_weight);
  {
    std::vector<Tensor> params = model.parameters(), wrt = params;
    for (const BatchStats& st : stat_leaves) wrt.push_back(st.mean), wrt.push_back(st.var);
    std::vector<Tensor> g = grad({lp}, {backend::scale(c.perturbed_weight, 1.0 / double(n))}, wrt);
    r.partial_grads.assign(g.begin(), g.begin() + static_cast<long>(params.size()));
    for (size_t k = 0; k < stats.size(); ++k) {
      r.outputs.push_back(stats[k].mean), r.cotangents.push_back(g[params.size() + 2 * k]);
      r.outputs.push_back(stats[k].var), r.cotangents.push_back(g[params.size() + 2 * k + 1]);
    }
  }

  // 4. D_v S: one tangent pass over the nominal computation, or central differences with the batch's own statistics.
  Tensor dvs;
  if (cfg.llr_grad == LlrGrad::exact) {
    dvs = tangent_forward({X}, {v}, {S})[0];
  } else {
    // (S(x + hv) - S(x - hv)) / 2h with each pass's own statistics; both passes depend only on the parameters, so
    // each is reverse-differentiated (and freed) at once.
    double h = cfg.fd_step;
    std::vector<Tensor> params = model.parameters();
    Tensor value;
    for (double sgn : {1.0, -1.0}) {
      auto ctx = context(nets::BnMode::train, o.compute);
      Tensor s_pm = sum(cross_entropy(model.forward(add(x, backend::scale(v, sgn * h)), ctx), y));
      std::vector<Tensor> g = grad({s_pm}, {backend::full_like(s_pm, sgn * 0.5 / (h * double(n)))}, params);
      for (size_t k = 0; k < params.size(); ++k) r.partial_grads[k] = backend::add(r.partial_grads[k], g[k]);
      Tensor part = backend::scale(s_pm.detach(), sgn * 0.5 / h);
      value = value.defined() ? backend::add(value, part) : part;
    }
    dvs = value;  // a constant here: its gradient is already in partial_grads
  }

  // 5. The rest of the objective, (1/N) [sum_i (w - lambda s_i) l_i + D_v S], for the final reverse pass.
  Tensor rest = scale(add(sum(mul(l, c.nominal_weight)), dvs), 1.0 / double(n));
  r.outputs.push_back(rest);
  r.cotangents.push_back(backend::full_like(rest, 1.0));
  r.loss = backend::add(rest.detach(),
                        backend::scale(backend::sum_all(backend::mul(lp.detach(), c.perturbed_weight)), 1.0 / double(n)));
  r.delta = delta;
  r.logits_for_accuracy = logits;
  r.metrics["llr_gamma"] = device_mean(c.abs_g);
  r.metrics["llr_abs_d"] = device_mean(backend::activation_forward(Act::abs, d));
  return r;
}

}  // namespace

std::vector<Tensor> objective_gradients(const ObjectiveResult& r, const std::vector<Tensor>& params) {
  std::vector<Tensor> grads = grad(r.outputs, r.cotangents, params);
  if (!r.partial_grads.empty()) {
    LLR_CHECK(r.partial_grads.size() == grads.size(), "objective_gradients: ", r.partial_grads.size(),
              " partial gradients for ", grads.size(), " parameters (pass model.parameters())");
    for (size_t k = 0; k < grads.size(); ++k) grads[k] = backend::add(grads[k], r.partial_grads[k]);
  }
  return grads;
}

double host_value(const Tensor& t) {
  Tensor h = (t.dtype() == DType::bf16 ? t.to(DType::f32) : t).to(Device::cpu);
  return h.item();
}

ObjectiveResult build_objective(nets::Model& model, const Tensor& x, const Tensor& y, const ObjectiveConfig& cfg,
                                const ObjectiveOptions& o) {
  LLR_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, "objective inputs are f32 or f64 images, got ",
            x.describe());
  switch (cfg.method) {
    case Method::natural: return natural(model, x, y, o);
    case Method::pgd: return pgd(model, x, y, cfg, o);
    case Method::trades: return trades(model, x, y, cfg, o);
    case Method::llr: return llr(model, x, y, cfg, o);
  }
  LLR_FAIL("unknown method");
}

double objective_value(nets::Model& model, const Tensor& x_in, const Tensor& y, const Tensor& delta,
                       const ObjectiveConfig& cfg, DType compute) {
  GradModeGuard grad_on(true);
  Tensor x = x_in.detach();
  double value = 0;
  if (cfg.method == Method::llr) {
    // The definition: d_i from the input gradient of S (with its batch statistics), g_i from the perturbed pass.
    Tensor X = x.detach().requires_grad_();
    std::vector<BatchStats> stats;
    auto nominal = context(nets::BnMode::train, compute, &stats);
    Tensor l = cross_entropy(model.forward(X, nominal), y);
    Tensor S = sum(l);
    Tensor gx = grad({S}, {ones_like_stat(S)}, {X})[0];
    Tensor d = backend::per_example_dot(delta, gx);
    NoGradGuard no_grad;
    auto shared = context(nets::BnMode::shared, compute, nullptr, &stats);
    Tensor lp = cross_entropy(model.forward(add(x, delta), shared), y);
    Tensor lh = l.detach().to(Device::cpu), lph = lp.to(Device::cpu), dh = d.to(Device::cpu);
    int64_t n = lh.numel();
    for (int64_t i = 0; i < n; ++i) {
      double g = lph.at(i) - lh.at(i) - dh.at(i);
      value += cfg.nominal_weight * lh.at(i) + cfg.lambda * std::fabs(g) + cfg.mu * std::fabs(dh.at(i));
    }
    Tape::current().clear();
    return value / double(n);
  }
  NoGradGuard no_grad;
  ObjectiveOptions o;
  o.compute = compute;
  o.update_running = false;
  o.fixed_delta = &delta;
  ObjectiveResult r = build_objective(model, x, y, cfg, o);
  return r.loss.to(Device::cpu).item();
}

}  // namespace llr
