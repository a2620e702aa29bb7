// Tape semantics: accumulation for shared inputs, input-only gradients, no-grad mode, retain/release, leaf .grad,
// eager tangents vs replayed tangents.
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

struct TapeReset {
  TapeReset() { Tape::current().clear(); }
  ~TapeReset() { Tape::current().clear(); }
};

Tensor one(DType dtype = DType::f64) { return Tensor::scalar(1.0, dtype); }

TEST_CASE("a tensor used twice accumulates its gradient") {
  TapeReset reset;
  Generator gen(5);
  Tensor x = gen.normal({3, 4}, 0, 1, DType::f64).requires_grad_();
  Tensor s = sum(add(mul(x, x), scale(x, 3.0)));  // d/dx = 2x + 3
  Tensor g = grad({s}, {one()}, {x})[0];
  for (int64_t i = 0; i < x.numel(); ++i) CHECK(g.at(i) == doctest::Approx(2 * x.at(i) + 3).epsilon(1e-14));
}

// The autograd sums cotangents whose parts differ in dtype (on the GPU: a batch norm's f32 dx and bf16 parts) in
// the wider dtype, before any rounding.
TEST_CASE("add_widening sums in the wider dtype") {
  Generator gen(4);
  Tensor a = gen.normal({2, 3, 4, 5}, 0, 1, DType::f32, Layout::nhwc);
  Tensor b = gen.normal({2, 3, 4, 5}, 0, 1e-9, DType::f64, Layout::nhwc);
  for (const Tensor& s : {backend::add_widening(a, b), backend::add_widening(b, a)}) {
    REQUIRE(s.dtype() == DType::f64);
    for (int64_t i = 0; i < s.numel(); ++i) CHECK(s.at(i) == a.at(i) + b.at(i));
  }
  CHECK(backend::add_widening(a, a).dtype() == DType::f32);
}

TEST_CASE("an input-only gradient computes no filter gradient but a full one does") {
  TapeReset reset;
  Generator gen(6);
  Tensor x = gen.normal({2, 6, 6, 3}, 0, 1, DType::f64, Layout::nhwc).requires_grad_();
  Tensor w1 = gen.normal({4, 3, 3, 3}, 0, 0.3, DType::f64, Layout::krsc).requires_grad_();
  Tensor w2 = gen.normal({5, 3, 3, 4}, 0, 0.3, DType::f64, Layout::krsc).requires_grad_();
  Tensor fc = gen.normal({3, 5}, 0, 0.3, DType::f64).requires_grad_();
  Tensor labels = gen.randint({2}, 0, 3);
  Tensor logits = linear(global_avg_pool(softplus(conv2d(softplus(conv2d(x, w1, {}, {1, 1})), w2, {}, {2, 1}))), fc);
  Tensor loss = sum(cross_entropy(logits, labels));

  OpCounters before = op_counters();
  Tensor gx = grad({loss}, {one()}, {x}, Retain::yes)[0];
  OpCounters after = op_counters();
  CHECK(after.conv2d_backward_filter == before.conv2d_backward_filter);
  CHECK(after.conv2d_backward_data == before.conv2d_backward_data + 2);
  CHECK(after.matmul == before.matmul + 1);  // d logits -> d features only, no weight gradient of the linear layer
  CHECK(max_abs(gx) > 0);

  before = op_counters();
  std::vector<Tensor> g = grad({loss}, {one()}, {x, w1, w2, fc});
  after = op_counters();
  CHECK(after.conv2d_backward_filter == before.conv2d_backward_filter + 2);
  // The first conv's input gradient is requested again, so both backward-data calls run.
  CHECK(after.conv2d_backward_data == before.conv2d_backward_data + 2);
  Comparison c = compare(g[0], gx, 0, 1e-15);
  CHECK(c.max_violation <= 1.0);
}

