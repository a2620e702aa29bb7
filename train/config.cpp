#include "train/config.h"

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "train/attacks/attack.h"

namespace llr {

namespace {
const char* const kCudaGraphsHelp =
    "on the GPU, record a training step as a CUDA graph and replay it for the steps after (the eps warm-up too: the "
    "radius is read on the device; the attack or search steps of the steps not replayed are recorded too)";
}  // namespace

void TrainConfig::visit(SettingVisitor& v) {
  data.visit(v);
  v.text({"model", "wrn-D-K (e.g. wrn-28-10), preact-rn18, resnet-50, resnet-101 or resnet-152"}, model, {});
  v.text({"act", "activation"}, act, {"relu", "softplus"});
  v.integer({"epochs", "epochs"}, epochs, Range::at_least(1));
  v.integer({"steps", "train for this many steps instead (0: use --epochs)"}, steps, Range::at_least(0));
  v.real({"time_budget",
          "stop when the training time (data, steps, optimiser; not evaluation or checkpoints) reaches this many "
          "seconds; the learning-rate schedule and the eps warm-up fraction then run over the budget (0: no budget)"},
         time_budget, Range::at_least(0));
  v.integer({"batch", "batch size"}, batch, Range::at_least(1));
  v.real({"lr", "base learning rate"}, lr, Range::positive());
  v.text({"schedule", "learning-rate schedule"}, schedule, {"constant", "piecewise", "cosine"});
  v.reals({"decay_at", "piecewise: fractions of training at which the rate decays"}, decay_at, Range::between(0, 1));
  v.real({"decay_factor", "piecewise: factor of each decay"}, decay_factor, Range::positive());
  v.integer({"warmup_steps", "linear learning-rate warm-up steps"}, warmup_steps, Range::at_least(0));
  v.real({"weight_decay", "weight decay (convolution and linear weights)", "wd"}, weight_decay, Range::at_least(0));
  v.real({"momentum", "SGD momentum"}, momentum, Range::between(0, 1));
  v.flag({"nesterov", "Nesterov momentum"}, nesterov);
  v.flag({"augment", "random crop and flip (--no-augment: none)"}, augment);
  v.seed({"seed", "random seed (initialisation, data order, augmentation)"}, seed);
  v.text({"device", "where to compute"}, device, {"auto", "cuda", "cpu"});
  v.text({"precision", "compute precision (bf16: GPU only)"}, precision, {"fp32", "bf16"});
  v.flag({"cuda_graphs", kCudaGraphsHelp}, cuda_graphs);
  v.text({"out", "run folder (default runs/MODEL-METHOD-TIME)"}, out, {});
  v.integer({"log_every", "steps between metrics lines"}, log_every, Range::at_least(1));
  v.integer({"eval_batch", "evaluation batch size"}, eval_batch, Range::at_least(1));
  v.text({"method", "training method"}, method, methods.names());
  robust.visit(v);
  methods.visit(v);
}

int64_t TrainConfig::eps_warmup() const {
  return robust.eps_warmup >= 0 ? robust.eps_warmup : chosen_method().default_eps_warmup();
}

std::string TrainConfig::to_json() {
  nlohmann::json j = nlohmann::json::object();
  write_json(*this, j);
  return j.dump(2) + "\n";
}

TrainConfig TrainConfig::from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    LLR_FAIL(source, " is not valid JSON: ", e.what());
  }
  TrainConfig c;
  read_json(c, j, source);
  return c;
}

bool resume_may_change(const std::string& name) {
  return name == "epochs" || name == "steps" || name == "time_budget" || name == "log_every" || name == "eval_batch" ||
         name == "device" || name == "cuda_graphs" ||
         // how the same gradient is computed (memory against time), not what is trained
         name == "llr_tangent_segments" || name == "llr_recompute_nominal" || name == "gradalign_tangent_segments";
}

void validate(EvalConfig& c) {
  c.visit(settings_detail::validator());
  if (!c.attacks.empty()) parse_attacks(c.attacks);
}

void EvalConfig::visit(SettingVisitor& v) {
  v.text({"checkpoint", "model.safetensors written by llrtrain train"}, checkpoint, {});
  v.text({"data", "'synthetic' or a CIFAR-10 binary folder"}, data, {});
  v.integer({"holdout", "CIFAR-10: the training run's --holdout, for --split val"}, holdout, Range::at_least(0));
  v.text({"split", "the split to evaluate"}, split, {"test", "val", "train"});
  v.text({"device", "where to compute"}, device, {"auto", "cuda", "cpu"});
  v.text({"json", "result file (default: eval.json beside the checkpoint)"}, json, {});
  v.text({"dump_logits",
          "also write the first --n images (default 64) and their logits as safetensors, for "
          "tools/reference/compare_logits.py"},
         dump_logits, {});
  v.text({"attacks", "comma-separated attacks (see llrtrain eval --help)"}, attacks, {});
  v.real({"eps", "l_inf radius of the attacks and of gamma"}, eps, Range::at_least(0));
  v.integer({"n", "evaluate the first N images (0: all)"}, n, Range::at_least(0));
  v.integer({"batch", "batch size (0: the whole set, or the largest batch whose attack steps fit in half the free memory)"},
            batch, Range::at_least(0));
  v.seed({"seed", "attack seed (and the synthetic data seed of the training run)"}, seed);
  v.integer({"gamma_steps", "Adam steps of the gamma search (0: no gamma)"}, gamma_steps, Range::at_least(0));
  v.integer({"gamma_restarts", "random restarts of the gamma search"}, gamma_restarts, Range::at_least(1));
}

void BenchConfig::visit(SettingVisitor& v) {
  v.text({"model", "model name"}, model, {});
  v.text({"act", "activation"}, act, {"relu", "softplus"});
  v.text({"methods", "comma-separated list such as natural,pgd-10,trades-10,llr-2"}, methods, {});
  v.text({"llr_grad", "the LLR gradient: exact (one tangent pass) or fd (finite differences)"}, llr_grad, {"exact", "fd"});
  v.integer({"tangent_segments", "LLR's and GradAlign's tangent passes recomputed in N segments (1: kept whole)"},
            tangent_segments, Range::at_least(1));
  v.flag({"llr_recompute_nominal", "the exact LLR gradient records its nominal pass twice instead of keeping it"},
         llr_recompute_nominal);
  v.integer({"batch", "batch size"}, batch, Range::at_least(1));
  v.text({"precision", "compute precision (auto: bf16 on the GPU, fp32 on the CPU)"}, precision,
         {"auto", "fp32", "bf16"});
  v.text({"device", "where to compute"}, device, {"auto", "cuda", "cpu"});
  v.integer({"warmup", "untimed steps first"}, warmup, Range::at_least(0));
  v.integer({"iters", "timed steps"}, iters, Range::at_least(1));
  v.flag({"profile", "also time each phase and op of the timed steps and print where the time goes"}, profile);
  v.flag({"cuda_graphs", kCudaGraphsHelp}, cuda_graphs);
  v.flag({"memory", "also print what the tensors live at the peak are, by the phase and kernel call that made them"},
         memory);
  v.text({"json", "also append the JSON lines to this file"}, json, {});
}

}  // namespace llr
