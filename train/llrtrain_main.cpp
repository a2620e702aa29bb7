// llrtrain: command-line entry point. `llrtrain --help` lists the commands, `llrtrain COMMAND --help` their flags.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include <CLI/CLI.hpp>

#include "engine/autograd.h"
#include "engine/gradcheck.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/version.h"
#include "nets/conv_bn_net.h"
#include "train/attacks.h"
#include "train/bench.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/objective_check.h"
#include "train/safetensors.h"
#include "train/trainer.h"

#ifdef LLR_HAVE_CUDA
#include "kernels/context.h"
#include "kernels/device_info.h"
#endif

namespace {

using namespace llr;

void init_gpu() {
#ifdef LLR_HAVE_CUDA
  if (cuda::available()) cuda::init();
#endif
}

void print_version() {
  std::printf("llrtrain %s\n", kVersion);
#ifdef LLR_HAVE_CUDA
  std::printf("backends: cpu (Eigen), cuda (compiled)\n");
  std::printf("gpu: %s\n", cuda::device_summary().c_str());
#else
  std::printf("backends: cpu (Eigen); built without CUDA\n");
#endif
}

// The engine's central identity on a small conv-BN-softplus net in f64: the directional derivative of
// S = sum_i CE(f(x_i), y_i) along v from one tangent pass equals <v, grad_x S> from one reverse pass, and the
// reverse pass through that tangent computation matches finite differences.
int selfcheck(uint64_t seed) {
  std::printf("selfcheck: seed %llu, f64, conv-BN-softplus net on a batch of 4 8x8x3 images\n",
              static_cast<unsigned long long>(seed));
  Generator gen(seed);
  nets::ConvBnNet net = nets::ConvBnNet::create(gen, 3, 6, 10, DType::f64, Act::softplus);
  for (Tensor& p : net.parameters()) p.requires_grad_();
  Tensor x = gen.uniform({4, 8, 8, 3}, 0.0, 1.0, DType::f64, Layout::nhwc).requires_grad_();
  Tensor labels = gen.randint({4}, 0, 10);
  Tensor v = gen.normal({4, 8, 8, 3}, 0.0, 1.0, DType::f64, Layout::nhwc);

  Tensor S = sum(cross_entropy(net.forward(x), labels));
  Tensor grad_x = grad({S}, {Tensor::scalar(1.0, DType::f64)}, {x}, Retain::yes)[0];
  double reverse = 0;
  for (int64_t i = 0; i < v.numel(); ++i) reverse += v.at(i) * grad_x.at(i);
  double tangent = tangent_forward({x}, {v}, {S})[0].item();
  double rel = gradcheck::relative_error(tangent, reverse);
  std::printf("  D_v S by tangent pass  %.15g\n  <v, grad_x S> reversed %.15g\n  relative difference    %.3g\n",
              tangent, reverse, rel);
  Tape::current().clear();

  gradcheck::Function dvs = [&](const std::vector<Tensor>& p) {
    nets::ConvBnNet n = net;
    n.w1 = p[0], n.g1 = p[1], n.b1 = p[2], n.w2 = p[3], n.g2 = p[4], n.b2 = p[5], n.fc_w = p[6], n.fc_b = p[7];
    Tensor xc = x.detach();
    xc.set_tangent(v);
    return sum(cross_entropy(n.forward(xc), labels)).tangent();
  };
  std::vector<Tensor> params = net.parameters();
  gradcheck::Options opt;
  opt.max_elements_per_input = 12;
  gradcheck::Report r = gradcheck::check_vjp(dvs, params, std::vector<bool>(params.size(), true), opt);
  std::printf("  grad of D_v S w.r.t. parameters vs finite differences: %lld elements, max rel. error %.3g\n",
              static_cast<long long>(r.checked), r.max_rel_error);
  bool ok = rel < 1e-10 && r.passed(1e-6);
  std::printf("selfcheck %s\n", ok ? "passed" : "FAILED");
  return ok ? 0 : 1;
}

// A number or a fraction such as 8/255.
double parse_number(const std::string& s, const char* flag) {
  try {
    size_t slash = s.find('/'), used = 0;
    if (slash == std::string::npos) {
      double v = std::stod(s, &used);
      if (used == s.size()) return v;
    } else {
      double a = std::stod(s.substr(0, slash), &used);
      if (used == slash) {
        double b = std::stod(s.substr(slash + 1), &used);
        if (used == s.size() - slash - 1 && b != 0) return a / b;
      }
    }
  } catch (const std::exception&) {
  }
  throw Error(std::string(flag) + " expects a number or a fraction such as 8/255, got '" + s + "'");
}

std::vector<double> parse_list(const std::string& s) {
  std::vector<double> out;
  size_t at = 0;
  while (at < s.size()) {
    size_t comma = s.find(',', at);
    std::string part = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    try {
      size_t used = 0;
      out.push_back(std::stod(part, &used));
      if (used != part.size()) throw std::invalid_argument(part);
    } catch (const std::exception&) {
      throw Error("expected a comma-separated list of numbers, got '" + s + "'");
    }
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

// The first n images of d with the model's logits (evaluation mode), for tools/reference/compare_logits.py.
void dump_logits(const std::string& path, nets::Model& model, const data::Dataset& d, int64_t n, DType compute) {
  NoGradGuard no_grad;
  n = std::min<int64_t>(n, d.size());
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  data::Batch b = data::make_batch(d, order, 0, n, false, 0, 0, stat_dtype(compute));
  nets::ForwardContext ctx;
  ctx.bn = nets::BnMode::eval;
  ctx.compute = compute;
  Tensor logits = model.forward(b.images, ctx);
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

struct EvalOptions {
  std::string checkpoint, data = "synthetic", split = "test", device = "auto", json, dump, attacks, eps = "8/255";
  int64_t n = 0, batch = 500, holdout = 0;
  uint64_t seed = 0;
  int gamma_steps = 0, gamma_restarts = 1;
};

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(std::min<double>(v.size() - 1, q * (v.size() - 1) + 0.5))];
}

int run_eval(const EvalOptions& e) {
  using clock = std::chrono::steady_clock;
  Device device = resolve_device(e.device);
  ckpt::ModelInfo info = ckpt::read_model_info(e.checkpoint);
  auto model = nets::make_model(info.model, info.act, info.classes, 0, device, info.dtype);
  ckpt::load_model(e.checkpoint, *model);
  data::Splits s =
      e.data == "synthetic" ? data::synthetic_splits(1, 10000, e.seed + 17) : data::load_cifar10(e.data, e.holdout);
  data::Dataset d = e.split == "train" ? s.train : e.split == "val" ? s.val : s.test;
  if (e.split == "test" && d.empty() && e.data == "synthetic") d = s.val;
  LLR_CHECK(!d.empty(), "no ", e.split, " split in ", e.data,
            e.split == "test" ? " (test_batch.bin is missing; try --split val with a training run's --holdout)" : "");
  d = data::to_device(d, device);
  DType compute = info.dtype == DType::f64 ? DType::f64 : DType::f32;
  if (!e.dump.empty()) dump_logits(e.dump, *model, d, e.n > 0 ? e.n : 64, compute);
  EvalResult r = evaluate(*model, d, e.batch, compute, e.n);
  std::printf("%s (%s) on %s/%s: clean accuracy %.4f over %lld images, mean cross-entropy %.4f\n", info.model.c_str(),
              nets::act_name(info.act), e.data.c_str(), e.split.c_str(), r.accuracy, static_cast<long long>(r.n), r.loss);
  nlohmann::json j = {{"checkpoint", e.checkpoint}, {"model", info.model}, {"act", nets::act_name(info.act)},
                      {"data", e.data},             {"split", e.split},    {"n", r.n},
                      {"clean_accuracy", r.accuracy}, {"loss", r.loss},    {"seed", e.seed}};

  if (!e.attacks.empty() || e.gamma_steps > 0) {
    double eps = parse_number(e.eps, "--eps");
    std::vector<AttackSpec> specs = e.attacks.empty() ? std::vector<AttackSpec>{} : AttackSpec::parse_list(e.attacks);
    std::vector<int64_t> robust(specs.size(), 0);
    std::vector<double> seconds(specs.size(), 0.0), gammas;
    int64_t worst = 0, clean = 0;
    double gamma_seconds = 0;
    std::vector<int32_t> order(static_cast<size_t>(r.n));
    for (int64_t i = 0; i < r.n; ++i) order[i] = static_cast<int32_t>(i);
    Tensor order_dev = data::order_on_device(d, order);
    for (int64_t b = 0; b < r.n; b += e.batch) {
      int64_t nb = std::min(e.batch, r.n - b);
      data::Batch bt = data::make_batch(d, order_dev, b, nb, false, 0, 0, stat_dtype(compute));
      std::vector<char> correct = correctly_classified(*model, bt.images, bt.labels, compute);
      std::vector<char> all = correct;
      for (char c : correct) clean += c;
      for (size_t a = 0; a < specs.size(); ++a) {
        auto t0 = clock::now();
        AttackResult ar = run_attack(*model, bt.images, bt.labels, correct, specs[a], eps,
                                     e.seed + 7919 * (a + 1) + static_cast<uint64_t>(b), compute);
        seconds[a] += std::chrono::duration<double>(clock::now() - t0).count();
        for (int64_t i = 0; i < nb; ++i) {
          robust[a] += ar.robust[i];
          all[i] = all[i] && ar.robust[i];
        }
      }
      for (char c : all) worst += c;
      if (e.gamma_steps > 0) {
        auto t0 = clock::now();
        std::vector<double> g = measure_gamma(model_cross_entropy(*model, bt.labels, compute), bt.images, eps,
                                              e.gamma_steps, e.gamma_restarts, e.seed + static_cast<uint64_t>(b));
        gamma_seconds += std::chrono::duration<double>(clock::now() - t0).count();
        gammas.insert(gammas.end(), g.begin(), g.end());
      }
    }
    std::printf("\n%-20s %10s %10s\n", ("attack (eps " + e.eps + ")").c_str(), "robust acc", "seconds");
    std::printf("%-20s %10.4f %10s\n", "clean", double(clean) / double(r.n), "");
    nlohmann::json attacks = nlohmann::json::array();
    for (size_t a = 0; a < specs.size(); ++a) {
      std::printf("%-20s %10.4f %10.1f\n", specs[a].label.c_str(), double(robust[a]) / double(r.n), seconds[a]);
      attacks.push_back({{"attack", specs[a].label}, {"robust_accuracy", double(robust[a]) / double(r.n)},
                         {"seconds", seconds[a]}});
    }
    if (!specs.empty()) {
      std::printf("%-20s %10.4f\n", "worst case", double(worst) / double(r.n));
      j["robust_accuracy_worst_case"] = double(worst) / double(r.n);
    }
    j["eps"] = eps;
    j["attacks"] = attacks;
    if (!gammas.empty()) {
      double mean = 0;
      for (double g : gammas) mean += g / double(gammas.size());
      std::printf("gamma (%d Adam steps x %d restarts): mean %.4g, median %.4g, 90th percentile %.4g, max %.4g (%.1f s)\n",
                  e.gamma_steps, e.gamma_restarts, mean, percentile(gammas, 0.5), percentile(gammas, 0.9),
                  percentile(gammas, 1.0), gamma_seconds);
      j["gamma"] = {{"steps", e.gamma_steps},       {"restarts", e.gamma_restarts},
                    {"mean", mean},                 {"median", percentile(gammas, 0.5)},
                    {"p10", percentile(gammas, 0.1)}, {"p90", percentile(gammas, 0.9)},
                    {"max", percentile(gammas, 1.0)}, {"seconds", gamma_seconds},
                    {"values", gammas}};
    }
  }
  std::string out = e.json.empty() ? (std::filesystem::path(e.checkpoint).parent_path() / "eval.json").string() : e.json;
  io::write_file_atomic(out.empty() ? "eval.json" : out, j.dump(2) + "\n");
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"llrtrain: robust training with the Local Linearity Regularizer, on one engine"};
  std::string gc_dtype_unused = "f64";
  app.require_subcommand(0, 1);
  bool version = false;
  app.add_flag("--version", version, "print the version, build configuration and visible GPUs");

  CLI::App* sc = app.add_subcommand("selfcheck", "check the engine's exact tangent pass on a small net (CPU, f64)");
  uint64_t sc_seed = 1;
  sc->add_option("--seed", sc_seed, "random seed")->capture_default_str();

  CLI::App* tr = app.add_subcommand("train", "train a classifier: natural, PGD-k, TRADES or LLR");
  TrainConfig cfg;
  std::string decay_at = "0.5,0.75", resume;
  tr->add_option("--data", cfg.data, "'synthetic' or a CIFAR-10 binary folder (data_batch_1.bin ...)")->capture_default_str();
  tr->add_option("--synthetic-train", cfg.synthetic_train, "synthetic training images")->capture_default_str();
  tr->add_option("--synthetic-val", cfg.synthetic_val, "synthetic validation images")->capture_default_str();
  tr->add_option("--holdout", cfg.holdout, "CIFAR-10: training images held out for validation")->capture_default_str();
  tr->add_option("--n-train", cfg.n_train, "use only the first N training images (0: all)")->capture_default_str();
  tr->add_option("--model", cfg.model, "wrn-D-K (e.g. wrn-28-10) or preact-rn18")->capture_default_str();
  tr->add_option("--act", cfg.act, "relu or softplus")->capture_default_str();
  tr->add_option("--epochs", cfg.epochs, "epochs")->capture_default_str();
  tr->add_option("--steps", cfg.steps, "train for this many steps instead (0: use --epochs)")->capture_default_str();
  tr->add_option("--batch", cfg.batch, "batch size")->capture_default_str();
  tr->add_option("--lr", cfg.lr, "base learning rate")->capture_default_str();
  tr->add_option("--schedule", cfg.schedule, "constant, piecewise or cosine")->capture_default_str();
  tr->add_option("--decay-at", decay_at, "piecewise: fractions of training at which the rate decays")->capture_default_str();
  tr->add_option("--decay-factor", cfg.decay_factor, "piecewise: factor of each decay")->capture_default_str();
  tr->add_option("--warmup-steps", cfg.warmup_steps, "linear warm-up steps")->capture_default_str();
  tr->add_option("--wd", cfg.weight_decay, "weight decay (convolution and linear weights)")->capture_default_str();
  tr->add_option("--momentum", cfg.momentum, "SGD momentum")->capture_default_str();
  tr->add_flag("--nesterov", cfg.nesterov, "Nesterov momentum");
  tr->add_flag("!--no-augment", cfg.augment, "no random crop and flip");
  tr->add_option("--seed", cfg.seed, "random seed (initialisation, data order, augmentation)")->capture_default_str();
  tr->add_option("--device", cfg.device, "auto, cuda or cpu")->capture_default_str();
  tr->add_option("--precision", cfg.precision, "fp32 or bf16 (GPU)")->capture_default_str();
  tr->add_option("--out", cfg.out, "run folder (default runs/MODEL-TIME)");
  tr->add_option("--log-every", cfg.log_every, "steps between metrics lines")->capture_default_str();
  tr->add_option("--eval-batch", cfg.eval_batch, "evaluation batch size")->capture_default_str();
  tr->add_option("--resume", resume, "continue the run in this folder from its last checkpoint");
  std::string eps = "8/255", pgd_alpha = "2/255", attack_bn = "eval", llr_search = "adam", llr_grad = "exact";
  ObjectiveConfig& oc = cfg.objective;
  oc.eps_warmup_steps = -1;
  tr->add_option("--method", cfg.method, "natural, pgd, trades or llr")->capture_default_str();
  tr->add_option("--eps", eps, "l_inf radius, e.g. 8/255")->capture_default_str();
  tr->add_option("--eps-warmup", oc.eps_warmup_steps, "steps over which eps grows from 0 (default: 500 for llr, else 0)");
  tr->add_option("--pgd-steps", oc.pgd_steps, "PGD/TRADES attack steps")->capture_default_str();
  tr->add_option("--pgd-alpha", pgd_alpha, "PGD/TRADES step size, e.g. 2/255")->capture_default_str();
  tr->add_option("--attack-bn", attack_bn, "batch norm in attack steps: eval (running averages) or train (batch)")
      ->capture_default_str();
  tr->add_option("--trades-beta", oc.trades_beta, "TRADES weight of the KL term")->capture_default_str();
  tr->add_option("--llr-steps", oc.llr_steps, "LLR gamma-search steps")->capture_default_str();
  tr->add_option("--llr-search", llr_search, "LLR search update: adam or sign")->capture_default_str();
  tr->add_option("--llr-step-size", oc.llr_step_size, "LLR search step: Adam learning rate or sign step size")
      ->capture_default_str();
  tr->add_option("--lambda", oc.lambda, "LLR weight of |g|")->capture_default_str();
  tr->add_option("--mu", oc.mu, "LLR weight of |d|")->capture_default_str();
  tr->add_option("--nominal-weight", oc.nominal_weight, "LLR weight of the clean loss")->capture_default_str();
  tr->add_option("--llr-grad", llr_grad, "exact (tangent pass) or fd (finite differences)")->capture_default_str();
  tr->add_option("--fd-step", oc.fd_step, "LLR finite-difference step h")->capture_default_str();
  tr->add_option("--stop-after", cfg.stop_after, "stop after this step as if interrupted (testing resume)");

  CLI::App* gc = app.add_subcommand("gradcheck",
                                    "check an objective's gradient (all parameters, perturbation fixed) against finite "
                                    "differences in f64");
  std::string gc_objective = "llr", gc_grad = "exact", gc_act = "softplus", gc_eps = "8/255";
  ObjectiveCheckOptions gco;
  double gc_tol = -1;
  int gc_steps = 3;
  gc->add_option("--objective", gc_objective, "natural, pgd, trades or llr")->capture_default_str();
  gc->add_option("--llr-grad", gc_grad, "exact or fd")->capture_default_str();
  gc->add_option("--model", gco.model, "model name")->capture_default_str();
  gc->add_option("--act", gc_act, "relu or softplus")->capture_default_str();
  gc->add_option("--dtype", gc_dtype_unused, "f64 (finite differences need it)")->capture_default_str();
  gc->add_option("--batch", gco.batch, "batch size")->capture_default_str();
  gc->add_option("--image", gco.image, "image height and width")->capture_default_str();
  gc->add_option("--samples", gco.samples_per_tensor, "parameters checked per tensor")->capture_default_str();
  gc->add_option("--eps", gc_eps, "l_inf radius of the perturbation")->capture_default_str();
  gc->add_option("--steps", gc_steps, "attack / search steps that choose the fixed perturbation")->capture_default_str();
  gc->add_option("--seed", gco.seed, "random seed")->capture_default_str();
  gc->add_option("--tol", gc_tol,
                 "largest relative error that passes (default 1e-6; 1e-4 for --llr-grad fd, whose truncation error is "
                 "O(h^2))");
  gc->add_option("--dump", gco.dump,
                 "write parameters, batch, perturbation and gradient (safetensors) for "
                 "tools/reference/objective_reference.py");

  CLI::App* bn = app.add_subcommand("bench", "time training steps of each method on random CIFAR-shaped batches");
  BenchConfig bc;
  std::string bench_methods = "natural";
  int bench_steps = -1;
  std::string bench_method;
  bn->add_option("--model", bc.model, "model name")->capture_default_str();
  bn->add_option("--act", bc.act, "relu or softplus")->capture_default_str();
  bn->add_option("--method", bench_method, "natural, pgd, trades or llr (with --steps)");
  bn->add_option("--steps", bench_steps, "attack or search steps for --method");
  bn->add_option("--methods", bench_methods, "comma-separated list such as natural,pgd-10,trades-10,llr-2")
      ->capture_default_str();
  bn->add_option("--llr-grad", bc.llr_grad, "exact or fd")->capture_default_str();
  bn->add_option("--batch", bc.batch, "batch size")->capture_default_str();
  bn->add_option("--precision", bc.precision, "fp32 or bf16 (GPU)")->capture_default_str();
  bn->add_option("--device", bc.device, "auto, cuda or cpu")->capture_default_str();
  bn->add_option("--warmup", bc.warmup, "untimed steps first")->capture_default_str();
  bn->add_option("--iters", bc.iters, "timed steps")->capture_default_str();
  bn->add_option("--json", bc.json, "also append the JSON lines to this file");

  CLI::App* ev = app.add_subcommand("eval", "evaluate a checkpoint: clean accuracy, attacks, local linearity");
  EvalOptions eo;
  ev->add_option("--checkpoint", eo.checkpoint, "model.safetensors written by llrtrain train")->required();
  ev->add_option("--data", eo.data, "'synthetic' or a CIFAR-10 binary folder")->capture_default_str();
  ev->add_option("--split", eo.split, "test, val or train")->capture_default_str();
  ev->add_option("--holdout", eo.holdout, "CIFAR-10: the training run's --holdout, for --split val")
      ->capture_default_str();
  ev->add_option("--n", eo.n, "evaluate the first N images (0: all)")->capture_default_str();
  ev->add_option("--batch", eo.batch, "batch size")->capture_default_str();
  ev->add_option("--device", eo.device, "auto, cuda or cpu")->capture_default_str();
  ev->add_option("--json", eo.json, "result file (default: eval.json beside the checkpoint)");
  ev->add_option("--seed", eo.seed, "attack seed (and the synthetic data seed of the training run)")
      ->capture_default_str();
  ev->add_option("--eps", eo.eps, "l_inf radius of the attacks and of gamma")->capture_default_str();
  ev->add_option("--attacks", eo.attacks,
                 "comma-separated: pgd-ce:STEPSxRESTARTS, pgd-margin:STEPS, mt:STEPS, apgd-ce[:STEPS], apgd-t[:STEPS]");
  ev->add_option("--gamma-steps", eo.gamma_steps, "Adam steps of the gamma search (0: no gamma)")->capture_default_str();
  ev->add_option("--gamma-restarts", eo.gamma_restarts, "random restarts of the gamma search")->capture_default_str();
  ev->add_option("--dump-logits", eo.dump,
                 "also write the first --n images (default 64) and their logits as safetensors, for "
                 "tools/reference/compare_logits.py");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (version || app.get_subcommands().empty()) {
      print_version();
      if (!version) std::printf("\n%s", app.help().c_str());
      return 0;
    }
    init_gpu();
    if (sc->parsed()) {
      print_version();
      return selfcheck(sc_seed);
    }
    if (tr->parsed()) {
      // On --resume the run's own config.json rules; only an explicit --epochs extends it.
      if (!resume.empty() && tr->count("--epochs") == 0) cfg.epochs = 0;
      cfg.decay_at = parse_list(decay_at);
      oc.eps = parse_number(eps, "--eps");
      oc.pgd_alpha = parse_number(pgd_alpha, "--pgd-alpha");
      if (attack_bn != "eval" && attack_bn != "train") throw Error("--attack-bn must be eval or train");
      oc.attack_bn = attack_bn == "train" ? nets::BnMode::train : nets::BnMode::eval;
      if (llr_search != "adam" && llr_search != "sign") throw Error("--llr-search must be adam or sign");
      oc.llr_search = llr_search == "sign" ? PerturbationUpdate::sign : PerturbationUpdate::adam;
      if (llr_grad != "exact" && llr_grad != "fd") throw Error("--llr-grad must be exact or fd");
      oc.llr_grad = llr_grad == "fd" ? LlrGrad::fd : LlrGrad::exact;
      TrainSummary s = train(cfg, resume);
      if (!s.eval_split.empty())
        std::printf("final %s accuracy %.4f (%lld images) after %lld steps\n", s.eval_split.c_str(),
                    s.final_eval.accuracy, static_cast<long long>(s.final_eval.n), static_cast<long long>(s.steps));
      return 0;
    }
    if (bn->parsed()) {
      bc.methods.clear();
      if (!bench_method.empty()) {
        bc.methods.push_back(bench_method + (bench_steps > 0 ? "-" + std::to_string(bench_steps) : ""));
      } else {
        for (size_t at = 0; at <= bench_methods.size();) {
          size_t comma = bench_methods.find(',', at);
          if (comma == std::string::npos) comma = bench_methods.size();
          if (comma > at) bc.methods.push_back(bench_methods.substr(at, comma - at));
          at = comma + 1;
        }
      }
      run_bench(bc);
      return 0;
    }
    if (gc->parsed()) {
      if (gc_dtype_unused != "f64") throw Error("gradcheck runs in f64 (finite differences need it)");
      ObjectiveConfig oc2;
      oc2.method = ObjectiveConfig::parse_method(gc_objective);
      if (gc_grad != "exact" && gc_grad != "fd") throw Error("--llr-grad must be exact or fd");
      oc2.llr_grad = gc_grad == "fd" ? LlrGrad::fd : LlrGrad::exact;
      oc2.eps = parse_number(gc_eps, "--eps");
      oc2.pgd_steps = gc_steps;
      oc2.llr_steps = gc_steps;
      gco.act = nets::parse_act(gc_act);
      if (gc_tol < 0) gc_tol = oc2.llr_grad == LlrGrad::fd && oc2.method == Method::llr ? 1e-4 : 1e-6;
      ObjectiveCheckReport r = check_objective_gradient(oc2, gco);
      std::printf("gradcheck %s%s on %s (%s), f64, batch %lld of %lldx%lld images: objective %.10g\n",
                  gc_objective.c_str(), oc2.method == Method::llr ? (" (" + gc_grad + " gradient)").c_str() : "",
                  gco.model.c_str(), gc_act.c_str(), static_cast<long long>(gco.batch),
                  static_cast<long long>(gco.image), static_cast<long long>(gco.image), r.objective);
      std::printf("  %lld parameters in %lld tensors checked, %lld skipped at kinks; worst relative error %.3g (%s)\n",
                  static_cast<long long>(r.checked), static_cast<long long>(r.tensors),
                  static_cast<long long>(r.skipped_kinks), r.max_rel_error, r.worst.c_str());
      if (!gco.dump.empty()) std::printf("  wrote %s\n", gco.dump.c_str());
      bool ok = r.checked > 0 && r.max_rel_error <= gc_tol;
      std::printf("gradcheck %s (tolerance %.1g)\n", ok ? "passed" : "FAILED", gc_tol);
      return ok ? 0 : 1;
    }
    if (ev->parsed()) return run_eval(eo);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llrtrain: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
