#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace llr {

namespace fs = std::filesystem;
using nlohmann::json;

std::string TrainConfig::to_json() const {
  json j = {{"data", data},
            {"synthetic_train", synthetic_train},
            {"synthetic_val", synthetic_val},
            {"holdout", holdout},
            {"n_train", n_train},
            {"model", model},
            {"act", act},
            {"epochs", epochs},
            {"steps", steps},
            {"batch", batch},
            {"lr", lr},
            {"schedule", schedule},
            {"decay_at", decay_at},
            {"decay_factor", decay_factor},
            {"warmup_steps", warmup_steps},
            {"weight_decay", weight_decay},
            {"momentum", momentum},
            {"nesterov", nesterov},
            {"augment", augment},
            {"seed", seed},
            {"device", device},
            {"precision", precision},
            {"out", out},
            {"log_every", log_every},
            {"eval_batch", eval_batch},
            {"method", method},
            {"eps", objective.eps},
            {"eps_warmup_steps", objective.eps_warmup_steps},
            {"pgd_steps", objective.pgd_steps},
            {"pgd_alpha", objective.pgd_alpha},
            {"attack_bn", objective.attack_bn == nets::BnMode::eval ? "eval" : "train"},
            {"trades_beta", objective.trades_beta},
            {"llr_steps", objective.llr_steps},
            {"llr_search", objective.llr_search == PerturbationUpdate::adam ? "adam" : "sign"},
            {"llr_step_size", objective.llr_step_size},
            {"lambda", objective.lambda},
            {"mu", objective.mu},
            {"nominal_weight", objective.nominal_weight},
            {"llr_grad", objective.llr_grad == LlrGrad::exact ? "exact" : "fd"},
            {"fd_step", objective.fd_step}};
  return j.dump(2) + "\n";
}

TrainConfig TrainConfig::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    LLR_FAIL("config.json is not valid JSON: ", e.what());
  }
  TrainConfig c;
  auto get = [&](const char* k, auto& v) {
    if (j.contains(k)) j.at(k).get_to(v);
  };
  get("data", c.data), get("synthetic_train", c.synthetic_train), get("synthetic_val", c.synthetic_val);
  get("holdout", c.holdout), get("n_train", c.n_train), get("model", c.model), get("act", c.act);
  get("epochs", c.epochs), get("steps", c.steps), get("batch", c.batch), get("lr", c.lr);
  get("schedule", c.schedule), get("decay_at", c.decay_at), get("decay_factor", c.decay_factor);
  get("warmup_steps", c.warmup_steps), get("weight_decay", c.weight_decay), get("momentum", c.momentum);
  get("nesterov", c.nesterov), get("augment", c.augment), get("seed", c.seed), get("device", c.device);
  get("precision", c.precision), get("out", c.out), get("log_every", c.log_every), get("eval_batch", c.eval_batch);
  ObjectiveConfig& o = c.objective;
  get("method", c.method), get("eps", o.eps), get("eps_warmup_steps", o.eps_warmup_steps);
  get("pgd_steps", o.pgd_steps), get("pgd_alpha", o.pgd_alpha), get("trades_beta", o.trades_beta);
  get("llr_steps", o.llr_steps), get("llr_step_size", o.llr_step_size), get("lambda", o.lambda), get("mu", o.mu);
  get("nominal_weight", o.nominal_weight), get("fd_step", o.fd_step);
  std::string attack_bn = "eval", search = "adam", llr_grad = "exact";
  get("attack_bn", attack_bn), get("llr_search", search), get("llr_grad", llr_grad);
  o.attack_bn = attack_bn == "train" ? nets::BnMode::train : nets::BnMode::eval;
  o.llr_search = search == "sign" ? PerturbationUpdate::sign : PerturbationUpdate::adam;
  o.llr_grad = llr_grad == "fd" ? LlrGrad::fd : LlrGrad::exact;
  return c;
}

Device resolve_device(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") {
    LLR_CHECK(has_backend(Device::cuda), "--device cuda: no usable GPU (or this build has no CUDA support)");
    return Device::cuda;
  }
  LLR_CHECK(name == "auto", "unknown device '", name, "' (auto, cuda or cpu)");
  return has_backend(Device::cuda) ? Device::cuda : Device::cpu;
}

DType resolve_precision(const std::string& name, Device device) {
  if (name == "fp32") return DType::f32;
  if (name == "bf16") {
    LLR_CHECK(device == Device::cuda, "--precision bf16 needs the GPU; the CPU backend computes in fp32");
    return DType::bf16;
  }
  LLR_FAIL("unknown precision '", name, "' (fp32 or bf16)");
}

