// `llrtrain train` and `llrtrain eval`: configuration, the training loop (natural training for now), evaluation,
// metrics, checkpoints and resumption.
#pragma once

#include <string>
#include <vector>

#include "nets/model.h"
#include "train/data.h"
#include "train/objectives.h"

namespace llr {

struct TrainConfig {
  std::string data = "synthetic";  // "synthetic" or a CIFAR-10 binary folder
  int64_t synthetic_train = 5000, synthetic_val = 1000;
  int64_t holdout = 0;   // CIFAR-10: images split off the end of the training files for validation
  int64_t n_train = 0;   // use only the first n training images (0: all)
  std::string model = "wrn-28-10";
  std::string act = "relu";
  int64_t epochs = 100;
  int64_t steps = 0;  // > 0: train for this many steps instead of whole epochs
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
  std::string device = "auto";     // auto, cuda, cpu
  std::string precision = "fp32";  // fp32, bf16 (GPU only)
  std::string out;
  int64_t log_every = 20;
  int64_t eval_batch = 500;
  int64_t stop_after = 0;  // > 0: stop after this step as if interrupted (a checkpoint is written first)
  // The training objective and its parameters (natural, pgd, trades, llr).
  std::string method = "natural";
  ObjectiveConfig objective;

  std::string to_json() const;
  static TrainConfig from_json(const std::string& text);
};

struct EvalResult {
  double accuracy = 0, loss = 0;
  int64_t n = 0;
};

// Clean accuracy and mean cross-entropy with batch norm in evaluation mode, no gradients recorded.
EvalResult evaluate(nets::Model& model, const data::Dataset& d, int64_t batch, DType compute, int64_t limit = 0);

struct TrainSummary {
  int64_t steps = 0;
  double final_train_loss = 0;
  EvalResult final_eval;
  std::string eval_split;
  bool interrupted = false;
};

// Runs (or, with resume_dir, continues) a training run; writes config.json, metrics.jsonl and checkpoints in the
// run folder. Prints a progress bar on a terminal and plain lines otherwise. When resuming, the run's config.json
// is used; cfg.epochs > 0 extends it, cfg.stop_after applies.
TrainSummary train(TrainConfig cfg, const std::string& resume_dir = "");

Device resolve_device(const std::string& name);
DType resolve_precision(const std::string& name, Device device);

}  // namespace llr
