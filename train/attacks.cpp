#include "train/attacks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/backend.h"
#include "engine/ops.h"

namespace llr {

std::vector<AttackSpec> AttackSpec::parse_list(const std::string& s) {
  std::vector<AttackSpec> out;
  size_t at = 0;
  while (at < s.size()) {
    size_t comma = s.find(',', at);
    std::string tok = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    at = comma == std::string::npos ? s.size() : comma + 1;
    if (tok.empty()) continue;
    AttackSpec a;
    a.label = tok;
    size_t colon = tok.find(':');
    a.kind = tok.substr(0, colon);
    std::string arg = colon == std::string::npos ? "" : tok.substr(colon + 1);
    try {
      if (!arg.empty()) {
        size_t x = arg.find('x');
        a.steps = std::stoi(arg.substr(0, x));
        if (x != std::string::npos) a.restarts = std::stoi(arg.substr(x + 1));
      }
    } catch (const std::exception&) {
      LLR_FAIL("attack '", tok, "': expected KIND:STEPS or KIND:STEPSxRESTARTS");
    }
    if (a.kind == "pgd-ce" || a.kind == "pgd-margin") {
      if (a.steps == 0) a.steps = a.kind == "pgd-ce" ? 20 : 50;
    } else if (a.kind == "mt") {
      if (a.steps == 0) a.steps = 20;
    } else if (a.kind == "apgd-ce" || a.kind == "apgd-t") {
      if (a.steps == 0) a.steps = 100;
    } else {
      LLR_FAIL("unknown attack '", tok, "' (pgd-ce:STEPSxRESTARTS, pgd-margin:STEPS, mt:STEPS, apgd-ce, apgd-t)");
    }
    LLR_CHECK(a.steps > 0 && (a.restarts > 0 || (a.kind == "pgd-ce" && a.restarts == 0)), "attack '", tok,
              "': steps and restarts must be positive (pgd-ce:STEPSx0: one run from delta = 0)");
    out.push_back(a);
  }
  LLR_CHECK(!out.empty(), "no attacks given");
  return out;
}

namespace {

// Rows idx of t (any dtype, any device), in order.
Tensor take_rows(const Tensor& t, const std::vector<int64_t>& idx) {
  Tensor h = t.to(Device::cpu);
  Shape s = h.shape();
  s[0] = static_cast<int64_t>(idx.size());
  Tensor out = Tensor::empty(s, h.dtype(), h.layout());
  size_t row = static_cast<size_t>(h.numel() / std::max<int64_t>(h.dim(0), 1)) * dtype_size(h.dtype());
  for (size_t i = 0; i < idx.size(); ++i)
    std::memcpy(static_cast<uint8_t*>(out.raw_data()) + i * row,
                static_cast<const uint8_t*>(h.raw_data()) + idx[i] * row, row);
  return t.device() == Device::cpu ? out : out.to(t.device());
}

// dst[idx[i]] = src[i] for rows.
void put_rows(Tensor& dst_host, const Tensor& src, const std::vector<int64_t>& idx) {
  Tensor h = src.to(Device::cpu);
  size_t row = static_cast<size_t>(h.numel() / std::max<int64_t>(h.dim(0), 1)) * dtype_size(h.dtype());
  for (size_t i = 0; i < idx.size(); ++i)
    std::memcpy(static_cast<uint8_t*>(dst_host.raw_data()) + idx[i] * row,
                static_cast<const uint8_t*>(h.raw_data()) + i * row, row);
}

std::vector<double> host_values(const Tensor& t) {
  Tensor h = (t.dtype() == DType::bf16 ? t.to(DType::f32) : t).to(Device::cpu);
  return h.to_vector();
}

Tensor labels_from(const std::vector<int32_t>& v, Device d) {
  Tensor t = Tensor::from_labels(v);
  return d == Device::cpu ? t : t.to(d);
}

Tensor vector_on(const std::vector<double>& v, DType dt, Device d) {
  Tensor t = Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, dt);
  return d == Device::cpu ? t : t.to(d);
}

struct Eval {
  nets::Model& model;
  DType compute;
  Tensor logits(const Tensor& x) const {
    nets::ForwardContext c;
    c.bn = nets::BnMode::eval;
    c.compute = compute;
    return model.forward(x, c);
  }
};

std::vector<int32_t> argmax_rows(const std::vector<double>& z, int64_t n, int64_t k) {
  std::vector<int32_t> out(n);
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<int32_t>(std::max_element(z.begin() + i * k, z.begin() + (i + 1) * k) - (z.begin() + i * k));
  return out;
}

// The classes of row i ordered by logit, largest first.
std::vector<int32_t> ranked(const std::vector<double>& z, int64_t i, int64_t k) {
  std::vector<int32_t> r(k);
  std::iota(r.begin(), r.end(), 0);
  std::stable_sort(r.begin(), r.end(), [&](int32_t a, int32_t b) { return z[i * k + a] > z[i * k + b]; });
  return r;
}

// State of one attack over the examples it attacks: which are still robust, and the perturbation that broke each.
struct Book {
  std::vector<char> robust;
  Tensor best_delta;  // host [N, H, W, C]
  std::vector<int64_t> active() const {
    std::vector<int64_t> a;
    for (size_t i = 0; i < robust.size(); ++i)
      if (robust[i]) a.push_back(static_cast<int64_t>(i));
    return a;
  }
  // Marks examples (positions in `idx`) whose prediction from logits z differs from their label as broken by delta.
  void record(const std::vector<int64_t>& idx, const std::vector<double>& z, int64_t k, const std::vector<int32_t>& y,
              const Tensor& delta) {
    std::vector<int32_t> pred = argmax_rows(z, static_cast<int64_t>(idx.size()), k);
    std::vector<int64_t> broken_pos, broken_idx;
    for (size_t i = 0; i < idx.size(); ++i)
      if (robust[idx[i]] && pred[i] != y[i]) {
        robust[idx[i]] = 0;
        broken_pos.push_back(static_cast<int64_t>(i));
        broken_idx.push_back(idx[i]);
      }
    if (!broken_pos.empty()) put_rows(best_delta, take_rows(delta, broken_pos), broken_idx);
  }
};

using LossOnLogits = std::function<Tensor(const Tensor& z)>;

// Sign-gradient PGD (or Adam) on examples idx from a random start; returns nothing, updates the book.
void pgd_run(const Eval& ev, const Tensor& x_all, const std::vector<int32_t>& y_all, const std::vector<int64_t>& idx,
             Book& book, const std::function<LossOnLogits(const Tensor& y)>& make_loss, int steps, double eps,
             bool adam, uint64_t seed, uint64_t counter, bool random_start = true) {
  if (idx.empty()) return;
  Device dev = x_all.device();
  Tensor x = take_rows(x_all, idx);
  std::vector<int32_t> y(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) y[i] = y_all[idx[i]];
  Tensor yt = labels_from(y, dev);
  LossOnLogits loss = make_loss(yt);
  int64_t k = 0;
  Tensor delta = random_start ? backend::perturbation_init(x, eps, 0.0, seed, counter) : backend::full_like(x, 0.0);
  PerturbationParams p;
  p.update = adam ? PerturbationUpdate::adam : PerturbationUpdate::sign;
  p.step_size = adam ? 0.1 : eps / 4;
  p.eps = eps;
  Tensor m, v, none;
  if (adam) m = backend::full_like(x, 0.0), v = backend::full_like(x, 0.0);
  for (int t = 0; t <= steps; ++t) {
    Tensor d = delta.detach().requires_grad_();
    Tensor z = ev.logits(add(x, d));
    k = z.dim(1);
    book.record(idx, host_values(z), k, y, delta);
    if (t == steps) break;
    Tensor l = loss(z);
    Tensor g = grad({l}, {backend::full_like(l, 1.0)}, {d})[0];
    Tape::current().clear();
    p.t = t + 1;
    backend::perturbation_step(delta, x, g, none, none, m, v, p);
  }
  Tape::current().clear();
}

// APGD (Croce & Hein 2020) on examples idx with a per-example loss to maximise.
void apgd_run(const Eval& ev, const Tensor& x_all, const std::vector<int32_t>& y_all, const std::vector<int64_t>& idx,
              Book& book, const std::function<LossOnLogits(const Tensor& y, const std::vector<int64_t>& idx)>& make_loss,
              int steps, double eps, uint64_t seed, uint64_t counter) {
  if (idx.empty()) return;
  Device dev = x_all.device();
  const int64_t n = static_cast<int64_t>(idx.size());
  Tensor x = take_rows(x_all, idx);
  std::vector<int32_t> y(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) y[i] = y_all[idx[i]];
  Tensor yt = labels_from(y, dev);
  LossOnLogits loss = make_loss(yt, idx);

  // Checkpoints: p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
  std::vector<int> checkpoints;
  for (double p0 = 0, p1 = 0.22; p1 < 1.0;) {
    checkpoints.push_back(static_cast<int>(std::ceil(p1 * steps)));
    double p2 = p1 + std::max(p1 - p0 - 0.03, 0.06);
    p0 = p1, p1 = p2;
  }
  const double rho = 0.75;
  std::vector<double> eta(n, 2 * eps), best(n, -INFINITY), last(n, -INFINITY), best_at_checkpoint(n, -INFINITY),
      eta_at_checkpoint(n, 2 * eps);
  std::vector<int> successes(n, 0);
  Tensor delta = backend::perturbation_init(x, eps, 0.0, seed, counter);
  Tensor delta_prev = delta.clone(), best_delta = delta.clone();
  DType dt = x.dtype();
  int last_checkpoint = 0;
  size_t next_cp = 0;
  for (int t = 0; t <= steps; ++t) {
    Tensor d = delta.detach().requires_grad_();
    Tensor z = ev.logits(add(x, d));
    book.record(idx, host_values(z), z.dim(1), y, delta);
    Tensor l = loss(z);
    Tensor g = grad({l}, {backend::full_like(l, 1.0)}, {d})[0];
    Tape::current().clear();
    std::vector<double> lv = host_values(l);
    std::vector<double> improved(n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      if (t > 0 && lv[i] > last[i]) ++successes[i];
      last[i] = lv[i];
      if (lv[i] > best[i]) {
        best[i] = lv[i];
        improved[i] = 1;
      }
    }
    best_delta = backend::select_rows(best_delta, delta, vector_on(improved, dt, dev));
    if (t == steps) break;
    std::vector<double> restart(n, 0.0);
    if (next_cp < checkpoints.size() && t == checkpoints[next_cp]) {
      int span = t - last_checkpoint;
      for (int64_t i = 0; i < n; ++i) {
        bool few = successes[i] < rho * span;
        bool stalled = eta_at_checkpoint[i] == eta[i] && best_at_checkpoint[i] == best[i];
        if (few || stalled) {
          eta[i] /= 2;
          restart[i] = 1;
        }
        successes[i] = 0;
        eta_at_checkpoint[i] = eta[i];
        best_at_checkpoint[i] = best[i];
      }
      last_checkpoint = t;
      ++next_cp;
    }
    if (std::any_of(restart.begin(), restart.end(), [](double r) { return r != 0; })) {
      // Continue from the best point (and its gradient) without momentum.
      Tensor mask = vector_on(restart, dt, dev);
      delta = backend::select_rows(delta, best_delta, mask);
      delta_prev = backend::select_rows(delta_prev, best_delta, mask);
      Tensor dr = delta.detach().requires_grad_();
      Tensor lr = loss(ev.logits(add(x, dr)));
      Tensor gr = grad({lr}, {backend::full_like(lr, 1.0)}, {dr})[0];
      Tape::current().clear();
      g = backend::select_rows(g, gr, mask);
    }
    backend::apgd_step(delta, delta_prev, x, g, vector_on(eta, dt, dev), t == 0 ? 1.0 : 0.75, eps);
  }
}

}  // namespace

