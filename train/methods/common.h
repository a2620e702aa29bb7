// Small helpers the method files share.
#pragma once

#include "engine/backend.h"
#include "engine/ops.h"
#include "train/methods/method.h"
#include "train/robust/search.h"
#include "train/training_kernels.h"

namespace llr::methods {

inline nets::ForwardContext forward_context(nets::BnMode bn, DType compute, std::vector<BatchStats>* record = nullptr,
                                            const std::vector<BatchStats>* use = nullptr,
                                            bool update_running = false) {
  nets::ForwardContext c;
  c.bn = bn;
  c.compute = compute;
  c.record = record;
  c.use = use;
  c.update_running = update_running;
  return c;
}

// The mean of a per-example vector, on the device: no host synchronisation inside a training step.
inline Tensor batch_mean(const Tensor& t) { return backend::scale(backend::sum_all(t), 1.0 / double(t.numel())); }

inline Tensor accuracy_of(const Tensor& logits, const Tensor& y) {
  return backend::scale(training::count_correct(logits, y), 1.0 / double(logits.dim(0)));
}

// A loss whose whole gradient comes from the final reverse pass.
inline void set_loss(ObjectiveResult& r, const Tensor& loss) {
  r.loss = loss.detach();
  r.outputs = {loss};
  r.cotangents = {backend::full_like(loss, 1.0)};
}

// scale times the step's radius, read on the device where a recorded step holds it (ctx.device_eps): a replay then
// follows the eps warm-up.
inline EpsLength eps_length(const StepContext& ctx, double scale = 1) { return {scale, ctx.eps, ctx.device_eps}; }

// Where draw k of a step's `draws` random draws (each of at most `numel` counters, a batch's elements) starts, so no
// two draws of a run overlap. A method with one draw per step draws from PGD's counters. With the step on the device
// (a recorded step) the kernel counts from there, to the same numbers.
inline RandomCounter draw_counter(const StepContext& ctx, const Tensor& x, uint64_t draws, uint64_t k) {
  const uint64_t numel = static_cast<uint64_t>(x.numel());
  if (ctx.device_step.defined()) return {k * numel, draws * numel, ctx.device_step};
  return (ctx.step * draws + k) * numel;
}

// The options of a search of `steps` steps of `step_size` inside the step's eps-ball (read where a replay holds it),
// drawing its start from `counter`, with SearchOptions' defaults otherwise (sign steps from a uniform start, projected
// onto the ball and [0, 1]: PGD's attack); the methods set what they change (rule, start, projection) after.
inline robust::SearchOptions search_options(const StepContext& ctx, int steps, EpsLength step_size,
                                            RandomCounter counter) {
  robust::SearchOptions o;
  o.steps = steps;
  o.step_size = std::move(step_size);
  o.eps = eps_length(ctx);
  o.seed = ctx.seed;
  o.counter = std::move(counter);
  return o;
}

// The perturbation that maximises the cross-entropy by the search `o` (its steps, rule, start and projection), batch
// norm in the attack passes as `bn` says.
inline Tensor cross_entropy_attack(nets::Model& model, const Tensor& x, const Tensor& y, nets::BnMode bn,
                                   const StepContext& ctx, const robust::SearchOptions& o) {
  robust::SearchProblem p;
  p.per_example = {y};
  p.loss = [&model, bn, &ctx](const Tensor& xa, const std::vector<Tensor>& rows, Tensor*) {
    auto fc = forward_context(bn, ctx.compute);
    return cross_entropy(model.forward(xa, fc), rows[0]);
  };
  return robust::search(x, p, o).delta;
}

// The mean cross-entropy at x + delta with the pass's own batch statistics (updating the running averages when the
// step says so): the training loss of the adversarial methods.
inline Tensor adversarial_loss(nets::Model& model, const Tensor& x, const Tensor& delta, const Tensor& y,
                               const StepContext& ctx, Tensor* logits) {
  auto fc = forward_context(nets::BnMode::train, ctx.compute, nullptr, nullptr, ctx.update_running);
  *logits = model.forward(add(x, delta), fc);
  return mean(cross_entropy(*logits, y));
}

}  // namespace llr::methods
