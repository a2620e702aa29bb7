#include "train/robust/search.h"

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/graph.h"
#include "engine/ops.h"
#include "engine/profile.h"

namespace llr::robust {

std::vector<int> apgd_checkpoints(int steps) {
  // Integer arithmetic as in the reference implementation: the interval starts at 22% of the steps and shrinks by
  // 3% of them per checkpoint down to 6% (the fractional recurrence of the paper rounds differently, e.g. 58 instead
  // of 57 for 100 steps).
  std::vector<int> out;
  const int shrink = std::max(static_cast<int>(0.03 * steps), 1), shortest = std::max(static_cast<int>(0.06 * steps), 1);
  for (int interval = std::max(static_cast<int>(0.22 * steps), 1), at = interval; at <= steps;
       interval = std::max(interval - shrink, shortest), at += interval)
    out.push_back(at);
  return out;
}

Tensor rows_of(const Tensor& mask, int64_t* count) {
  std::vector<double> m = mask.to(Device::cpu).to_vector();
  std::vector<int32_t> idx;
  for (size_t i = 0; i < m.size(); ++i)
    if (m[i] != 0) idx.push_back(static_cast<int32_t>(i));
  *count = static_cast<int64_t>(idx.size());
  if (*count == mask.numel()) return Tensor();
  Tensor t = Tensor::from_labels(idx);
  return mask.device() == Device::cpu ? t : t.to(mask.device());
}

Tensor taken(const Tensor& t, const Tensor& idx) { return !t.defined() || !idx.defined() ? t : robust::take_rows(t, idx); }

void place(Tensor& full, const Tensor& part, const Tensor& idx) {
  if (!idx.defined()) {
    full = part;
    return;
  }
  robust::put_rows(full, part, idx);
}

namespace {

// The rows a run searches: the images and every per-example tensor of the problem, taken to those rows.
struct Rows {
  Tensor x;
  std::vector<Tensor> per_example;
  Tensor gap_base, gap_gradient, labels;
};

Rows take(const Tensor& x, const SearchProblem& p, const Tensor& idx) {
  Rows r{taken(x, idx), {}, taken(p.gap_base, idx), taken(p.gap_gradient, idx), taken(p.labels, idx)};
  for (const Tensor& t : p.per_example) r.per_example.push_back(taken(t, idx));
  return r;
}

Tensor per_example_full(int64_t n, double value, const Tensor& like) {
  return Tensor::full({n}, value, like.dtype(), Layout::plain, like.device());
}

struct Run {
  Tensor delta, d, max_value, robust, broken_delta;
};

Run run_once(const Rows& rows, const SearchProblem& p, const SearchOptions& o, const RandomCounter& counter) {
  const Tensor& x = rows.x;
  const int64_t n = x.dim(0);
  const bool gap = rows.gap_gradient.defined(), apgd = o.rule == StepRule::apgd;
  Run r;
  Tensor delta = o.start == Start::zero
                     ? backend::full_like(x, 0.0)
                     : o.start == Start::normal
                           ? robust::perturbation_init(x, o.eps, o.normal_scale, o.seed, counter)
                           : robust::perturbation_init(x, o.eps.times(o.start_scale), 0.0, o.seed, counter);
  Tensor d = gap ? backend::per_example_dot(delta, rows.gap_gradient) : Tensor();
  if (o.track_max) r.max_value = per_example_full(n, -INFINITY, x);
  if (o.early_stop) {
    r.robust = per_example_full(n, 1.0, x);
    r.broken_delta = backend::full_like(x, 0.0);
  }

  PerturbationParams pp;
  pp.update = o.rule == StepRule::adam ? PerturbationUpdate::adam : PerturbationUpdate::sign;
  pp.step_size = o.step_size;
  pp.eps = o.eps;
  pp.projection = o.projection;
  // Adam's moments and its step count, kept on the device so every step runs the same kernels.
  Tensor m, v, adam_steps;
  if (o.rule == StepRule::adam) {
    m = backend::full_like(x, 0.0), v = backend::full_like(x, 0.0);
    adam_steps = Tensor::zeros({}, DType::f64, Layout::plain, x.device());
  }
  // APGD: per-example step sizes, best loss and point (and its gradient, to restart from), success counters.
  Tensor delta_prev, eta, best, last, successes, eta_at_cp, best_at_cp, best_delta, best_grad;
  std::vector<int> checkpoints;
  size_t next_cp = 0;
  int last_cp = 0;
  if (apgd) {
    delta_prev = delta.clone();
    eta = per_example_full(n, o.step_size.value() * o.eps.value(), x);
    best = per_example_full(n, -INFINITY, x);
    last = per_example_full(n, -INFINITY, x);
    successes = per_example_full(n, 0.0, x);
    eta_at_cp = eta.clone();
    best_at_cp = per_example_full(n, -INFINITY, x);
    best_delta = delta.clone();
    best_grad = backend::full_like(x, 0.0);
    checkpoints = apgd_checkpoints(o.steps);
  }

  // The evaluation after the last step matters only to what the search keeps per example.
  const bool evaluate_last = o.track_max || o.early_stop;
  // Iteration t: the objective at x + delta (and its bookkeeping), then (t < steps) the step.
  auto iteration = [&](int t) {
    LLR_PHASE(o.phase, x.device());
    TapeScope scope;
    Tensor dv = delta.detach().requires_grad_();
    Tensor logits;
    Tensor l = p.loss(add(x, dv), rows.per_example, o.early_stop ? &logits : nullptr);
    LLR_CHECK(l.rank() == 1 && l.dim(0) == n, "perturbation search: the loss must be per-example [", n, "], got ",
              l.describe());
    Tensor value, weights;
    if (gap) {
      LlrCoefficients c = robust::llr_coefficients(rows.gap_base, l.detach(), d, 0.0, 1.0, 0.0);
      value = c.abs_g;
      weights = c.sign_g;
    } else {
      value = l.detach();
      weights = backend::full_like(value, 1.0);
    }
    if (o.track_max) robust::update_max(r.max_value, value);
    if (o.early_stop) {
      LLR_CHECK(logits.defined(), "perturbation search: early stopping needs the loss to report its logits");
      Tensor still = backend::mul(r.robust, robust::predicted_correct(logits.detach(), rows.labels));
      r.broken_delta = robust::select_rows(r.broken_delta, delta, backend::sub(r.robust, still));
      r.robust = still;
    }
    Tensor improved;
    if (apgd) {
      improved = robust::apgd_track(value, best, last, successes, t == 0);
      best_delta = robust::select_rows(best_delta, delta, improved);
    }
    if (t == o.steps) return;
    Tensor g = grad({l}, {weights}, {dv})[0];
    if (apgd) {
      best_grad = robust::select_rows(best_grad, g, improved);
      if (next_cp < checkpoints.size() && t == checkpoints[next_cp]) {
        // Examples whose step size halves continue from their best point; the momentum term then points from the
        // previous iterate to it (delta_prev is kept), as in the reference implementation.
        Tensor restart = robust::apgd_checkpoint(successes, eta, eta_at_cp, best_at_cp, best, 0.75 * (t - last_cp));
        delta = robust::select_rows(delta, best_delta, restart);
        g = robust::select_rows(g, best_grad, restart);
        last_cp = t;
        ++next_cp;
      }
      robust::apgd_step(delta, delta_prev, x, g, eta, t == 0 ? 1.0 : 0.75, o.eps.value());
    } else {
      Tensor none;
      robust::perturbation_step(delta, x, g, gap ? rows.gap_gradient : none, gap ? weights : none, m, v, d,
                                adam_steps, pp);
    }
  };
  // Sign and Adam steps without early stopping or APGD's bookkeeping repeat the same kernels on the same tensors
  // (delta, Adam's moments and step count, d and the running maximum change in place): with --cuda-graphs they
  // replay one recorded iteration (engine/graph.h). The others change host state from one iteration to the next.
  const bool same_each_time = !o.early_stop && !apgd;
  if (same_each_time) {
    graph::repeat(x.device(), o.steps, [&] { iteration(0); });
  } else {
    for (int t = 0; t < o.steps; ++t) iteration(t);
  }
  if (evaluate_last) iteration(o.steps);
  r.delta = delta;
  r.d = d;
  return r;
}

}  // namespace

SearchResult search(const Tensor& x, const SearchProblem& problem, const SearchOptions& o, const Tensor& active) {
  LLR_CHECK(x.defined() && (x.dtype() == DType::f32 || x.dtype() == DType::f64) && x.rank() >= 1,
            "perturbation search: images must be f32 or f64 with a batch axis, got ", x.describe());
  LLR_CHECK(o.steps >= 0 && o.restarts >= 1 && o.eps.value() >= 0 && o.step_size.value() >= 0,
            "perturbation search: steps ", o.steps, ", restarts ", o.restarts, ", eps ", o.eps.value(),
            " and step size ", o.step_size.value(), " must be valid");
  LLR_CHECK(o.start_scale >= 0, "perturbation search: the start scale ", o.start_scale, " must be non-negative");
  LLR_CHECK(o.projection == Projection::ball_and_box || o.rule != StepRule::apgd,
            "perturbation search: APGD steps always project onto the eps-ball");
  LLR_CHECK(o.rule != StepRule::apgd || (!o.eps.eps.defined() && !o.step_size.eps.defined()),
            "perturbation search: APGD takes its radius from the host");
  LLR_CHECK(!o.early_stop || problem.labels.defined(), "perturbation search: early stopping needs labels");
  LLR_CHECK(!active.defined() || o.early_stop, "perturbation search: an active mask needs early stopping");
  const int64_t n = x.dim(0);
  const uint64_t stride = static_cast<uint64_t>(x.numel());
  SearchResult res;
  if (o.track_max) res.max_value = per_example_full(n, -INFINITY, x);
  if (o.early_stop) {
    res.robust = active.defined() ? active.clone() : per_example_full(n, 1.0, x);
    res.broken_delta = backend::full_like(x, 0.0);
  }
  for (int restart = 0; restart < o.restarts; ++restart) {
    const RandomCounter counter = o.counter.plus(static_cast<uint64_t>(restart) * stride);
    // Early stopping: only the examples not yet broken, compacted (a synchronisation per restart, none per step).
    Tensor idx;
    bool all_rows = !o.early_stop || (restart == 0 && !active.defined());
    if (!all_rows) {
      int64_t count = 0;
      idx = rows_of(res.robust, &count);
      if (count == 0) break;
    }
    Run r = run_once(take(x, problem, idx), problem, o, counter);
    if (!res.delta.defined()) {
      res.delta = backend::full_like(x, 0.0);
      if (r.d.defined()) res.d = per_example_full(n, 0.0, x);
    }
    place(res.delta, r.delta, idx);
    if (r.d.defined()) place(res.d, r.d, idx);
    if (o.track_max) {
      Tensor mv = per_example_full(n, -INFINITY, x);
      place(mv, r.max_value, idx);
      robust::update_max(res.max_value, mv);
    }
    if (o.early_stop) {
      // The rows this run searched were unbroken before it: their breaking perturbations were still zero.
      place(res.robust, r.robust, idx);
      place(res.broken_delta, r.broken_delta, idx);
    }
  }
  return res;
}

}  // namespace llr::robust