namespace {

struct Data {
  data::Dataset train, eval;
  std::string eval_split;
};

Data load_data(const TrainConfig& c, Device device) {
  data::Splits s = c.data == "synthetic" ? data::synthetic_splits(c.synthetic_train, c.synthetic_val, c.seed + 17)
                                         : data::load_cifar10(c.data, c.holdout);
  Data d;
  d.train = s.train;
  if (c.n_train > 0) {
    LLR_CHECK(c.n_train <= s.train.size(), "--n-train ", c.n_train, " exceeds the ", s.train.size(), " training images");
    d.train = data::slice(s.train, 0, c.n_train);
  }
  if (!s.val.empty()) {
    d.eval = s.val;
    d.eval_split = "val";
  } else if (!s.test.empty()) {
    d.eval = s.test;
    d.eval_split = "test";
  }
  d.train = data::to_device(d.train, device);
  d.eval = data::to_device(d.eval, device);
  return d;
}

class Progress {
 public:
  explicit Progress(bool tty) : tty_(tty) {}
  void update(int64_t step, int64_t total, int64_t epoch, double loss, double acc, double lr, double ips) {
    if (!tty_) return;
    int width = 30, filled = int(width * double(step) / double(std::max<int64_t>(total, 1)));
    std::string bar(filled, '=');
    bar.resize(width, ' ');
    std::printf("\r[%s] step %lld/%lld epoch %lld loss %.4f acc %.3f lr %.4g %.0f img/s ", bar.c_str(),
                static_cast<long long>(step), static_cast<long long>(total), static_cast<long long>(epoch), loss, acc,
                lr, ips);
    std::fflush(stdout);
  }
  void line(const std::string& s) {
    if (tty_) std::printf("\r%-110s\r", "");
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  }

 private:
  bool tty_;
};

}  // namespace

EvalResult evaluate(nets::Model& model, const data::Dataset& d, int64_t batch, DType compute, int64_t limit) {
  NoGradGuard no_grad;
  EvalResult r;
  int64_t n = limit > 0 ? std::min(limit, d.size()) : d.size();
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  double loss_sum = 0;
  int64_t correct = 0;
  Tensor order_dev = data::order_on_device(d, order);
  for (int64_t b = 0; b < n; b += batch) {
    int64_t nb = std::min(batch, n - b);
    data::Batch bt = data::make_batch(d, order_dev, b, nb, false, 0, 0, stat_dtype(compute));
    nets::ForwardContext ctx;
    ctx.bn = nets::BnMode::eval;
    ctx.compute = compute;
    Tensor logits = model.forward(bt.images, ctx);
    loss_sum += host_value(sum(cross_entropy(logits, bt.labels)));
    correct += static_cast<int64_t>(std::llround(host_value(backend::count_correct(logits, bt.labels))));
  }
  r.n = n;
  r.accuracy = n ? double(correct) / double(n) : 0;
  r.loss = n ? loss_sum / double(n) : 0;
  return r;
}

