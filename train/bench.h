// `llrtrain bench`: time whole training steps (objective, reverse pass, SGD update) on random CIFAR-shaped batches.
#pragma once

#include <string>
#include <vector>

namespace llr {

struct BenchConfig {
  std::string model = "wrn-28-10";
  std::string act = "relu";
  std::vector<std::string> methods = {"natural"};  // natural, pgd-K, trades-K, llr-K (K attack/search steps)
  std::string llr_grad = "exact";
  int64_t batch = 128;
  std::string precision = "bf16";
  std::string device = "auto";
  int warmup = 3, iters = 10;
  std::string json;  // append one JSON line per configuration here too
};

// Prints one JSON line per method: median, min and max ms per step (device synchronised around each step), images/s
// and peak memory in GiB (device memory on the GPU; tensor storage on the CPU), then a short table.
void run_bench(const BenchConfig& cfg);

}  // namespace llr
