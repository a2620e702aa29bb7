// Whole-network checks of the tangent machinery on conv-BN-activation nets in f64:
//  - D_v S by one tangent pass equals <v, grad_x S> by one reverse pass;
//  - the LLR-shaped objective (nominal loss, loss at x + delta with the nominal pass's batch statistics, and D_v S)
//    differentiated by ONE reverse pass over nominal, perturbed and tangent computations matches finite differences.
#include <cstdio>

#include "engine/gradcheck.h"
#include "nets/conv_bn_net.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

double inner(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.at(i) * b.at(i);
  return s;
}

TEST_CASE("directional derivative by the tangent pass equals the inner product of v and grad_x S (softplus and relu)") {
  for (Act act : {Act::softplus, Act::relu}) {
    Tape::current().clear();
    const uint64_t seed = 31;
    Generator gen(seed);
    nets::ConvBnNet net = nets::ConvBnNet::create(gen, 3, 5, 7, DType::f64, act);
    for (Tensor& p : net.parameters()) p.requires_grad_();
    Tensor x = gen.uniform({3, 6, 6, 3}, 0.0, 1.0, DType::f64, Layout::nhwc).requires_grad_();
    Tensor labels = gen.randint({3}, 0, 7);
    Tensor v = gen.normal({3, 6, 6, 3}, 0.0, 1.0, DType::f64, Layout::nhwc);

    Tensor S = sum(cross_entropy(net.forward(x), labels));
    Tensor gx = grad({S}, {Tensor::scalar(1.0, DType::f64)}, {x}, Retain::yes)[0];
    double reverse = inner(v, gx);
    double replay = tangent_forward({x}, {v}, {S})[0].item();

    Tensor xe = x.detach();
    xe.set_tangent(v);
    double eager = sum(cross_entropy(net.forward(xe), labels)).tangent().item();

    std::printf("tangent vs reverse (%s): D_v S = %.15g, <v, grad S> = %.15g, rel. diff %.2e\n",
                act == Act::relu ? "relu" : "softplus", replay, reverse,
                gradcheck::relative_error(replay, reverse));
    INFO("seed ", seed);
    CHECK(gradcheck::relative_error(replay, reverse) < 1e-12);
    CHECK(gradcheck::relative_error(eager, reverse) < 1e-12);
    CHECK(std::fabs(reverse) > 1e-3);  // a non-trivial value
    Tape::current().clear();
  }
}

// The LLR objective's shape with the signs fixed: sum_i a_i l_i(X) + b_i l_i(X + delta) + D_v S, where the
// perturbed pass normalises with the nominal pass's statistics (tensors on the tape).
struct TwoPassNet {
  nets::ConvBnNet net;
  Tensor forward(const Tensor& x, std::vector<BatchStats>* own, const std::vector<BatchStats>* shared) const {
    auto bn_act = [&](const Tensor& h, size_t k, const Tensor& g, const Tensor& b) {
      BatchStats s = shared ? (*shared)[k] : batch_stats(h);
      if (own) own->push_back(s);
      return activation(net.act, batch_norm(h, s.mean, s.var, g, b, net.eps));
    };
    Tensor h = bn_act(conv2d(x, net.w1, {}, {1, 1}), 0, net.g1, net.b1);
    h = bn_act(conv2d(h, net.w2, {}, {2, 1}), 1, net.g2, net.b2);
    return linear(global_avg_pool(h), net.fc_w, net.fc_b);
  }
};

TEST_CASE("one reverse pass over nominal and perturbed and tangent computations gives the exact gradient") {
  for (Act act : {Act::softplus, Act::relu}) {
    Tape::current().clear();
    const uint64_t seed = 47;
    Generator gen(seed);
    TwoPassNet model{nets::ConvBnNet::create(gen, 3, 4, 5, DType::f64, act)};
    Tensor x = gen.uniform({3, 6, 6, 3}, 0.0, 1.0, DType::f64, Layout::nhwc);
    Tensor delta = gen.uniform({3, 6, 6, 3}, -0.03, 0.03, DType::f64, Layout::nhwc);
    Tensor labels = gen.randint({3}, 0, 5);
    Tensor a = Tensor::from_vector({2.0 - 4.0, 2.0 + 4.0, 2.0 - 4.0}, {3}, DType::f64);  // w_nom - lambda s_i
    Tensor b = Tensor::from_vector({4.0, -4.0, 4.0}, {3}, DType::f64);                  // lambda s_i
    Tensor c = Tensor::from_vector({1.2 - 4.0, -1.2 + 4.0, 1.2 + 4.0}, {3}, DType::f64);  // mu sign(d) - lambda sign(g)
    Tensor v = backend::scale_per_example(delta, c);

    gradcheck::Function objective = [&](const std::vector<Tensor>& p) {
      TwoPassNet m = model;
      m.net.w1 = p[0], m.net.g1 = p[1], m.net.b1 = p[2], m.net.w2 = p[3], m.net.g2 = p[4], m.net.b2 = p[5],
      m.net.fc_w = p[6], m.net.fc_b = p[7];
      Tensor xn = x.detach();
      xn.set_tangent(v);
      std::vector<BatchStats> stats;
      Tensor l_nom = cross_entropy(m.forward(xn, &stats, nullptr), labels);
      Tensor dvs = sum(l_nom).tangent();
      Tensor l_pert = cross_entropy(m.forward(backend::add(x, delta), nullptr, &stats), labels);
      return add(add(sum(mul(l_nom, a)), sum(mul(l_pert, b))), dvs);
    };
    std::vector<Tensor> params = model.net.parameters();
    gradcheck::Options opt;
    opt.seed = seed;
    opt.max_elements_per_input = 40;
    gradcheck::Report r = gradcheck::check_vjp(objective, params, std::vector<bool>(params.size(), true), opt);
    std::printf("LLR-shaped objective (%s), one reverse pass vs finite differences: max rel. error %.2e over %lld "
                "parameters (%lld kinks skipped)\n",
                act == Act::relu ? "relu" : "softplus", r.max_rel_error, static_cast<long long>(r.checked),
                static_cast<long long>(r.skipped_kinks));
    INFO("seed ", seed, " worst: ", r.worst);
    CHECK(r.checked >= 120);  // every parameter tensor sampled (40 elements at most each)
    CHECK(r.max_rel_error < 1e-6);
  }
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
