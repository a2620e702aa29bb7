// llrtrain: command-line entry point. `llrtrain --help` lists the commands, `llrtrain COMMAND --help` their flags.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>


#include "engine/autograd.h"
#include "engine/gradcheck.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/version.h"
#include "nets/conv_bn_net.h"
#include "train/attacks/attack.h"
#include "train/bench.h"
#include "train/cli.h"
#include "train/config.h"
#include "train/evaluation.h"
#include "train/experiment.h"
#include "train/objective_check.h"
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"llrtrain: robust training with the Local Linearity Regularizer, on one engine"};
  app.require_subcommand(0, 1);
  bool version = false;
  app.add_flag("--version", version, "print the version, build configuration and visible GPUs");

  CLI::App* sc = app.add_subcommand("selfcheck", "check the engine's exact tangent pass on a small net (CPU, f64)");
  uint64_t sc_seed = 1;
  sc->add_option("--seed", sc_seed, "random seed")->capture_default_str();

  std::string methods_help;
  {
    MethodSet all;
    for (const std::string& n : all.names()) {
      const Method& m = all.get(n);
      methods_help += "\n  " + n + ": " + m.summary() + " [" + m.cost() + "]";
    }
  }
  CLI::App* tr = app.add_subcommand("train", "train a classifier with one of the methods:" + methods_help);
  TrainConfig cfg;
  CliBinder train_flags(tr);
  cfg.visit(train_flags);
  TrainOptions train_options;
  tr->add_option("--resume", train_options.resume, "continue the run in this folder from its last checkpoint");
  tr->add_flag("--overwrite", train_options.overwrite, "a fresh run may replace a non-empty run folder's contents");
  tr->add_option("--stop-after", train_options.stop_after, "stop after this step as if interrupted (testing resume)");

  CLI::App* gc = app.add_subcommand("gradcheck",
                                    "check a method's gradient (all parameters, perturbation fixed) against finite "
                                    "differences in f64");
  std::string gc_method = "llr", gc_act = "softplus";
  ObjectiveCheckOptions gco;
  RobustSettings gc_robust;
  MethodSet gc_methods;
  double gc_tol = -1;
  int gc_steps = 3;
  gc->add_option("--objective", gc_method, "the method to check")->capture_default_str();
  gc->add_option("--model", gco.model, "model name")->capture_default_str();
  gc->add_option("--act", gc_act, "relu or softplus")->capture_default_str();
  gc->add_option("--batch", gco.batch, "batch size")->capture_default_str();
  gc->add_option("--image", gco.image, "image height and width")->capture_default_str();
  gc->add_option("--samples", gco.samples_per_tensor, "parameters checked per tensor")->capture_default_str();
  gc->add_option("--steps", gc_steps, "attack / search steps that choose the fixed perturbation")->capture_default_str();
  gc->add_option("--seed", gco.seed, "random seed")->capture_default_str();
  gc->add_option("--tol", gc_tol,
                 "largest relative error that passes (default 1e-6; 1e-4 for --llr-grad fd, whose truncation error is "
                 "O(h^2))");
  gc->add_option("--dump", gco.dump,
                 "write parameters, batch, perturbation and gradient (safetensors) for "
                 "tools/reference/objective_reference.py");
  CliBinder gc_flags(gc);
  gc_robust.visit(gc_flags);
  gc_methods.visit(gc_flags);

  CLI::App* bn = app.add_subcommand("bench", "time training steps of each method on random CIFAR-shaped batches");
  BenchConfig bc;
  CliBinder bench_flags(bn);
  bc.visit(bench_flags);

  CLI::App* ev = app.add_subcommand("eval", "evaluate a checkpoint: clean accuracy, attacks, local linearity");
  EvalConfig eo;
  CliBinder eval_flags(ev);
  eo.visit(eval_flags);
  std::string attacks_help = "attacks, comma-separated:";
  for (const AttackInfo& a : attack_registry()) attacks_help += "\n  " + std::string(a.usage) + ": " + a.summary;
  ev->footer(attacks_help);

  CLI::App* ex = app.add_subcommand("experiment",
                                    "train every method of an experiment file at every time budget, evaluate each, "
                                    "and draw robust accuracy against training time");
  ExperimentOptions xo;
  ex->add_option("file", xo.file, "experiment file (JSON; tools/experiments/ has examples)")->required();
  ex->add_flag("--check", xo.check, "check every setting of the file and list its runs; train nothing");
  ex->add_option("--out", xo.out, "folder of the runs, results.jsonl and frontier.svg (default: beside the file)");
  ex->add_option("--deadline", xo.deadline,
                 "seconds within which to end: start a run only if its budget and the evaluation fit in what is left "
                 "(a rerun does the rest)")
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llrtrain: error: %s\n", e.what());
    return 2;
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
      train_options.given = train_flags.given();
      TrainSummary s = train(cfg, train_options);
      if (!s.eval_split.empty())
        std::printf("final %s accuracy %.4f (%lld images) after %lld steps\n", s.eval_split.c_str(),
                    s.final_eval.accuracy, static_cast<long long>(s.final_eval.n), static_cast<long long>(s.steps));
      return 0;
    }
    if (bn->parsed()) {
      run_bench(bc);
      return 0;
    }
    if (gc->parsed()) {
      validate(gc_robust);
      validate(gc_methods);
      Method& method = gc_methods.get(gc_method);
      method.set_steps(gc_robust, gc_steps);
      gco.act = nets::parse_act(gc_act);
      nlohmann::json settings;
      write_json(method, settings);
      bool fd = settings.contains("llr_grad") && settings["llr_grad"] == "fd";
      if (gc_tol < 0) gc_tol = fd ? 1e-4 : 1e-6;
      ObjectiveCheckReport r = check_objective_gradient(method, gc_robust, gco);
      std::printf("gradcheck %s%s on %s (%s), f64, batch %lld of %lldx%lld images: objective %.10g\n",
                  gc_method.c_str(), settings.contains("llr_grad") ? (" (" + settings["llr_grad"].get<std::string>() + " gradient)").c_str() : "",
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
    if (ex->parsed()) return run_experiment(xo) == 0 ? 0 : 1;
  } catch (const Interrupted& e) {
    std::fprintf(stderr, "llrtrain: %s\n", e.what());
    return 128 + e.signal();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llrtrain: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
