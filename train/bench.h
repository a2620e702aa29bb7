// `llrtrain bench`: time whole training steps (objective, reverse pass, SGD update: training_step()) on random
// CIFAR-shaped batches.
#pragma once

#include "train/config.h"

namespace llr {

// Prints one JSON line per method: median, min and max ms per step (device synchronised around each step), images/s
// and peak memory in GiB (device memory on the GPU; tensor storage on the CPU), then a short table.
void run_bench(BenchConfig cfg);

// "pgd-10" -> the method pgd with 10 attack (or search) steps; "natural" -> natural.
struct BenchMethod {
  std::string name;
  int steps = -1;  // -1: the method's default
};
BenchMethod parse_bench_method(const std::string& spec);

}  // namespace llr
