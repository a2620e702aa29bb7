#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/graph.h"
#include "train/optimizer.h"
#include "train/run_folder.h"
#include "train/safetensors.h"
#include "train/schedule.h"
#include "train/step.h"
#include "train/training_kernels.h"

namespace llr {

namespace fs = std::filesystem;
using nlohmann::json;

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
  const DataSettings& s = c.data;
  data::Splits sp = s.data == "synthetic" ? data::synthetic_splits(s.synthetic_train, s.synthetic_val, c.seed + 17)
                                          : data::load_cifar10(s.data, s.holdout);
  Data d;
  d.train = sp.train;
  if (s.n_train > 0) {
    LLR_CHECK(s.n_train <= sp.train.size(), "--n-train ", s.n_train, " exceeds the ", sp.train.size(),
              " training images");
    d.train = data::slice(sp.train, 0, s.n_train);
  }
  if (!sp.val.empty()) {
    d.eval = sp.val;
    d.eval_split = "val";
  } else if (!sp.test.empty()) {
    d.eval = sp.test;
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

// SIGINT and SIGTERM set a flag the loop reads at each step boundary; the handlers are installed for the life of a
// training run only.
std::atomic<int> stop_signal{0};

class SignalScope {
 public:
  SignalScope() {
    stop_signal = 0;
    struct sigaction sa = {};
    sa.sa_handler = [](int sig) { stop_signal = sig; };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalScope() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ = {}, old_term_ = {};
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  LLR_CHECK(in.good(), "cannot read ", p.string());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// On --resume the run's saved settings rule; those the command line gave are ignored (and said so), except the few
// resume_may_change() allows, which replace the saved ones and are saved back.
TrainConfig resumed_config(const TrainConfig& given_cfg, const TrainOptions& opt, Progress& progress, bool* changed) {
  fs::path cfg_path = fs::path(opt.resume) / "config.json";
  LLR_CHECK(fs::exists(cfg_path), "--resume ", opt.resume, ": no config.json there (not a run folder)");
  TrainConfig saved = TrainConfig::from_json(read_text(cfg_path), cfg_path.string());
  saved.out = opt.resume;
  nlohmann::json now, before;
  TrainConfig g = given_cfg;
  write_json(g, now);
  write_json(saved, before);
  std::string ignored;
  for (const std::string& name : opt.given) {
    if (name == "out" || !now.contains(name)) continue;
    if (resume_may_change(name)) {
      nlohmann::json patch = {{name, now[name]}};
      read_json(saved, patch, "the command line");
      *changed = *changed || now[name] != before[name];
    } else if (now[name] != before[name]) {
      ignored += (ignored.empty() ? "" : ", ") + std::string("--") + name;
    }
  }
  if (!ignored.empty())
    progress.line("warning: " + ignored + " ignored on --resume: the run keeps the settings of its config.json");
  return saved;
}

}  // namespace

EvalResult evaluate(nets::Model& model, const data::Dataset& d, int64_t batch, DType compute, int64_t limit) {
  NoGradGuard no_grad;
  EvalResult r;
  int64_t n = limit > 0 ? std::min(limit, d.size()) : d.size();
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  Tensor loss_sum, correct;
  Tensor order_dev = data::order_on_device(d, order);
  for (int64_t b = 0; b < n; b += batch) {
    int64_t nb = std::min(batch, n - b);
    data::Batch bt = data::make_batch(d, order_dev, b, nb, false, 0, 0, stat_dtype(compute));
    nets::ForwardContext ctx;
    ctx.bn = nets::BnMode::eval;
    ctx.compute = compute;
    Tensor logits = model.forward(bt.images, ctx);
    Tensor l = backend::sum_all(cross_entropy(logits, bt.labels)), c = training::count_correct(logits, bt.labels);
    loss_sum = loss_sum.defined() ? backend::add(loss_sum, l) : l;
    correct = correct.defined() ? backend::add(correct, c) : c;
  }
  r.n = n;
  r.accuracy = n ? host_value(correct) / double(n) : 0;
  r.loss = n ? host_value(loss_sum) / double(n) : 0;
  return r;
}

TrainSummary train(TrainConfig cfg, const TrainOptions& opt) {
  using clock = std::chrono::steady_clock;
  Progress progress(::isatty(::fileno(stdout)) != 0);
  const bool resuming = !opt.resume.empty();
  bool config_changed = false;
  if (resuming) cfg = resumed_config(cfg, opt, progress, &config_changed);
  // Every setting before any work: a bad flag costs nothing.
  validate(cfg);
  graph::set_enabled(cfg.cuda_graphs);
  LLR_CHECK(opt.stop_after >= 0, "--stop-after must be >= 0, got ", opt.stop_after);
  Device device = resolve_device(cfg.device);
  DType compute = resolve_precision(cfg.precision, device);
  const Method& method = cfg.chosen_method();
  const int64_t eps_warmup = cfg.eps_warmup();
  if (cfg.out.empty()) cfg.out = "runs/" + cfg.model + "-" + cfg.method + "-" + std::to_string(std::time(nullptr));
  if (!resuming)
    LLR_CHECK(opt.overwrite || !run::has_contents(cfg.out), "run folder ", cfg.out,
              " is not empty: resume it with --resume ", cfg.out, ", choose another --out, or pass --overwrite");
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
  sched.warmup_steps = cfg.warmup_steps;
  sched.decay_factor = cfg.decay_factor;
  sched.decay_at = cfg.decay_at;
  const bool budgeted = cfg.time_budget > 0;

  fs::create_directories(cfg.out);
  run::FolderLock lock(cfg.out);
  Sgd opt_sgd(*model, {cfg.momentum, cfg.nesterov, cfg.weight_decay});
  int64_t start_step = 0;
  double train_seconds = 0;
  if (resuming) {
    run::Manifest m = run::load_checkpoint(cfg.out, *model, opt_sgd);
    start_step = m.step;
    train_seconds = m.train_seconds;
    if (config_changed) io::write_file_atomic((fs::path(cfg.out) / "config.json").string(), cfg.to_json());
  } else {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(cfg.out, ec))
      if (e.path().filename() != ".lock") fs::remove_all(e.path(), ec);
    io::write_file_atomic((fs::path(cfg.out) / "config.json").string(), cfg.to_json());
  }
  run::MetricsLog metrics(cfg.out, resuming ? start_step : -1);

  {
    char line[512];
    std::snprintf(line, sizeof line,
                  "llrtrain train: %s training of %s (%s, %.2fM parameters) on %s, %s, %lld training images (%s), "
                  "%lld steps of batch %lld, seed %llu, run folder %s%s",
                  cfg.method.c_str(), cfg.model.c_str(), cfg.act.c_str(), model->parameter_count() / 1e6,
                  device_name(device), cfg.precision.c_str(), static_cast<long long>(d.train.size()),
                  d.train.name.c_str(), static_cast<long long>(total), static_cast<long long>(cfg.batch),
                  static_cast<unsigned long long>(cfg.seed), cfg.out.c_str(),
                  start_step ? (", resuming at step " + std::to_string(start_step)).c_str() : "");
    progress.line(line);
  }

  int64_t last_good_checkpoint = start_step;
  Tensor diverged_at = Tensor::full({}, -1.0, DType::f64, Layout::plain, device);
  // The first diverging step, or -1 (reads the device marker: call where the loop synchronises anyway).
  auto first_diverged = [&] { return static_cast<int64_t>(diverged_at.to(Device::cpu).item()); };
  auto commit = [&](int64_t step) {
    int64_t bad = run::nonfinite_values(*model, &opt_sgd);
    if (bad > 0) {
      int64_t at = first_diverged();
      LLR_FAIL("training diverged", at >= 0 ? " at step " + std::to_string(at + 1) : std::string(), ": ", bad,
               " weights or momentum values are NaN or infinite by step ", step, "; nothing was saved, the last "
               "checkpoint (step ", last_good_checkpoint, ") in ", cfg.out, " is intact (try a lower --lr)");
    }
    run::commit_checkpoint(cfg.out, *model, opt_sgd, {step, train_seconds, "", ""});
    last_good_checkpoint = step;
  };

  SignalScope signals;
  TrainingSteps steps(*model, opt_sgd, method, cfg.robust);
  TrainSummary summary;
  summary.steps = start_step;
  Tensor order;  // this epoch's permutation, on the data's device
  int64_t order_epoch = -1;
  double last_loss = 0;
  // Sums over the logging window, kept on the device and read only when a metrics line is written, so a step
  // never waits for the GPU.
  Tensor loss_acc, clean_acc, adv_acc;
  std::map<std::string, Tensor> metric_acc;
  int64_t seen_acc = 0, window_first_step = start_step;
  auto accumulate = [](Tensor& acc, const Tensor& v) {
    if (v.defined()) acc = acc.defined() ? backend::add(acc, v) : v.clone();
  };
  auto window_start = clock::now();
  double window_seconds = 0;
  const bool already_done = start_step >= total || (budgeted && train_seconds >= cfg.time_budget);
  for (int64_t step = start_step; step < total && !already_done; ++step) {
    auto step_start = clock::now();
    // Training progress in [0, 1]: of the steps, or of the time budget (the device may still be working through
    // earlier steps; the estimate is exact at each log step, where the loop synchronises).
    const double done = budgeted ? (train_seconds + window_seconds) / cfg.time_budget : double(step) / double(total);
    int64_t epoch = step / steps_per_epoch, pos = step % steps_per_epoch;
    if (epoch != order_epoch) {
      order = data::order_on_device(d.train, data::epoch_order(d.train.size(), cfg.seed, epoch));
      order_epoch = epoch;
    }
    // Images stay f32 (perturbations need the precision); the model casts to the compute dtype.
    data::Batch b = data::make_batch(d.train, order, pos * cfg.batch, cfg.batch, cfg.augment, cfg.seed,
                                     static_cast<uint64_t>(step), DType::f32);
    StepContext ctx;
    ctx.compute = compute;
    ctx.seed = cfg.seed;
    ctx.step = static_cast<uint64_t>(step);
    ctx.eps = cfg.robust.eps_warmup_fraction > 0
                  ? cfg.robust.eps * std::min(1.0, done / cfg.robust.eps_warmup_fraction)
                  : eps_at(cfg.robust.eps, eps_warmup, static_cast<uint64_t>(step));
    double lr = sched.lr(step, done);
    StepOutput out = steps.run(b.images, b.labels, ctx, lr);
    training::mark_first_step(diverged_at,
                              backend::add(training::count_nonfinite(out.loss), opt_sgd.nonfinite_updates()), step);
    accumulate(loss_acc, out.loss);
    accumulate(clean_acc, out.clean_correct);
    accumulate(adv_acc, out.adv_correct);
    for (const auto& [k, v] : out.metrics) accumulate(metric_acc[k], v);
    seen_acc += cfg.batch;
    // A time budget is spent by the device's work, not by the host's queueing of it: the host may run a step or
    // more ahead (many steps, when steps are replayed graphs), so a budgeted run waits for each step.
    if (budgeted) backend_for(device).synchronize();

    const bool budget_spent =
        budgeted && train_seconds + window_seconds + std::chrono::duration<double>(clock::now() - step_start).count() >=
                        cfg.time_budget;
    bool epoch_end = pos == steps_per_epoch - 1 || step == total - 1 || budget_spent;
    bool stop = opt.stop_after > 0 && step + 1 == opt.stop_after;
    bool interrupted = stop_signal.load() != 0;
    bool log = (step + 1) % cfg.log_every == 0 || epoch_end || stop || interrupted;
    if (log) {
      int64_t nsteps = seen_acc / cfg.batch;
      double loss_mean = host_value(loss_acc) / double(nsteps);  // synchronises: the window's time is now real
      train_seconds += window_seconds + std::chrono::duration<double>(clock::now() - step_start).count();
      window_seconds = 0;
      // Checked before anything is saved: a NaN never reaches a checkpoint.
      if (!std::isfinite(loss_mean)) {
        int64_t at = first_diverged();
        LLR_FAIL("training diverged ",
                 at >= 0 ? "at step " + std::to_string(at + 1)
                         : "between steps " + std::to_string(window_first_step + 1) + " and " +
                               std::to_string(step + 1),
                 ": the loss became ", loss_mean, "; the last checkpoint (step ", last_good_checkpoint, ") in ",
                 cfg.out, " is from before it (try a lower --lr)");
      }
      double acc = clean_acc.defined() ? host_value(clean_acc) / double(seen_acc) : NAN;
      double ips = double(seen_acc) / std::max(1e-9, std::chrono::duration<double>(clock::now() - window_start).count());
      progress.update(step + 1, total, epoch,
                      loss_mean, std::isnan(acc) && adv_acc.defined() ? host_value(adv_acc) / double(seen_acc) : acc,
                      lr, ips);
      json m = {{"step", step + 1},
                {"epoch", double(step + 1) / double(steps_per_epoch)},
                {"split", "train"},
                {"loss", loss_mean},
                {"lr", lr},
                {"progress", budgeted ? std::min(1.0, train_seconds / cfg.time_budget) : double(step + 1) / double(total)},
                {"eps", ctx.eps},
                {"images_per_s", ips},
                {"elapsed_s", train_seconds}};
      if (!std::isnan(acc)) m["accuracy"] = acc;
      if (adv_acc.defined()) m["adv_accuracy"] = host_value(adv_acc) / double(seen_acc);
      for (const auto& [k, v] : metric_acc) m[k] = host_value(v) / double(nsteps);
      metrics.write(m);
      last_loss = loss_mean;
      loss_acc = clean_acc = adv_acc = Tensor();
      metric_acc.clear();
      seen_acc = 0;
      window_first_step = step + 1;
      window_start = clock::now();
    } else {
      window_seconds += std::chrono::duration<double>(clock::now() - step_start).count();
    }
    if (epoch_end || stop || interrupted) {
      if (!d.eval.empty() && epoch_end) {
        steps.release();  // a recorded step's working set, back to the cache for the evaluation
        EvalResult r = evaluate(*model, d.eval, cfg.eval_batch, compute);
        json m = {{"step", step + 1}, {"epoch", double(step + 1) / double(steps_per_epoch)}, {"split", d.eval_split},
                  {"loss", r.loss},   {"accuracy", r.accuracy},                             {"n", r.n},
                  {"elapsed_s", train_seconds}};
        metrics.write(m);
        char line[256];
        std::snprintf(line, sizeof line, "step %lld (epoch %.2f): train loss %.4f, %s accuracy %.4f (%lld images)",
                      static_cast<long long>(step + 1), double(step + 1) / double(steps_per_epoch), last_loss,
                      d.eval_split.c_str(), r.accuracy, static_cast<long long>(r.n));
        progress.line(line);
        summary.final_eval = r;
        summary.eval_split = d.eval_split;
      }
      commit(step + 1);
    }
    summary.steps = step + 1;
    if (interrupted) {
      int sig = stop_signal.load();
      throw Interrupted("stopped by " + std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") + " after step " +
                            std::to_string(step + 1) + "; checkpoint written, continue with --resume " + cfg.out,
                        sig);
    }
    if (budget_spent) {
      char line[128];
      std::snprintf(line, sizeof line, "time budget of %g s reached after step %lld", cfg.time_budget,
                    static_cast<long long>(step + 1));
      progress.line(line);
      break;
    }
    if (stop) {
      summary.interrupted = true;
      progress.line("stopped after step " + std::to_string(step + 1) + " (--stop-after); resume with --resume " +
                    cfg.out);
      break;
    }
  }
  summary.final_train_loss = last_loss;
  summary.train_seconds = train_seconds;
  if (already_done) progress.line("nothing to do: the run in " + cfg.out + " is complete");
  return summary;
}

}  // namespace llr