std::vector<char> correctly_classified(nets::Model& model, const Tensor& x, const Tensor& y, DType compute) {
  NoGradGuard no_grad;
  Eval ev{model, compute};
  Tensor z = ev.logits(x);
  std::vector<double> zv = host_values(z);
  std::vector<int32_t> pred = argmax_rows(zv, z.dim(0), z.dim(1));
  Tensor yh = y.to(Device::cpu);
  std::vector<char> out(pred.size());
  for (size_t i = 0; i < pred.size(); ++i) out[i] = pred[i] == yh.data<int32_t>()[i];
  return out;
}

AttackResult run_attack(nets::Model& model, const Tensor& x, const Tensor& y, const std::vector<char>& correct,
                        const AttackSpec& spec, double eps, uint64_t seed, DType compute) {
  LLR_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, "attacks take f32 or f64 images, got ", x.describe());
  Eval ev{model, compute};
  Book book;
  book.robust = correct;
  book.best_delta = Tensor::zeros(x.shape(), x.dtype(), x.layout());
  Tensor yh = y.to(Device::cpu);
  std::vector<int32_t> yv(yh.data<int32_t>(), yh.data<int32_t>() + yh.numel());
  const uint64_t stride = static_cast<uint64_t>(x.numel());
  Device dev = x.device();
  if (spec.kind == "pgd-ce") {
    auto ce = [](const Tensor& yt) { return [yt](const Tensor& z) { return cross_entropy(z, yt); }; };
    if (spec.restarts == 0) pgd_run(ev, x, yv, book.active(), book, ce, spec.steps, eps, false, seed, 0, false);
    for (int r = 0; r < spec.restarts; ++r) pgd_run(ev, x, yv, book.active(), book, ce, spec.steps, eps, false, seed, r * stride);
  } else if (spec.kind == "pgd-margin") {
    for (int r = 0; r < spec.restarts; ++r)
      pgd_run(ev, x, yv, book.active(), book,
              [](const Tensor& yt) { return [yt](const Tensor& z) { return scale(margin_loss(z, yt), -1.0); }; },
              spec.steps, eps, true, seed, r * stride);
  } else if (spec.kind == "mt" || spec.kind == "apgd-t") {
    // Target ranks 1..K-1 (or 9) by the clean logits, each against the still-robust examples.
    Tensor zc;
    {
      NoGradGuard no_grad;
      zc = ev.logits(x);
    }
    std::vector<double> zv = host_values(zc);
    int64_t k = zc.dim(1);
    int64_t targets = std::min<int64_t>(k - 1, 9);
    for (int64_t rank = 1; rank <= targets; ++rank) {
      std::vector<int32_t> target(yv.size());
      for (size_t i = 0; i < yv.size(); ++i) {
        std::vector<int32_t> r = ranked(zv, static_cast<int64_t>(i), k);
        int64_t seen = 0;
        for (int32_t c : r)
          if (c != yv[i] && ++seen == rank) target[i] = c;
      }
      std::vector<int64_t> active = book.active();
      for (int rs = 0; rs < spec.restarts; ++rs) {
        active = book.active();
        uint64_t counter = (static_cast<uint64_t>(rank) * 16 + rs) * stride;
        if (spec.kind == "mt") {
          std::vector<int32_t> t_active;
          for (int64_t i : active) t_active.push_back(target[i]);
          Tensor tt = labels_from(t_active, dev);
          pgd_run(ev, x, yv, active, book,
                  [tt](const Tensor& yt) {
                    return [tt, yt](const Tensor& z) { return sub(gather_logit(z, tt), gather_logit(z, yt)); };
                  },
                  spec.steps, eps, false, seed, counter);
        } else {
          LLR_CHECK(k >= 4, "apgd-t needs at least 4 classes for the DLR loss");
          apgd_run(ev, x, yv, active, book,
                   [&, k](const Tensor& yt, const std::vector<int64_t>& idx) -> LossOnLogits {
                     std::vector<int32_t> t_active;
                     for (int64_t i : idx) t_active.push_back(target[i]);
                     Tensor tt = labels_from(t_active, dev);
                     // Targeted DLR: (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2), pi sorted by the current logits.
                     return [tt, yt, k, dev](const Tensor& z) {
                       std::vector<double> cur = host_values(z);
                       int64_t n = z.dim(0);
                       std::vector<int32_t> p1(n), p3(n), p4(n);
                       for (int64_t i = 0; i < n; ++i) {
                         std::vector<int32_t> r = ranked(cur, i, k);
                         p1[i] = r[0], p3[i] = r[2], p4[i] = r[3];
                       }
                       Tensor num = sub(gather_logit(z, tt), gather_logit(z, yt));
                       Tensor den = sub(gather_logit(z, labels_from(p1, dev)),
                                        scale(add(gather_logit(z, labels_from(p3, dev)),
                                                  gather_logit(z, labels_from(p4, dev))),
                                              0.5));
                       return div(num, add(den, backend::full_like(den, 1e-12)));
                     };
                   },
                   spec.steps, eps, seed, counter);
        }
      }
    }
  } else if (spec.kind == "apgd-ce") {
    for (int r = 0; r < spec.restarts; ++r)
      apgd_run(ev, x, yv, book.active(), book,
               [](const Tensor& yt, const std::vector<int64_t>&) -> LossOnLogits {
                 return [yt](const Tensor& z) { return cross_entropy(z, yt); };
               },
               spec.steps, eps, seed, r * stride);
  } else {
    LLR_FAIL("unknown attack kind ", spec.kind);
  }
  AttackResult res;
  res.robust = book.robust;
  res.delta = book.best_delta;
  return res;
}

