// The configurations of the llrtrain commands, each setting declared once in its struct's visit() (train/settings.h):
// `train` (TrainConfig, saved as the run's config.json), `eval` (EvalConfig) and `bench` (BenchConfig).
#pragma once

#include <string>
#include <vector>

#include "train/methods/method.h"
#include "train/settings.h"

namespace llr {

// Where the images come from: the synthetic set (no download) or a CIFAR-10 binary folder.
struct DataSettings {
  std::string data = "synthetic";
  int64_t synthetic_train = 5000, synthetic_val = 1000;
  int64_t holdout = 0;  // CIFAR-10: images split off the end of the training files for validation
  int64_t n_train = 0;  // use only the first n training images (0: all)

  void visit(SettingVisitor& v) {
    v.text({"data", "'synthetic' or a CIFAR-10 binary folder (data_batch_1.bin ...)"}, data, {});
    v.integer({"synthetic_train", "synthetic training images"}, synthetic_train, Range::at_least(1));
    v.integer({"synthetic_val", "synthetic validation images"}, synthetic_val, Range::at_least(0));
    v.integer({"holdout", "CIFAR-10: training images held out for validation"}, holdout, Range::at_least(0));
    v.integer({"n_train", "use only the first N training images (0: all)"}, n_train, Range::at_least(0));
  }
};

struct TrainConfig {
  DataSettings data;
  std::string model = "wrn-28-10";
  std::string act = "relu";
  int64_t epochs = 100;
  int64_t steps = 0;  // > 0: train for this many steps instead of whole epochs
  double time_budget = 0;  // > 0: stop when the training time reaches this many seconds
  int64_t batch = 128;
  double lr = 0.1;
  std::string schedule = "piecewise";
  std::vector<double> decay_at = {0.5, 0.75};  // piecewise: fractions of training
  double decay_factor = 0.1;
  int64_t warmup_steps = 0;
  double weight_decay = 5e-4;
  double momentum = 0.9;
  bool nesterov = false;
  bool augment = true;
  uint64_t seed = 0;
  std::string device = "auto";
  std::string precision = "fp32";
  bool cuda_graphs = false;  // replay recorded training steps and attack steps (train/step.h, engine/graph.h)
  std::string out;
  int64_t log_every = 20;
  int64_t eval_batch = 500;
  int64_t stop_after = 0;  // > 0: stop after this step as if interrupted (a checkpoint is written first)
  std::string method = "natural";
  RobustSettings robust;
  MethodSet methods;  // every method's own settings; `method` picks the one that trains

  void visit(SettingVisitor& v);
  const Method& chosen_method() const { return methods.get(method); }
  // The eps warm-up of this run: robust.eps_warmup, or the method's default when it is -1.
  int64_t eps_warmup() const;
  std::string to_json();
  static TrainConfig from_json(const std::string& text, const std::string& source);
};

// Settings of `train` that only a fresh run may set: on --resume the run's config.json rules, except for these.
bool resume_may_change(const std::string& setting_name);

struct EvalConfig {
  std::string checkpoint;
  std::string data = "synthetic";
  int64_t holdout = 0;
  std::string split = "test";
  std::string device = "auto";
  std::string json;
  std::string dump_logits;
  std::string attacks;
  double eps = 8.0 / 255.0;
  int64_t n = 0;
  int64_t batch = 0;
  uint64_t seed = 0;
  int64_t gamma_steps = 0;
  int64_t gamma_restarts = 1;

  void visit(SettingVisitor& v);
};

// The schema's checks and, beyond them, the attack list parsed: every caller (eval, the experiment driver) refuses a
// bad attack before any work.
void validate(EvalConfig& c);

struct BenchConfig {
  std::string model = "wrn-28-10";
  std::string act = "relu";
  std::string methods = "natural";  // natural, pgd-K, trades-K, llr-K (K attack or search steps)
  std::string llr_grad = "exact";
  int64_t tangent_segments = 1;  // LLR's and GradAlign's tangent passes
  bool llr_recompute_nominal = false;
  int64_t batch = 128;
  std::string precision = "auto";  // bf16 on the GPU, fp32 on the CPU
  std::string device = "auto";
  int64_t warmup = 3, iters = 10;
  bool profile = false;  // time each phase and op of the timed steps (CUDA events on the GPU)
  bool cuda_graphs = false;
  bool memory = false;   // where the peak memory goes, by phase and kernel call
  std::string json;      // append one JSON line per configuration here too

  void visit(SettingVisitor& v);
};

}  // namespace llr
