#include "train/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/graph.h"
#include "engine/profile.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "train/trainer.h"

namespace llr {

BenchMethod parse_bench_method(const std::string& spec) {
  BenchMethod m;
  size_t dash = spec.rfind('-');
  bool numbered = dash != std::string::npos && dash + 1 < spec.size() &&
                  spec.find_first_not_of("0123456789", dash + 1) == std::string::npos;
  m.name = numbered ? spec.substr(0, dash) : spec;
  if (numbered) m.steps = static_cast<int>(parse_integer(spec.substr(dash + 1), "--methods " + spec));
  LLR_CHECK(!numbered || m.steps >= 1, "--methods: ", spec, " needs at least one step");
  return m;
}

void run_bench(BenchConfig cfg) {
  validate(cfg);
  // --memory lists the tensors live at the peak, which replays of a recorded step do not make: it measures eager steps.
  if (cfg.cuda_graphs && cfg.memory)
    std::fprintf(stderr, "note: --memory measures eager steps; --cuda-graphs ignored\n");
  graph::set_enabled(cfg.cuda_graphs && !cfg.memory);
  Device device = resolve_device(cfg.device);
  if (cfg.precision == "auto") cfg.precision = device == Device::cuda ? "bf16" : "fp32";
  DType compute = resolve_precision(cfg.precision, device);
  std::vector<std::string> specs;
  for (size_t at = 0; at <= cfg.methods.size();) {
    size_t comma = cfg.methods.find(',', at);
    if (comma == std::string::npos) comma = cfg.methods.size();
    if (comma > at) specs.push_back(cfg.methods.substr(at, comma - at));
    at = comma + 1;
  }
  LLR_CHECK(!specs.empty(), "--methods: no method given");
  // Every method resolved before any timing: a typo fails at once.
  MethodSet methods;
  for (const std::string& spec : specs) methods.get(parse_bench_method(spec).name);
  nlohmann::json llr_grad = {{"llr_grad", cfg.llr_grad},
                             {"llr_tangent_segments", cfg.tangent_segments},
                             {"gradalign_tangent_segments", cfg.tangent_segments},
                             {"llr_recompute_nominal", cfg.llr_recompute_nominal}};
  std::vector<nlohmann::json> rows;
  for (const std::string& spec : specs) {
    BenchMethod bm = parse_bench_method(spec);
    MethodSet set;
    read_json(set, llr_grad, "--llr-grad, --tangent-segments, --llr-recompute-nominal");
    RobustSettings robust;
    Method& method = set.get(bm.name);
    if (bm.steps > 0) method.set_steps(robust, bm.steps);
    memory::set_ledger(cfg.memory);  // before the model: its weights and the optimiser's buffers count too
    auto model = nets::make_model(cfg.model, nets::parse_act(cfg.act), 10, 0, device);
    Sgd opt(*model, {0.9, false, 5e-4});
    TrainingSteps steps(*model, opt, method, robust);
    Generator gen(1);
    Tensor x = gen.uniform({cfg.batch, 32, 32, 3}, 0, 1, DType::f32, Layout::nhwc).to(device);
    Tensor y = gen.randint({cfg.batch}, 0, 10).to(device);
    Backend& be = backend_for(device);
    std::vector<double> ms;
    Tensor last_loss;
    std::unique_ptr<profile::Profiler> profiler;
    int64_t replays_before = 0, recordings_before = 0;
    // The peak of the timed steps: the warm-up's first step also benchmarks cuDNN's algorithms for each new
    // convolution shape, with a trial workspace of up to 1 GiB that no later step needs.
    auto reset_peaks = [&] {
      if (DeviceAllocator* a = device_allocator(); a && device != Device::cpu) a->reset_peak();
      reset_host_memory_peak();
      memory::reset_ledger_peak();
    };
    reset_peaks();
    for (int64_t i = 0; i < cfg.warmup + cfg.iters; ++i) {
      if (cfg.profile && i == cfg.warmup) profiler = std::make_unique<profile::Profiler>(device);
      if (i == cfg.warmup) {
        replays_before = graph::stats().replays;
        recordings_before = graph::stats().recordings;
        if (i > 0) reset_peaks();
      }
      be.synchronize();
      auto t0 = std::chrono::steady_clock::now();
      if (profiler) profiler->step_begin();
      StepContext ctx;
      ctx.compute = compute;
      ctx.step = static_cast<uint64_t>(i);
      ctx.eps = robust.eps;  // the full radius: no warm-up
      StepOutput out = steps.run(x, y, ctx, 0.01);
      if (i + 1 == cfg.warmup + cfg.iters) last_loss = out.loss;
      if (profiler) profiler->step_end();
      be.synchronize();
      double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (i >= cfg.warmup) ms.push_back(t);
    }
    if (profiler) {
      profiler->collect();
      std::printf("\n== %s ==", spec.c_str());
      profiler->print(static_cast<int>(cfg.iters));
      profiler.reset();
    }
    std::sort(ms.begin(), ms.end());
    double med = ms[ms.size() / 2];
    double peak = double(host_memory_stats().peak_bytes_in_use) / double(1ull << 30);
    if (DeviceAllocator* a = device_allocator(); a && device != Device::cpu)
      peak = double(a->peak_bytes_in_use()) / double(1ull << 30);
    nlohmann::json j = {{"framework", "llrtrain"},
                        {"model", cfg.model},
                        {"act", cfg.act},
                        {"method", spec + (bm.name == "llr" ? "-" + cfg.llr_grad : "") +
                                       ((bm.name == "llr" || bm.name == "gradalign") && cfg.tangent_segments > 1
                                            ? "-seg" + std::to_string(cfg.tangent_segments)
                                            : "") +
                                       (bm.name == "llr" && cfg.llr_recompute_nominal ? "-renom" : "")},
                        {"prec", cfg.precision},
                        {"batch", cfg.batch},
                        {"device", device_name(device)},
                        {"ms_step_median", med},
                        {"ms_step_min", ms.front()},
                        {"ms_step_max", ms.back()},
                        {"img_per_s", double(cfg.batch) / med * 1e3},
                        {"peak_gib", peak},
                        {"loss_last_step", host_value(last_loss)},
                        {"cuda_graphs", graph::enabled()},
                        {"graph_replays_per_step",
                         double(graph::stats().replays - replays_before) / double(cfg.iters)},
                        // Recording again in the timed steps (a whole step whose settings keep changing, or a search
                        // recorded in each eager step) shows here: 0 when every timed step replays one recording.
                        {"graph_recordings_per_step",
                         double(graph::stats().recordings - recordings_before) / double(cfg.iters)}};
    if (cfg.memory) {
      memory::LedgerPeak lp = memory::ledger_peak(device);
      memory::set_ledger(false);
      nlohmann::json by = nlohmann::json::array();
      std::printf("\n== %s: tensors live at the peak, %.3f GiB (largest first) ==\n%-28s %-34s %9s %6s\n", spec.c_str(),
                  double(lp.total) / double(1ull << 30), "phase", "made by", "GiB", "share");
      size_t shown = 0;
      for (const memory::LedgerEntry& e : lp.entries) {
        const double gib = double(e.bytes) / double(1ull << 30);
        by.push_back({{"phase", e.phase}, {"op", e.op}, {"gib", gib}});
        if (shown++ < 16)
          std::printf("%-28s %-34s %9.3f %5.1f%%\n", e.phase.c_str(), e.op.c_str(), gib,
                      100.0 * double(e.bytes) / double(std::max<size_t>(lp.total, 1)));
      }
      j["peak_tensors_gib"] = double(lp.total) / double(1ull << 30);
      j["peak_by"] = by;
    }
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
    if (!cfg.json.empty()) {
      std::ofstream out(cfg.json, std::ios::app);
      out << j.dump() << "\n";
      LLR_CHECK(out.good(), "cannot append to ", cfg.json);
    }
    rows.push_back(j);
  }
  std::printf("\n%-12s %-6s %-14s %10s %9s %8s\n", "model", "prec", "method", "ms/step", "img/s", "peakGiB");
  for (const auto& j : rows)
    std::printf("%-12s %-6s %-14s %10.2f %9.1f %8.2f\n", j["model"].get<std::string>().c_str(),
                j["prec"].get<std::string>().c_str(), j["method"].get<std::string>().c_str(),
                j["ms_step_median"].get<double>(), j["img_per_s"].get<double>(), j["peak_gib"].get<double>());
}

}  // namespace llr
