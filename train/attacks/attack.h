// Evaluation attacks (l_inf, [0, 1] pixel space, batch norm in evaluation mode) and the local-linearity measure.
// Every attack is the perturbation search (train/robust/search.h) with its own loss and options, and works on the
// device: it takes the per-example mask of the examples still classified correctly, attacks only those, and returns
// the mask after it with the perturbation that broke each example. Each attack is one file of this folder and one
// line of attacks.def; `--attacks` lists are parsed against that registry.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nets/model.h"

namespace llr {

struct AttackContext {
  nets::Model& model;
  DType compute;
  double eps;
  uint64_t seed;
};

// One attack of a suite (autoattack): the mask after it and its wall-clock time.
struct AttackStage {
  std::string label;
  Tensor robust;
  double seconds;
};

struct AttackResult {
  Tensor robust;  // per example (images' dtype): 1 where still classified correctly after the attack
  Tensor delta;   // [N, H, W, C]: the perturbation that broke the example, zeros where robust
  std::vector<AttackStage> stages = {};  // a suite's attacks in order; empty for a single attack
};

class Attack {
 public:
  virtual ~Attack() = default;
  const std::string& label() const { return label_; }  // as given on the command line
  // x: images [N, H, W, C] (f32 or f64), y: labels; only rows where `robust` is 1 are attacked.
  virtual AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const = 0;

 protected:
  explicit Attack(std::string label) : label_(std::move(label)) {}

 private:
  std::string label_;
};

// The numbers of an attack's argument KIND:STEPSxRESTARTS; 0 where absent.
struct AttackArgs {
  std::string label;
  int steps = 0;
  int restarts = 0;
  bool has_steps = false, has_restarts = false;
};

struct AttackInfo {
  const char* name;
  const char* usage;    // e.g. "pgd-ce:STEPSxRESTARTS"
  const char* summary;  // for --help and the README
  std::function<std::unique_ptr<Attack>(const AttackArgs&)> make;
};

// The registry (attacks.def), in --help order.
const std::vector<AttackInfo>& attack_registry();
// A comma-separated list such as "pgd-ce:20x1,apgd-t": every attack resolved and its numbers checked, or a one-line
// error naming the first bad one.
std::vector<std::unique_ptr<Attack>> parse_attacks(const std::string& list);
std::string attack_usage();  // one line listing every attack's syntax

// Per example (images' dtype, on the device): the model's prediction equals the label (batch norm in evaluation
// mode).
Tensor correct_mask(nets::Model& model, const Tensor& x, const Tensor& y, DType compute);

// gamma(eps, x_i) = max over the eps-ball (and the [0, 1] box) of |l_i(x_i + delta) - l_i(x_i) - <delta,
// grad l_i(x_i)>|, estimated by `steps` Adam steps (lr 0.1) from `restarts` random starts, batch norm in evaluation
// mode. loss(x) gives per-example losses [N] (cross-entropy of the model for llrtrain eval).
using PerExampleLoss = std::function<Tensor(const Tensor&)>;
Tensor measure_gamma(const PerExampleLoss& loss, const Tensor& x, double eps, int steps, int restarts, uint64_t seed);
PerExampleLoss model_cross_entropy(nets::Model& model, const Tensor& y, DType compute);

// The logits of an evaluation-mode forward pass.
Tensor eval_logits(nets::Model& model, const Tensor& x, DType compute);

}  // namespace llr
