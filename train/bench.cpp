#include "train/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "train/objectives.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace llr {

void run_bench(const BenchConfig& cfg) {
  Device device = resolve_device(cfg.device);
  DType compute = resolve_precision(cfg.precision == "fp32" ? "fp32" : cfg.precision, device);
  LLR_CHECK(cfg.iters > 0 && cfg.warmup >= 0 && cfg.batch > 0, "bench: --iters and --batch must be positive");
  std::vector<nlohmann::json> rows;
  for (const std::string& spec : cfg.methods) {
    size_t dash = spec.find('-');
    std::string name = spec.substr(0, dash);
    int steps = dash == std::string::npos ? 0 : std::stoi(spec.substr(dash + 1));
    ObjectiveConfig oc;
    oc.method = ObjectiveConfig::parse_method(name);
    oc.pgd_steps = oc.llr_steps = steps;
    oc.llr_grad = cfg.llr_grad == "fd" ? LlrGrad::fd : LlrGrad::exact;
    auto model = nets::make_model(cfg.model, nets::parse_act(cfg.act), 10, 0, device);
    Sgd opt(*model, {0.9, false, 5e-4});
    Generator gen(1);
    Tensor x = gen.uniform({cfg.batch, 32, 32, 3}, 0, 1, DType::f32, Layout::nhwc).to(device);
    Tensor y = gen.randint({cfg.batch}, 0, 10).to(device);
    std::vector<Tensor> params = model->parameters();
    Backend& be = backend_for(device);
    std::vector<double> ms;
    if (DeviceAllocator* a = device_allocator(); a && device != Device::cpu) a->reset_peak();
    reset_host_memory_peak();
    for (int i = 0; i < cfg.warmup + cfg.iters; ++i) {
      be.synchronize();
      auto t0 = std::chrono::steady_clock::now();
      ObjectiveOptions o;
      o.compute = compute;
      o.step = static_cast<uint64_t>(i) + 1000;  // past any eps warm-up
      ObjectiveResult r = build_objective(*model, x, y, oc, o);
      std::vector<Tensor> grads = objective_gradients(r, params);
      Tape::current().clear();
      opt.step(grads, 0.01);
      be.synchronize();
      double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (i >= cfg.warmup) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    double med = ms[ms.size() / 2];
    double peak = double(host_memory_stats().peak_bytes_in_use) / double(1ull << 30);
    if (DeviceAllocator* a = device_allocator(); a && device != Device::cpu)
      peak = double(a->peak_bytes_in_use()) / double(1ull << 30);
    nlohmann::json j = {{"framework", "llrtrain"},
                        {"model", cfg.model},
                        {"act", cfg.act},
                        {"method", spec + (oc.method == Method::llr ? (cfg.llr_grad == "fd" ? "-fd" : "-exact") : "")},
                        {"prec", cfg.precision},
                        {"batch", cfg.batch},
                        {"device", device_name(device)},
                        {"ms_step_median", med},
                        {"ms_step_min", ms.front()},
                        {"ms_step_max", ms.back()},
                        {"img_per_s", double(cfg.batch) / med * 1e3},
                        {"peak_gib", peak}};
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
    if (!cfg.json.empty()) std::ofstream(cfg.json, std::ios::app) << j.dump() << "\n";
    rows.push_back(j);
  }
  std::printf("\n%-12s %-6s %-14s %10s %9s %8s\n", "model", "prec", "method", "ms/step", "img/s", "peakGiB");
  for (const auto& j : rows)
    std::printf("%-12s %-6s %-14s %10.2f %9.1f %8.2f\n", j["model"].get<std::string>().c_str(),
                j["prec"].get<std::string>().c_str(), j["method"].get<std::string>().c_str(),
                j["ms_step_median"].get<double>(), j["img_per_s"].get<double>(), j["peak_gib"].get<double>());
}

}  // namespace llr
