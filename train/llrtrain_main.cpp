// llrtrain: command-line entry point.
//   llrtrain --version      version, build configuration and visible GPUs
//   llrtrain selfcheck      exact tangent pass vs reverse pass and a finite-difference check on a small net (CPU)
// Training, evaluation and benchmarking subcommands are added as the engine grows.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "engine/autograd.h"
#include "engine/gradcheck.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/version.h"
#include "nets/conv_bn_net.h"

#ifdef LLR_HAVE_CUDA
#include "kernels/device_info.h"
#endif

namespace {

void print_version() {
  std::printf("llrtrain %s\n", llr::kVersion);
#ifdef LLR_HAVE_CUDA
  std::printf("backends: cpu (Eigen), cuda (compiled)\n");
  std::printf("gpu: %s\n", llr::cuda::device_summary().c_str());
#else
  std::printf("backends: cpu (Eigen); built without CUDA\n");
#endif
}

// The engine's central identity on a small conv-BN-softplus net in f64: the directional derivative of
// S = sum_i CE(f(x_i), y_i) along v from one tangent pass equals <v, grad_x S> from one reverse pass, and the
// reverse pass through that tangent computation matches finite differences.
int selfcheck(uint64_t seed) {
  using namespace llr;
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

  // Gradient of D_v S with respect to every parameter (reverse over the tangent pass) vs finite differences.
  gradcheck::Function dvs = [&](const std::vector<Tensor>& p) {
    nets::ConvBnNet n = net;
    n.w1 = p[0], n.g1 = p[1], n.b1 = p[2], n.w2 = p[3], n.g2 = p[4], n.b2 = p[5], n.fc_w = p[6], n.fc_b = p[7];
    Tensor xc = x.detach();
    xc.set_tangent(v);
    Tensor s = sum(cross_entropy(n.forward(xc), labels));
    return s.tangent();
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

void usage() {
  std::printf(
      "usage: llrtrain <command> [options]\n"
      "  --version, version    print the version, build configuration and visible GPUs\n"
      "  selfcheck [--seed N]  check the engine's exact tangent pass on a small net (CPU, f64)\n");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) {
      usage();
      return 2;
    }
    std::string cmd = argv[1];
    if (cmd == "--version" || cmd == "version") {
      print_version();
      return 0;
    }
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      usage();
      return 0;
    }
    if (cmd == "selfcheck") {
      uint64_t seed = 1;
      for (int i = 2; i < argc; ++i) {
        if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
          char* end = nullptr;
          seed = std::strtoull(argv[++i], &end, 10);
          if (!end || *end) throw llr::Error(std::string("--seed expects a non-negative integer, got '") +
                                             argv[i] + "'");
        } else {
          throw llr::Error(std::string("selfcheck: unknown option '") + argv[i] + "'");
        }
      }
      print_version();
      return selfcheck(seed);
    }
    std::fprintf(stderr, "llrtrain: unknown command '%s' (try llrtrain --help)\n", cmd.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llrtrain: error: %s\n", e.what());
    return 1;
  }
}