TrainSummary train(TrainConfig cfg, const std::string& resume_dir) {
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  int64_t start_step = 0;
  if (!resume_dir.empty()) {
    std::ifstream in(fs::path(resume_dir) / "config.json");
    LLR_CHECK(in.good(), "--resume ", resume_dir, ": no config.json there");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    TrainConfig saved = TrainConfig::from_json(text);
    saved.out = resume_dir;
    saved.stop_after = cfg.stop_after;
    if (cfg.epochs != saved.epochs && cfg.epochs > 0 && cfg.steps == 0) saved.epochs = cfg.epochs;  // extend
    cfg = saved;
  }
  LLR_CHECK(cfg.batch > 0, "--batch must be positive");
  LLR_CHECK(cfg.epochs > 0 || cfg.steps > 0, "--epochs or --steps must be positive");
  LLR_CHECK(cfg.log_every > 0, "--log-every must be positive");
  Device device = resolve_device(cfg.device);
  DType compute = resolve_precision(cfg.precision, device);
  cfg.objective.method = ObjectiveConfig::parse_method(cfg.method);
  if (cfg.objective.eps_warmup_steps < 0)  // the official LLR schedule warms eps up over 500 steps
    cfg.objective.eps_warmup_steps = cfg.objective.method == Method::llr ? 500 : 0;
  if (cfg.out.empty()) cfg.out = "runs/" + cfg.model + "-" + cfg.method + "-" + std::to_string(std::time(nullptr));
  // The model first (a bad name or activation fails before any data is read), the run folder last.
  auto model = nets::make_model(cfg.model, nets::parse_act(cfg.act), data::kCifarClasses, cfg.seed, device);
  Data d = load_data(cfg, device);
  LLR_CHECK(d.train.size() >= cfg.batch, "the training set (", d.train.size(), " images) is smaller than a batch of ",
            cfg.batch);
  int64_t steps_per_epoch = d.train.size() / cfg.batch;
  int64_t total = cfg.steps > 0 ? cfg.steps : cfg.epochs * steps_per_epoch;

  Schedule sched;
  sched.kind = Schedule::parse_kind(cfg.schedule);
  sched.base_lr = cfg.lr;
  sched.total_steps = total;
  sched.warmup_steps = cfg.warmup_steps;
  sched.decay_factor = cfg.decay_factor;
  for (double f : cfg.decay_at) sched.decay_steps.push_back(static_cast<int64_t>(std::llround(f * double(total))));

  fs::create_directories(cfg.out);
  Sgd opt(*model, {cfg.momentum, cfg.nesterov, cfg.weight_decay});
  fs::path model_path = fs::path(cfg.out) / "model.safetensors", state_path = fs::path(cfg.out) / "train_state.safetensors";
  if (!resume_dir.empty()) {
    LLR_CHECK(fs::exists(model_path) && fs::exists(state_path), "--resume ", resume_dir,
              ": no checkpoint (model.safetensors and train_state.safetensors) to continue from");
    ckpt::load_model(model_path.string(), *model);
    io::Metadata meta = ckpt::load_train_state(state_path.string(), opt, *model);
    start_step = ckpt::metadata_int(meta, "step", state_path.string());
    io::Metadata mmeta = io::read_safetensors(model_path.string()).metadata;
    LLR_CHECK(ckpt::metadata_int(mmeta, "step", model_path.string()) == start_step, "--resume ", resume_dir,
              ": model.safetensors and train_state.safetensors are from different steps");
  } else {
    io::write_file_atomic((fs::path(cfg.out) / "config.json").string(), cfg.to_json());
    std::ofstream(fs::path(cfg.out) / "metrics.jsonl", std::ios::trunc);
  }
  std::ofstream metrics(fs::path(cfg.out) / "metrics.jsonl", std::ios::app);
  LLR_CHECK(metrics.good(), "cannot write ", (fs::path(cfg.out) / "metrics.jsonl").string());

  Progress progress(::isatty(::fileno(stdout)) != 0);
  {
    char line[512];
    std::snprintf(line, sizeof line,
                  "llrtrain train: %s training of %s (%s, %.2fM parameters) on %s, %s, %lld training images (%s), "
                  "%lld steps of batch %lld, seed %llu, run folder %s%s",
                  cfg.method.c_str(), cfg.model.c_str(), cfg.act.c_str(), model->parameter_count() / 1e6,
                  device_name(device),
                  cfg.precision.c_str(), static_cast<long long>(d.train.size()), d.train.name.c_str(),
                  static_cast<long long>(total), static_cast<long long>(cfg.batch),
                  static_cast<unsigned long long>(cfg.seed), cfg.out.c_str(),
                  start_step ? (", resuming at step " + std::to_string(start_step)).c_str() : "");
    progress.line(line);
  }

  auto save = [&](int64_t step) {
    io::Metadata meta{{"step", std::to_string(step)}, {"epoch", std::to_string(step / steps_per_epoch)}};
    ckpt::save_model(model_path.string(), *model, meta);
    ckpt::save_train_state(state_path.string(), opt, *model, meta);
  };
  auto elapsed = [&] { return std::chrono::duration<double>(clock::now() - t0).count(); };

  TrainSummary summary;
  Tensor order;  // this epoch's permutation, on the data's device
  int64_t order_epoch = -1;
  double last_loss = 0;
  // Sums over the logging window, kept on the device and read only when a metrics line is written, so a step
  // never waits for the GPU.
  Tensor loss_acc, correct_acc;
  std::map<std::string, Tensor> metric_acc;
  int64_t seen_acc = 0, window_first_step = start_step;
  auto accumulate = [](Tensor& acc, const Tensor& v) { acc = acc.defined() ? backend::add(acc, v) : v.clone(); };
  auto window_start = clock::now();
  std::vector<Tensor> params = model->parameters();
  for (int64_t step = start_step; step < total; ++step) {
    int64_t epoch = step / steps_per_epoch, pos = step % steps_per_epoch;
    if (epoch != order_epoch) {
      order = data::order_on_device(d.train, data::epoch_order(d.train.size(), cfg.seed, epoch));
      order_epoch = epoch;
    }
    // Images stay f32 (perturbations need the precision); the model casts to the compute dtype.
    data::Batch b = data::make_batch(d.train, order, pos * cfg.batch, cfg.batch, cfg.augment, cfg.seed,
                                     static_cast<uint64_t>(step), DType::f32);
    ObjectiveOptions oo;
    oo.compute = compute;
    oo.seed = cfg.seed;
    oo.step = static_cast<uint64_t>(step);
    ObjectiveResult res = build_objective(*model, b.images, b.labels, cfg.objective, oo);
    Tensor loss = res.loss;
    Tensor logits = res.logits_for_accuracy;
    std::vector<Tensor> grads = objective_gradients(res, params);
    Tape::current().clear();
    double lr = sched.lr(step);
    opt.step(grads, lr);
    accumulate(loss_acc, loss);
    accumulate(correct_acc, backend::count_correct(logits, b.labels));
    for (const auto& [k, v] : res.metrics) accumulate(metric_acc[k], v);
    seen_acc += cfg.batch;

    bool epoch_end = pos == steps_per_epoch - 1 || step == total - 1;
    bool stop = cfg.stop_after > 0 && step + 1 == cfg.stop_after;
    bool log = (step + 1) % cfg.log_every == 0 || epoch_end || stop;
    if (log) {
      int64_t nsteps = seen_acc / cfg.batch;
      double loss_mean = host_value(loss_acc) / double(nsteps);
      // Checked before anything is saved: a NaN never reaches a checkpoint.
      LLR_CHECK(std::isfinite(loss_mean), "training loss became ", loss_mean, " between steps ", window_first_step + 1,
                " and ", step + 1, "; the last checkpoint in ", cfg.out, " is from before it (try a lower --lr)");
      double acc = host_value(correct_acc) / double(seen_acc);
      double ips = double(seen_acc) / std::max(1e-9, std::chrono::duration<double>(clock::now() - window_start).count());
      progress.update(step + 1, total, epoch, loss_mean, acc, lr, ips);
      json m = {{"step", step + 1},
                {"epoch", double(step + 1) / double(steps_per_epoch)},
                {"split", "train"},
                {"loss", loss_mean},
                {"accuracy", acc},
                {"lr", lr},
                {"images_per_s", ips},
                {"elapsed_s", elapsed()}};
      for (const auto& [k, v] : metric_acc) m[k] = host_value(v) / double(nsteps);
      metrics << m.dump() << "\n" << std::flush;
      last_loss = loss_mean;
      loss_acc = correct_acc = Tensor();
      metric_acc.clear();
      seen_acc = 0;
      window_first_step = step + 1;
      window_start = clock::now();
    }
    if (epoch_end || stop) {
      if (!d.eval.empty()) {
        EvalResult r = evaluate(*model, d.eval, cfg.eval_batch, compute);
        json m = {{"step", step + 1}, {"epoch", double(step + 1) / double(steps_per_epoch)}, {"split", d.eval_split},
                  {"loss", r.loss}, {"accuracy", r.accuracy}, {"n", r.n}, {"elapsed_s", elapsed()}};
        metrics << m.dump() << "\n" << std::flush;
        char line[256];
        std::snprintf(line, sizeof line, "step %lld (epoch %.2f): train loss %.4f, %s accuracy %.4f (%lld images)",
                      static_cast<long long>(step + 1), double(step + 1) / double(steps_per_epoch), last_loss,
                      d.eval_split.c_str(), r.accuracy, static_cast<long long>(r.n));
        progress.line(line);
        summary.final_eval = r;
        summary.eval_split = d.eval_split;
      }
      save(step + 1);
    }
    summary.steps = step + 1;
    if (stop) {
      summary.interrupted = true;
      progress.line("stopped after step " + std::to_string(step + 1) + " (--stop-after); resume with --resume " +
                    cfg.out);
      break;
    }
  }
  summary.final_train_loss = last_loss;
  if (start_step >= total) progress.line("nothing to do: the run in " + cfg.out + " is complete");
  return summary;
}

}  // namespace llr