TEST_CASE("a gradient with respect to the weights only skips the first layer's input gradient") {
  TapeReset reset;
  Generator gen(7);
  Tensor x = gen.normal({2, 5, 5, 3}, 0, 1, DType::f64, Layout::nhwc);  // data: no gradient
  Tensor w = gen.normal({4, 3, 3, 3}, 0, 0.3, DType::f64, Layout::krsc).requires_grad_();
  Tensor loss = sum(softplus(conv2d(x, w, {}, {1, 1})));
  OpCounters before = op_counters();
  grad({loss}, {one()}, {w});
  OpCounters after = op_counters();
  CHECK(after.conv2d_backward_data == before.conv2d_backward_data);
  CHECK(after.conv2d_backward_filter == before.conv2d_backward_filter + 1);
}

TEST_CASE("no-grad mode records nothing") {
  TapeReset reset;
  Generator gen(8);
  Tensor x = gen.normal({3, 4}, 0, 1, DType::f64).requires_grad_();
  size_t size = Tape::current().size();
  {
    NoGradGuard guard;
    Tensor y = sum(softplus(x));
    CHECK_FALSE(y.requires_grad());
    CHECK(Tape::current().size() == size);
    CHECK_THROWS_WITH_AS(grad({y}, {one()}, {x}), doctest::Contains("does not require grad"), Error);
  }
  Tensor y = sum(softplus(x));
  CHECK(y.requires_grad());
  CHECK(Tape::current().size() == size + 2);
}

TEST_CASE("nothing is recorded when no input requires grad") {
  TapeReset reset;
  Generator gen(9);
  Tensor x = gen.normal({3, 4}, 0, 1, DType::f64);
  Tensor y = sum(softplus(x));
  CHECK_FALSE(y.requires_grad());
  CHECK(Tape::current().size() == 0);
}

