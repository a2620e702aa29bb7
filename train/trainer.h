// `llrtrain train`: the training loop (training_step() over the data set's batches), metrics, checkpoints (one commit
// each, train/run_folder.h), resumption, and stopping cleanly on SIGINT or SIGTERM; and the clean evaluation that
// `train` and `eval` share.
#pragma once

#include <string>
#include <vector>

#include "nets/model.h"
#include "train/config.h"
#include "train/data.h"

namespace llr {

struct EvalResult {
  double accuracy = 0, loss = 0;
  int64_t n = 0;
};

// Clean accuracy and mean cross-entropy with batch norm in evaluation mode, no gradients recorded.
EvalResult evaluate(nets::Model& model, const data::Dataset& d, int64_t batch, DType compute, int64_t limit = 0);

struct TrainOptions {
  std::string resume;                 // continue the run in this folder from its last checkpoint
  std::vector<std::string> given;     // settings given on the command line (on --resume most are ignored, and said so)
  bool overwrite = false;             // a fresh run may replace the contents of a non-empty run folder
  int64_t stop_after = 0;             // > 0: stop after this step as if interrupted (a checkpoint is written first)
};

struct TrainSummary {
  int64_t steps = 0;
  double train_seconds = 0;  // training time of the whole run (across resumptions)
  double final_train_loss = 0;
  EvalResult final_eval;
  std::string eval_split;
  bool interrupted = false;
};

// Thrown when SIGINT or SIGTERM stopped training at a step boundary, after a checkpoint was committed.
class Interrupted : public Error {
 public:
  Interrupted(const std::string& what, int signal) : Error(what), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

// Runs (or, with options.resume, continues) a training run in cfg.out. Every setting is validated before any work;
// on --resume the run's config.json rules, except for the settings resume_may_change() allows (saved back).
TrainSummary train(TrainConfig cfg, const TrainOptions& options = {});

Device resolve_device(const std::string& name);
DType resolve_precision(const std::string& name, Device device);

}  // namespace llr
