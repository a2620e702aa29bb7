#include "train/evaluation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "train/attacks/attack.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/run_folder.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace llr {

namespace {

// The first n images of d with the model's logits (evaluation mode), for tools/reference/compare_logits.py.
void dump_logits(const std::string& path, nets::Model& model, const data::Dataset& d, int64_t n, DType compute) {
  NoGradGuard no_grad;
  n = std::min<int64_t>(n, d.size());
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  data::Batch b = data::make_batch(d, order, 0, n, false, 0, 0, stat_dtype(compute));
  Tensor logits = eval_logits(model, b.images, compute);
  auto stored = [](const Tensor& t) {
    Tensor h = t.to(Device::cpu);
    if (h.dtype() == DType::f64) h = h.to(DType::f32);
    io::StoredTensor s;
    s.dtype = h.dtype() == DType::i32 ? "I32" : "F32";
    s.shape = h.shape();
    const uint8_t* p = static_cast<const uint8_t*>(h.raw_data());
    s.bytes.assign(p, p + h.numel() * 4);
    return s;
  };
  io::write_safetensors(path, {{"images_nhwc", stored(b.images)}, {"labels", stored(b.labels)}, {"logits", stored(logits)}},
                        {{"format", "llrtrain-logits"}});
  std::printf("wrote %lld images and their logits to %s\n", static_cast<long long>(n), path.c_str());
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(std::min<double>(v.size() - 1, q * (v.size() - 1) + 0.5))];
}

// --batch 0: attacks run fastest on the largest batches (per-step launches and reads are paid once per batch), so
// the whole set, unless an attack step (forward and input gradient) on it would need more than half the memory
// available: then the largest batch that fits, from the bytes a step on a small probe batch takes.
int64_t automatic_batch(nets::Model& model, const data::Dataset& d, DType compute, int64_t n, Device device) {
  const int64_t probe = std::min<int64_t>(n, 16);
  std::vector<int32_t> order(static_cast<size_t>(probe));
  for (int64_t i = 0; i < probe; ++i) order[i] = static_cast<int32_t>(i);
  data::Batch b = data::make_batch(d, order, 0, probe, false, 0, 0, stat_dtype(compute));
  DeviceAllocator* device_memory = device == Device::cpu ? nullptr : device_allocator();
  LLR_CHECK(device == Device::cpu || device_memory, "no allocator registered for ", device_name(device));
  backend_for(device).synchronize();
  if (device_memory)
    device_memory->reset_peak();
  else
    reset_host_memory_peak();
  size_t before = device_memory ? device_memory->peak_bytes_in_use() : host_memory_stats().peak_bytes_in_use;
  {
    TapeScope scope;
    Tensor x = b.images.detach().requires_grad_();
    Tensor l = cross_entropy(eval_logits(model, x, compute), b.labels);
    grad({l}, {backend::full_like(l, 1.0)}, {x});
  }
  backend_for(device).synchronize();
  size_t peak = device_memory ? device_memory->peak_bytes_in_use() : host_memory_stats().peak_bytes_in_use;
  double per_example = double(peak > before ? peak - before : 1) / double(probe);
  double available = double(device_memory ? device_memory->bytes_available() : host_memory_available());
  return std::clamp<int64_t>(static_cast<int64_t>(available / 2 / per_example), 1, n);
}

void accumulate(Tensor& acc, const Tensor& v) { acc = acc.defined() ? backend::add(acc, v) : v; }

double count(const Tensor& sum) { return sum.defined() ? host_value(sum) : 0.0; }

}  // namespace

