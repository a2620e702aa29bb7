#include "train/step.h"

#include <atomic>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/profile.h"
#include "train/training_kernels.h"

namespace llr {

namespace {

// The step without the optimiser: its outputs and the parameters' gradients.
StepOutput objective_step(nets::Model& model, const Method& method, const RobustSettings& robust, const Tensor& x,
                          const Tensor& y, const StepContext& ctx, std::vector<Tensor>* grads) {
  TapeScope scope;
  ObjectiveResult r = method.build(model, x, y, robust, ctx);
  {
    LLR_PHASE("final reverse pass", x.device());
    *grads = objective_gradients(r, model.parameters());
  }
  StepOutput out;
  out.loss = r.loss;
  if (r.clean_logits.defined()) out.clean_correct = training::count_correct(r.clean_logits.detach(), y);
  if (r.adv_logits.defined()) out.adv_correct = training::count_correct(r.adv_logits.detach(), y);
  out.metrics = r.metrics;
  return out;
}

// Whether every compute copy the optimiser keeps holds its weight's current values (the optimiser wrote it at the
// last update), as a recording that reads it needs: a write from elsewhere (a checkpoint loaded, a weight set) leaves
// its copy stale. Everything else a recording reads of the model, it reads on the device.
bool copies_current(nets::Model& model) {
  for (const nets::NamedTensor& e : model.registry().entries())
    if (e.compute && e.compute->maintained() && !e.compute->current_for(e.tensor)) return false;
  return true;
}

std::vector<int64_t> counter_values(nets::Model& model) {
  std::vector<int64_t> v;
  for (const auto& [name, counter] : model.registry().counters()) v.push_back(*counter);
  return v;
}

}  // namespace

StepOutput training_step(nets::Model& model, Sgd& optimizer, const Method& method, const RobustSettings& robust,
                         const Tensor& x, const Tensor& y, const StepContext& ctx, double lr) {
  std::vector<Tensor> grads;
  StepOutput out = objective_step(model, method, robust, x, y, ctx, &grads);
  LLR_PHASE("optimiser", x.device());
  optimizer.step(grads, lr);
  return out;
}

struct TrainingSteps::Recorded {
  Key key;
  std::unique_ptr<graph::Replay> replay;
  // The inputs the recording reads: the batch, and the step count and radius as one f64 element each.
  Tensor x, y, step, eps;
  StepOutput out;
  std::vector<Tensor> grads;
  std::vector<int64_t> counter_increments;  // of the batch-norm step counters, per step
};

bool TrainingSteps::Key::operator==(const Key& o) const {
  return x_shape == o.x_shape && y_shape == o.y_shape && x_dtype == o.x_dtype && y_dtype == o.y_dtype &&
         x_layout == o.x_layout && y_layout == o.y_layout && device == o.device && compute == o.compute &&
         seed == o.seed && update_running == o.update_running;
}

namespace {
std::atomic<bool> cpu_steps_recorded{false};
}  // namespace

TrainingSteps::TrainingSteps(nets::Model& model, Sgd& optimizer, const Method& method, const RobustSettings& robust)
    : model_(model), optimizer_(optimizer), method_(method), robust_(robust) {}

void TrainingSteps::set_record_on_cpu(bool on) { cpu_steps_recorded = on; }
bool TrainingSteps::record_on_cpu() { return cpu_steps_recorded.load(); }

TrainingSteps::~TrainingSteps() = default;

void TrainingSteps::release() { rec_.reset(); }

TrainingSteps::Key TrainingSteps::key_of(const Tensor& x, const Tensor& y, const StepContext& ctx) {
  return {x.shape(),  y.shape(),   x.dtype(), y.dtype(), x.layout(),        y.layout(),
          x.device(), ctx.compute, ctx.seed,  ctx.update_running};
}

void TrainingSteps::load_inputs(Recorded& r, const Tensor& x, const Tensor& y, const StepContext& ctx) {
  copy_into(r.x, x);
  copy_into(r.y, y);
  backend::fill(r.step, static_cast<double>(ctx.step));
  backend::fill(r.eps, ctx.eps);
}

void TrainingSteps::record(const Tensor& x, const Tensor& y, const StepContext& ctx) {
  auto rec = std::make_unique<Recorded>();
  rec->key = key_of(x, y, ctx);
  rec->x = Tensor::empty(x.shape(), x.dtype(), x.layout(), x.device());
  rec->y = Tensor::empty(y.shape(), y.dtype(), y.layout(), y.device());
  rec->step = Tensor::zeros({}, DType::f64, Layout::plain, x.device());
  rec->eps = Tensor::zeros({}, DType::f64, Layout::plain, x.device());
  load_inputs(*rec, x, y, ctx);
  StepContext rctx = ctx;
  rctx.device_step = rec->step;
  rctx.device_eps = rec->eps;
  const std::vector<int64_t> before = counter_values(model_);
  // A CPU recording runs the step: if it fails part way, the batch-norm averages it updated are put back (the weights
  // and momentum are the optimiser's, outside the recording). A failed capture on the GPU ran nothing.
  std::vector<std::pair<Tensor, Tensor>> buffers;
  if (x.device() == Device::cpu)
    for (const nets::NamedTensor& e : model_.registry().entries())
      if (e.kind == nets::TensorKind::buffer) buffers.emplace_back(e.tensor, e.tensor.clone());
  try {
    Recorded* r = rec.get();
    r->replay = graph::record(
        x.device(),
        [&] {
          r->grads.clear();
          r->out = objective_step(model_, method_, robust_, r->x, r->y, rctx, &r->grads);
        },
        graph::Span::lasting);
  } catch (const std::exception& e) {
    // The host code ran (the counters moved) while the recorded work did not, or partly: the caller runs this step
    // eagerly, from the state before it.
    auto& counters = model_.registry().counters();
    for (size_t i = 0; i < counters.size(); ++i) *counters[i].second = before[i];
    for (auto& [buffer, saved] : buffers) copy_into(buffer, saved);
    graph::switch_off("recording a training step", e);
    return;
  }
  // The host code ran once while recording: its counts become the increments each run of the recording adds.
  auto& counters = model_.registry().counters();
  for (size_t i = 0; i < counters.size(); ++i) {
    rec->counter_increments.push_back(*counters[i].second - before[i]);
    *counters[i].second = before[i];
  }
  rec_ = std::move(rec);
}

StepOutput TrainingSteps::run(const Tensor& x, const Tensor& y, const StepContext& ctx, double lr) {
  last_recorded_ = false;
  auto eager = [&] { return training_step(model_, optimizer_, method_, robust_, x, y, ctx, lr); };
  const bool graphs = graph::enabled() && !profile::timing() && !graph::recording() && ctx.fixed_delta == nullptr &&
                      !ctx.device_step.defined() && !ctx.device_eps.defined() &&
                      (x.device() != Device::cpu || record_on_cpu());
  if (!graphs) {
    rec_.reset();
    previous_.reset();
    return eager();
  }
  const Key key = key_of(x, y, ctx);
  // A recording reads the weights' compute copies that the optimiser writes (nets::ComputeCopy). If one is stale, this
  // step runs eagerly, which converts it afresh in place, and the next one records.
  const bool untouched = copies_current(model_);
  if (rec_ && (!(rec_->key == key) || !untouched)) rec_.reset();
  bool ran = false;
  if (!rec_) {
    // Recorded from the second step with the same settings: the first plans the convolutions (cuDNN's algorithm
    // search cannot be recorded).
    const bool settled = previous_ && *previous_ == key && untouched;
    previous_ = key;
    if (!settled) return eager();
    record(x, y, ctx);
    if (!rec_) return eager();
    ran = rec_->replay->ran_while_recording();
  } else {
    load_inputs(*rec_, x, y, ctx);
  }
  if (!ran) {
    try {
      rec_->replay->launch();
      graph::note_replay();
    } catch (const std::exception& e) {
      // A launch the device refused queued nothing: this step and the rest run eagerly.
      rec_.reset();
      graph::switch_off("replaying a training step", e);
      return eager();
    }
  }
  auto& counters = model_.registry().counters();
  for (size_t i = 0; i < counters.size(); ++i) *counters[i].second += rec_->counter_increments[i];
  last_recorded_ = true;
  LLR_PHASE("optimiser", x.device());
  optimizer_.step(rec_->grads, lr);
  return rec_->out;
}

}  // namespace llr