TEST_CASE("backward accumulates into leaves and without retain the graph is freed") {
  TapeReset reset;
  Generator gen(10);
  Tensor x = gen.normal({4}, 0, 1, DType::f64).requires_grad_();
  Tensor s = sum(mul(x, x));
  backward(s, Retain::yes);
  backward(s);  // second pass through the retained graph accumulates
  for (int64_t i = 0; i < 4; ++i) CHECK(x.grad().at(i) == doctest::Approx(4 * x.at(i)).epsilon(1e-14));
  CHECK_THROWS_WITH_AS(backward(s), doctest::Contains("freed graph"), Error);
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("a backward that reaches a released node through a new op throws instead of giving zeros") {
  TapeReset reset;
  Generator gen(11);
  Tensor x = gen.normal({4}, 0, 1, DType::f64).requires_grad_();
  Tensor h = softplus(x);
  Tensor s1 = sum(h);
  grad({s1}, {one()}, {x});  // releases softplus and sum
  Tensor s2 = sum(scale(h, 2.0));
  CHECK_THROWS_WITH_AS(grad({s2}, {one()}, {x}), doctest::Contains("freed graph"), Error);
}

TEST_CASE("clearing the tape frees every graph") {
  TapeReset reset;
  Generator gen(12);
  Tensor x = gen.normal({4}, 0, 1, DType::f64).requires_grad_();
  Tensor s = sum(softplus(x));
  Tape::current().clear();
  CHECK_THROWS_WITH_AS(grad({s}, {one()}, {x}), doctest::Contains("tape that recorded this tensor was cleared"),
                       Error);
}

TEST_CASE("inputs the output does not depend on get zero gradients") {
  TapeReset reset;
  Generator gen(13);
  Tensor x = gen.normal({3}, 0, 1, DType::f64).requires_grad_();
  Tensor z = gen.normal({3}, 0, 1, DType::f64).requires_grad_();
  Tensor s = sum(softplus(x));
  Tensor gz = grad({s}, {one()}, {z})[0];
  CHECK(max_abs(gz) == 0.0);
  CHECK(gz.shape() == z.shape());
}

TEST_CASE("gradients with respect to an intermediate tensor") {
  TapeReset reset;
  Generator gen(14);
  Tensor x = gen.normal({5}, 0, 1, DType::f64).requires_grad_();
  Tensor h = scale(x, 2.0);
  Tensor s = sum(mul(h, h));
  Tensor gh = grad({s}, {one()}, {h})[0];
  for (int64_t i = 0; i < 5; ++i) CHECK(gh.at(i) == doctest::Approx(2 * h.at(i)).epsilon(1e-14));
}

TEST_CASE("cast converts values and gradients and tangents between dtypes") {
  // Finite differences cannot see through f32 rounding, so check the rules directly.
  TapeReset reset;
  Generator gen(16);
  Tensor x = gen.normal({2, 3}, 0, 1, DType::f64).requires_grad_();
  Tensor xdot = gen.normal({2, 3}, 0, 1, DType::f64);
  Tensor xt = x.detach().requires_grad_();
  xt.set_tangent(xdot);
  Tensor y = cast(xt, DType::f32);
  REQUIRE(y.dtype() == DType::f32);
  REQUIRE(y.has_tangent());
  CHECK(y.tangent().dtype() == DType::f32);
  Tensor s = sum(mul(y, y));  // ds/dx = 2 y, in f64
  Tensor g = grad({s}, {Tensor::scalar(1.0, DType::f32)}, {xt})[0];
  CHECK(g.dtype() == DType::f64);
  for (int64_t i = 0; i < x.numel(); ++i) {
    CHECK(y.at(i) == static_cast<float>(x.at(i)));
    CHECK(y.tangent().at(i) == static_cast<float>(xdot.at(i)));
    CHECK(g.at(i) == doctest::Approx(2.0 * static_cast<float>(x.at(i))).epsilon(1e-6));
  }
}

TEST_CASE("eager tangents equal replayed tangents and tangent computations are recorded") {
  TapeReset reset;
  Generator gen(15);
  Tensor x = gen.normal({2, 5, 5, 3}, 0, 1, DType::f64, Layout::nhwc).requires_grad_();
  Tensor w = gen.normal({4, 3, 3, 3}, 0, 0.3, DType::f64, Layout::krsc).requires_grad_();
  Tensor v = gen.normal({2, 5, 5, 3}, 0, 1, DType::f64, Layout::nhwc);
  auto f = [&](const Tensor& in) {
    Tensor h = conv2d(in, w, {}, {1, 1});
    BatchStats st = batch_stats(h);
    return sum(softplus(batch_norm(h, st.mean, st.var, Tensor::full({4}, 1.0, DType::f64),
                                   Tensor::full({4}, 0.1, DType::f64), 1e-5)));
  };
  Tensor s = f(x);
  size_t recorded = Tape::current().size();
  Tensor replayed = tangent_forward({x}, {v}, {s})[0];
  CHECK(Tape::current().size() > recorded);  // the jvp ops went onto the tape
  bool saw_bn_tangent = false;
  for (const auto& node : Tape::current().nodes()) saw_bn_tangent = saw_bn_tangent || node->name == "bn_tangent";
  CHECK(saw_bn_tangent);
  CHECK(replayed.requires_grad());  // differentiable with respect to w through the tangent ops

  Tensor xe = x.detach();
  xe.set_tangent(v);
  Tensor se = f(xe);
  REQUIRE(se.has_tangent());
  CHECK(se.tangent().item() == doctest::Approx(replayed.item()).epsilon(1e-13));
}

// The reverse pass's order (Node::order) and the segmented tangent pass at their edges: a seed tangent that is
// itself recorded (after the pass it is replayed through), a seed on an intermediate tensor of the pass, and inputs
// that carry eager tangents. Each with one segment and with several against the values by hand.
TEST_CASE("tangent replays with recorded seeds and seeds on intermediate tensors and eager tangents give exact gradients") {
  TapeReset reset;
  Tensor x = Tensor::from_vector({1, 2, 3}, {3}, DType::f64).requires_grad_();
  Tensor w = Tensor::from_vector({0.5, -1, 2}, {3}, DType::f64).requires_grad_();
  for (int segments : {1, 2, 3}) {
    INFO(segments, " segments");
    TapeScope scope;
    // s = sum x^2 recorded first; the seed t = 3 w recorded after it: D_t s = sum 2 x_i 3 w_i, d/dw = 6 x.
    Tensor s = sum(mul(x, x));
    Tensor t = scale(w, 3.0);
    Tensor d = tangent_forward({x}, {t}, {s}, segments)[0];
    CHECK(d.item() == doctest::Approx(6 * (0.5 - 2 + 6)).epsilon(1e-14));
    Tensor gw = grad({d}, {Tensor::full({}, 1.0, DType::f64)}, {w})[0];
    CHECK(gw.to_vector() == std::vector<double>{6, 12, 18});
  }
  for (int segments : {1, 2, 3}) {
    INFO(segments, " segments");
    TapeScope scope;
    // A seed on a = 1 x, made inside the replayed pass: f = sum (a^2)^2, D_1 f = sum 4 a^3 = 144.
    Tensor a = scale(x, 1.0);
    Tensor f = sum(mul(mul(a, a), mul(a, a)));
    Tensor d = tangent_forward({a}, {Tensor::full({3}, 1.0, DType::f64)}, {f}, segments)[0];
    CHECK(d.item() == doctest::Approx(144).epsilon(1e-14));
  }
  for (int segments : {1, 2}) {
    INFO(segments, " segments");
    TapeScope scope;
    // Inputs with eager tangents: the segment node ignores them (no second-order tangent), the replay is unchanged.
    Tensor xe = x.detach().requires_grad_();
    xe.set_tangent(Tensor::from_vector({1, 0, 0}, {3}, DType::f64));
    Tensor s = sum(mul(xe, w));
    Tensor d = tangent_forward({xe}, {Tensor::from_vector({0, 1, 1}, {3}, DType::f64)}, {s}, segments)[0];
    CHECK(d.item() == doctest::Approx(-1 + 2).epsilon(1e-14));
    Tensor gw = grad({d}, {Tensor::full({}, 1.0, DType::f64)}, {w})[0];
    CHECK(gw.to_vector() == std::vector<double>{0, 1, 1});
  }
}

// llrtrain bench --profile's per-op table: calls and bytes (each argument and result tensor once) of the outermost
// kernel calls inside a step, nothing outside one.
TEST_CASE("the profiler counts each op's calls and the bytes of its tensors within a step") {
  TapeReset reset;
  Generator gen(3);
  Tensor a = gen.normal({1000}, 0, 1, DType::f32), b = gen.normal({1000}, 0, 1, DType::f32);
  Tensor x = gen.normal({2, 3, 3, 4}, 0, 1, DType::f64, Layout::nhwc);
  profile::Profiler p(Device::cpu);
  backend::add(a, b);  // before the step: not counted
  p.step_begin();
  backend::add(a, b);
  backend::add(a, b);
  BatchStats s = batch_stats(x);
  backend::bn_act_forward(x, s.mean, s.var, s.var, s.mean, 1e-5, Act::relu);
  p.step_end();
  p.collect();
  const profile::Profiler::Total* add = p.op("add");
  REQUIRE(add != nullptr);
  CHECK(add->calls == 2);
  CHECK(add->bytes == 2 * 3 * 1000 * 4.0);  // a, b and the sum, f32
  REQUIRE(p.op("batch_stats") != nullptr);
  CHECK(p.op("batch_stats")->bytes == (72 + 4 + 4) * 8.0);  // x, mean and var, f64
  REQUIRE(p.op("bn_act_forward") != nullptr);
  CHECK(p.op("bn_act_forward")->bytes == (72 + 4 * 4 + 72) * 8.0);  // x, four per-channel tensors, y
  CHECK(p.op("mul") == nullptr);
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
