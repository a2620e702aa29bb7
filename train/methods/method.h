// Training methods. A method builds, for one batch, the recorded computation whose reverse pass gives its objective's
// exact gradient with the perturbation held constant. Each method is one file in this folder with its own settings
// (declared in its visit()) and one line in methods.def; the trainer, the benchmark, the gradient check and the
// command line find it there.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nets/model.h"
#include "train/settings.h"

namespace llr {

// The settings the robust methods share: the threat model and the attack that trains against it.
struct RobustSettings {
  double eps = 8.0 / 255.0;
  int64_t eps_warmup = -1;  // steps over which eps grows linearly from 0; -1: the method's default
  double eps_warmup_fraction = 0;  // > 0: instead, the fraction of training progress over which eps grows
  int64_t attack_steps = 10;
  double attack_step = 2.0 / 255.0;
  std::string attack_bn = "eval";  // batch norm in attack steps: eval (running averages) or train (the batch's own)

  void visit(SettingVisitor& v) {
    v.real({"eps", "l_inf radius, e.g. 8/255"}, eps, Range::at_least(0));
    v.integer({"eps_warmup_steps", "steps over which eps grows linearly from 0 (-1: 500 for llr, else 0)",
               "eps-warmup"},
              eps_warmup, Range::at_least(-1));
    v.real({"eps_warmup_fraction",
            "eps grows linearly from 0 over this fraction of training (of the steps, or of --time-budget); 0: use "
            "--eps-warmup"},
           eps_warmup_fraction, Range::between(0, 1));
    v.integer({"pgd_steps", "attack steps of PGD and TRADES training"}, attack_steps, Range::at_least(1));
    v.real({"pgd_alpha", "attack step size of PGD and TRADES training, e.g. 2/255"}, attack_step, Range::positive());
    v.text({"attack_bn", "batch norm in attack steps: running averages (eval) or the batch's statistics (train)"},
           attack_bn, {"eval", "train"});
  }
  nets::BnMode attack_bn_mode() const { return attack_bn == "train" ? nets::BnMode::train : nets::BnMode::eval; }
};

// What a method's objective needs besides the model and the batch.
struct StepContext {
  DType compute = DType::f32;
  uint64_t seed = 0;
  uint64_t step = 0;
  // `step` as one f64 element on the device, where a recorded step (train/step.h) draws its random numbers from;
  // undefined: they come from `step`.
  Tensor device_step;
  double eps = 0;                       // the radius of this step (after warm-up)
  // `eps` as one f64 element on the device, where a recorded step reads its radius and the lengths on its scale
  // (methods::eps_length); undefined: they come from `eps`.
  Tensor device_eps;
  bool update_running = true;           // the nominal (or, for PGD, adversarial) pass updates running averages
  const Tensor* fixed_delta = nullptr;  // skip the attack or search and use this perturbation (gradient checks)
};

struct ObjectiveResult {
  Tensor loss;  // the objective's value (a one-element tensor, for logging; not for differentiation)
  // The gradient is that of sum_k <cotangents[k], outputs[k]> (recorded on the tape) plus partial_grads (gradients
  // of parts already reverse-differentiated and freed, in model.parameters() order); objective_gradients() adds
  // them up.
  std::vector<Tensor> outputs, cotangents, partial_grads;
  Tensor delta;        // the perturbation used (undefined for natural training)
  Tensor clean_logits; // logits at x, where the method computes them (not PGD)
  Tensor adv_logits;   // logits at x + delta (PGD, TRADES)
  // Tensors the objective drew at random from (seed, step), e.g. a random point of the eps-ball; a gradient check
  // holds them fixed like delta and writes them for the PyTorch reference.
  std::map<std::string, Tensor> drawn;
  // Batch means on the device (one-element tensors, read only when logging), e.g. llr_gamma.
  std::map<std::string, Tensor> metrics;
};

class Method {
 public:
  virtual ~Method() = default;
  virtual const char* name() const = 0;
  // One line for --help: what the method trains on.
  virtual const char* summary() const = 0;
  // Its cost per step in forward-pass units F (a full backward ~ 2F, an input-only backward ~ F), e.g. "(3 + 2k)F".
  virtual const char* cost() const = 0;
  virtual std::unique_ptr<Method> clone() const = 0;
  // The method's own settings.
  virtual void visit(SettingVisitor&) {}
  // `llrtrain bench --methods NAME-K`: K attack or search steps.
  virtual void set_steps(RobustSettings& robust, int steps) { robust.attack_steps = steps; }
  virtual int64_t default_eps_warmup() const { return 0; }
  // x: images in [0, 1] (f32 or f64, NHWC), y: labels. Leaves the recorded graph on the tape for the caller's reverse
  // pass (objective_gradients).
  virtual ObjectiveResult build(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                                const StepContext& ctx) const = 0;
  // The objective's value computed directly from its definition (no surrogate) at ctx.fixed_delta, with whatever
  // the method draws at random drawn from (ctx.seed, ctx.step) as build() draws it: the reference of the gradient
  // checks. The default evaluates build().
  virtual double definition(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                            const StepContext& ctx) const;
};

// One instance of every registered method (methods.def), each holding its settings.
class MethodSet {
 public:
  MethodSet();
  MethodSet(const MethodSet& other);
  MethodSet& operator=(const MethodSet& other);
  Method& get(const std::string& name) const;  // throws naming the known methods
  void visit(SettingVisitor& v);
  std::vector<std::string> names() const;

 private:
  std::vector<std::unique_ptr<Method>> methods_;
};

// The objective's gradient with respect to params (= model.parameters()): one reverse pass over what r recorded,
// plus the parts already reduced to partial gradients.
std::vector<Tensor> objective_gradients(const ObjectiveResult& r, const std::vector<Tensor>& params);

// eps at a step, growing linearly from 0 over `warmup` steps.
double eps_at(double eps, int64_t warmup, uint64_t step);

// A one-element tensor's value on the host (synchronises with the device).
double host_value(const Tensor& t);

}  // namespace llr