int run_eval(EvalConfig e) {
  using clock = std::chrono::steady_clock;
  validate(e);  // the attack list too
  LLR_CHECK(!e.checkpoint.empty(), "--checkpoint is required");
  std::vector<std::unique_ptr<Attack>> attacks;
  if (!e.attacks.empty()) attacks = parse_attacks(e.attacks);
  Device device = resolve_device(e.device);
  ckpt::ModelInfo info = ckpt::read_model_info(e.checkpoint);
  auto model = nets::make_model(info.model, info.act, info.classes, 0, device, info.dtype);
  ckpt::load_model(e.checkpoint, *model);
  int64_t bad = run::nonfinite_values(*model);
  LLR_CHECK(bad == 0, "checkpoint ", e.checkpoint, " holds ", bad,
            " NaN or infinite values: it is not a model to evaluate (did its training diverge?)");
  data::Splits s =
      e.data == "synthetic" ? data::synthetic_splits(1, 10000, e.seed + 17) : data::load_cifar10(e.data, e.holdout);
  data::Dataset d = e.split == "train" ? s.train : e.split == "val" ? s.val : s.test;
  if (e.split == "test" && d.empty() && e.data == "synthetic") d = s.val;
  LLR_CHECK(!d.empty(), "no ", e.split, " split in ", e.data,
            e.split == "test" ? " (test_batch.bin is missing; try --split val with a training run's --holdout)" : "");
  d = data::to_device(d, device);
  DType compute = info.dtype == DType::f64 ? DType::f64 : DType::f32;
  if (!e.dump_logits.empty()) dump_logits(e.dump_logits, *model, d, e.n > 0 ? e.n : 64, compute);
  const int64_t n = e.n > 0 ? std::min<int64_t>(e.n, d.size()) : d.size();
  if (e.batch == 0) e.batch = automatic_batch(*model, d, compute, n, device);
  EvalResult r = evaluate(*model, d, e.batch, compute, e.n);
  std::printf("%s (%s) on %s/%s: clean accuracy %.4f over %lld images (batches of %lld), mean cross-entropy %.4f\n",
              info.model.c_str(), nets::act_name(info.act), e.data.c_str(), e.split.c_str(), r.accuracy,
              static_cast<long long>(r.n), static_cast<long long>(e.batch), r.loss);
  nlohmann::json j = {{"checkpoint", e.checkpoint}, {"model", info.model}, {"act", nets::act_name(info.act)},
                      {"data", e.data},             {"split", e.split},    {"n", r.n},
                      {"clean_accuracy", r.accuracy}, {"loss", r.loss},    {"seed", e.seed}};

  if (!attacks.empty() || e.gamma_steps > 0) {
    // Per-example bookkeeping stays on the device; each sum is read once, at the end.
    std::vector<Tensor> robust(attacks.size());
    std::vector<double> seconds(attacks.size(), 0.0), gammas;
    // Suites (autoattack): per attack, its stages' labels, robust counts and seconds.
    std::vector<std::vector<std::string>> stage_labels(attacks.size());
    std::vector<std::vector<Tensor>> stage_robust(attacks.size());
    std::vector<std::vector<double>> stage_seconds(attacks.size());
    Tensor worst, clean;
    double gamma_seconds = 0;
    std::vector<int32_t> order(static_cast<size_t>(r.n));
    for (int64_t i = 0; i < r.n; ++i) order[i] = static_cast<int32_t>(i);
    Tensor order_dev = data::order_on_device(d, order);
    for (int64_t b = 0; b < r.n; b += e.batch) {
      int64_t nb = std::min(e.batch, r.n - b);
      data::Batch bt = data::make_batch(d, order_dev, b, nb, false, 0, 0, stat_dtype(compute));
      Tensor correct = correct_mask(*model, bt.images, bt.labels, compute);
      Tensor all = correct;
      accumulate(clean, backend::sum_all(correct));
      for (size_t a = 0; a < attacks.size(); ++a) {
        auto t0 = clock::now();
        AttackContext ctx{*model, compute, e.eps, e.seed + 7919 * (a + 1) + static_cast<uint64_t>(b)};
        AttackResult ar = attacks[a]->run(ctx, bt.images, bt.labels, correct);
        accumulate(robust[a], backend::sum_all(ar.robust));
        all = backend::mul(all, ar.robust);
        for (size_t k = 0; k < ar.stages.size(); ++k) {
          if (stage_labels[a].size() <= k) {
            stage_labels[a].push_back(ar.stages[k].label);
            stage_robust[a].emplace_back();
            stage_seconds[a].push_back(0.0);
          }
          accumulate(stage_robust[a][k], backend::sum_all(ar.stages[k].robust));
          stage_seconds[a][k] += ar.stages[k].seconds;
        }
        backend_for(device).synchronize();
        seconds[a] += std::chrono::duration<double>(clock::now() - t0).count();
      }
      accumulate(worst, backend::sum_all(all));
      if (e.gamma_steps > 0) {
        auto t0 = clock::now();
        Tensor g = measure_gamma(model_cross_entropy(*model, bt.labels, compute), bt.images, e.eps,
                                 static_cast<int>(e.gamma_steps), static_cast<int>(e.gamma_restarts),
                                 e.seed + static_cast<uint64_t>(b));
        std::vector<double> gv = g.to(Device::cpu).to_vector();
        gamma_seconds += std::chrono::duration<double>(clock::now() - t0).count();
        gammas.insert(gammas.end(), gv.begin(), gv.end());
      }
    }
    char eps_text[64];
    double in_255 = e.eps * 255.0;
    if (std::fabs(in_255 - std::round(in_255)) < 1e-9)
      std::snprintf(eps_text, sizeof eps_text, "%.0f/255", in_255);
    else
      std::snprintf(eps_text, sizeof eps_text, "%.4g", e.eps);
    std::printf("\n%-20s %10s %10s\n", (std::string("attack (eps ") + eps_text + ")").c_str(), "robust acc", "seconds");
    std::printf("%-20s %10.4f %10s\n", "clean", count(clean) / double(r.n), "");
    nlohmann::json results = nlohmann::json::array();
    for (size_t a = 0; a < attacks.size(); ++a) {
      double acc = count(robust[a]) / double(r.n);
      std::printf("%-20s %10.4f %10.1f\n", attacks[a]->label().c_str(), acc, seconds[a]);
      nlohmann::json entry = {{"attack", attacks[a]->label()}, {"robust_accuracy", acc}, {"seconds", seconds[a]}};
      for (size_t k = 0; k < stage_labels[a].size(); ++k) {
        double stage_acc = count(stage_robust[a][k]) / double(r.n);
        std::printf("  after %-12s %10.4f %10.1f\n", stage_labels[a][k].c_str(), stage_acc, stage_seconds[a][k]);
        entry["stages"].push_back(
            {{"attack", stage_labels[a][k]}, {"robust_accuracy", stage_acc}, {"seconds", stage_seconds[a][k]}});
      }
      results.push_back(entry);
    }
    if (!attacks.empty()) {
      std::printf("%-20s %10.4f\n", "worst case", count(worst) / double(r.n));
      j["robust_accuracy_worst_case"] = count(worst) / double(r.n);
    }
    j["eps"] = e.eps;
    j["attacks"] = results;
    if (!gammas.empty()) {
      double mean = 0;
      for (double g : gammas) mean += g / double(gammas.size());
      std::printf("gamma (%lld Adam steps x %lld restarts): mean %.4g, median %.4g, 90th percentile %.4g, max %.4g "
                  "(%.1f s)\n",
                  static_cast<long long>(e.gamma_steps), static_cast<long long>(e.gamma_restarts), mean,
                  percentile(gammas, 0.5), percentile(gammas, 0.9), percentile(gammas, 1.0), gamma_seconds);
      j["gamma"] = {{"steps", e.gamma_steps},       {"restarts", e.gamma_restarts},
                    {"mean", mean},                 {"median", percentile(gammas, 0.5)},
                    {"p10", percentile(gammas, 0.1)}, {"p90", percentile(gammas, 0.9)},
                    {"max", percentile(gammas, 1.0)}, {"seconds", gamma_seconds},
                    {"values", gammas}};
    }
  }
  std::string out =
      e.json.empty() ? (std::filesystem::path(e.checkpoint).parent_path() / "eval.json").string() : e.json;
  io::write_file_atomic(out.empty() ? "eval.json" : out, j.dump(2) + "\n");
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace llr