PerExampleLoss model_cross_entropy(nets::Model& model, const Tensor& y, DType compute) {
  return [&model, y, compute](const Tensor& x) {
    nets::ForwardContext c;
    c.bn = nets::BnMode::eval;
    c.compute = compute;
    return cross_entropy(model.forward(x, c), y);
  };
}

std::vector<double> measure_gamma(const PerExampleLoss& loss, const Tensor& x_in, double eps, int steps, int restarts,
                                  uint64_t seed) {
  GradModeGuard grad_on(true);
  Tensor x = x_in.detach();
  Tensor X = x.detach().requires_grad_();
  Tensor l = loss(X);
  Tensor gx = grad({l}, {backend::full_like(l, 1.0)}, {X})[0];
  Tensor l0 = l.detach();
  Tape::current().clear();
  const int64_t n = x.dim(0);
  std::vector<double> gamma(n, 0.0);
  auto gap = [&](const Tensor& lp, const Tensor& d) {
    std::vector<double> a = host_values(lp), b = host_values(l0), c = host_values(d);
    std::vector<double> g(n);
    for (int64_t i = 0; i < n; ++i) g[i] = a[i] - b[i] - c[i];
    return g;
  };
  for (int r = 0; r < restarts; ++r) {
    Tensor delta = backend::perturbation_init(x, eps, 0.0, seed, static_cast<uint64_t>(r) * x.numel());
    Tensor d = backend::per_example_dot(delta, gx);
    Tensor m = backend::full_like(x, 0.0), v = backend::full_like(x, 0.0);
    PerturbationParams p;
    p.update = PerturbationUpdate::adam;
    p.step_size = 0.1;
    p.eps = eps;
    for (int t = 0; t <= steps; ++t) {
      Tensor dv = delta.detach().requires_grad_();
      Tensor lp = loss(add(x, dv));
      std::vector<double> g = gap(lp.detach(), d);
      std::vector<double> s(n);
      for (int64_t i = 0; i < n; ++i) {
        gamma[i] = std::max(gamma[i], std::fabs(g[i]));
        s[i] = g[i] > 0 ? 1.0 : (g[i] < 0 ? -1.0 : 0.0);
      }
      if (t == steps) break;
      Tensor sg = vector_on(s, lp.dtype(), x.device());
      Tensor gw = grad({lp}, {sg}, {dv})[0];
      Tape::current().clear();
      p.t = t + 1;
      d = backend::perturbation_step(delta, x, gw, gx, sg, m, v, p);
    }
    Tape::current().clear();
  }
  return gamma;
}

}  // namespace llr
