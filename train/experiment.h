// `llrtrain experiment FILE`: which method gives the most robustness for a given training time? Trains every method of
// an experiment file at every time budget and seed on the same data and device, evaluates each checkpoint with the
// file's attacks, and writes one JSON line per run (results.jsonl) and the robustness-against-time frontier
// (frontier.svg). A run that fails is reported and the others go on; rerunning skips the runs already finished.
//
// The file (JSON):
//   {"train":   {settings of llrtrain train, by their JSON names, shared by every run},
//    "methods": [{"label": "pgd-10", "method": "pgd", "pgd_steps": 10}, ...],   (each: train settings of its own)
//    "budgets": [60, 120],            seconds of training time per run (--time-budget)
//    "seeds":   [0],
//    "eval":    {settings of llrtrain eval: split, n, attacks, eps, gamma_steps, batch, ...}}
// Runs go to OUT/LABEL/b<BUDGET>-s<SEED>/ (a run folder each).
#pragma once

#include <string>

namespace llr {

struct ExperimentOptions {
  std::string file;
  std::string out;  // default: the file's name without extension, beside it
  bool check = false;  // validate the file and print its runs, train nothing
  // Seconds from the start within which every run must end (0: none): a run is started only if its budget plus the
  // longest time a run of this invocation spent outside training (data, evaluation; 60 s before the first) fits in
  // what is left; the rest wait for a rerun, which skips the runs already done.
  double deadline = 0;
};

// Returns the number of runs that failed (0: all succeeded or were already done).
int run_experiment(const ExperimentOptions& options);

}  // namespace llr
