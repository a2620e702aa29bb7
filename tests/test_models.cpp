// Model construction: parameter counts, output shapes, state-dict names, batch-norm modes.
#include "nets/model.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

TEST_CASE("parameter counts of the standard models") {
  auto wrn = nets::make_model("wrn-28-10", Act::relu, 10, 1, Device::cpu);
  CHECK(wrn->parameter_count() == 36479194);  // 36.5M
  auto rn18 = nets::make_model("preact-rn18", Act::relu, 10, 1, Device::cpu);
  CHECK(rn18->parameter_count() == 11172170);  // 11.2M, the same as tools/reference/models.py
  auto wrn28_8 = nets::make_model("wrn-28-8", Act::softplus, 10, 1, Device::cpu);
  CHECK(wrn28_8->parameter_count() == 23354842);
}

TEST_CASE("ImageNet bottleneck ResNets: parameter counts and torchvision names and a forward pass" * doctest::test_suite("slow")) {
  auto r50 = nets::make_model("resnet-50", Act::relu, 1000, 1, Device::cpu);
  CHECK(r50->parameter_count() == 25557032);  // torchvision resnet50
  auto r152 = nets::make_model("resnet-152", Act::relu, 1000, 1, Device::cpu);
  CHECK(r152->parameter_count() == 60192808);  // torchvision resnet152
  std::vector<std::string> names;
  for (const auto& e : r50->registry().entries()) names.push_back(e.name);
  CHECK(std::find(names.begin(), names.end(), "layer1.0.downsample.0.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "layer4.2.bn3.running_mean") != names.end());
  Generator gen(6);
  NoGradGuard no_grad;
  nets::ForwardContext ctx;
  Tensor logits = r50->forward(gen.uniform({1, 224, 224, 3}, 0, 1, DType::f32, Layout::nhwc), ctx);
  CHECK(logits.shape() == Shape{1, 1000});
  nets::ForwardContext ctx2;
  CHECK(r152->forward(gen.uniform({2, 64, 64, 3}, 0, 1, DType::f32, Layout::nhwc), ctx2).shape() == Shape{2, 1000});
}

TEST_CASE("state-dict names follow the PyTorch reference") {
  auto m = nets::make_model("wrn-16-2", Act::relu, 10, 1, Device::cpu);
  std::vector<std::string> names;
  for (const auto& e : m->registry().entries()) names.push_back(e.name);
  auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  CHECK(names.front() == "conv1.weight");
  CHECK(has("block1.layer.0.bn1.running_var"));
  CHECK(has("block1.layer.0.convShortcut.weight"));  // 16 -> 32 channels
  CHECK_FALSE(has("block1.layer.1.convShortcut.weight"));
  CHECK(has("block3.layer.1.conv2.weight"));
  CHECK(has("bn1.bias"));
  CHECK(names.back() == "fc.bias");
  CHECK(m->registry().counters().size() == 2 * 6 + 1);  // one num_batches_tracked per batch norm
}

TEST_CASE("forward shapes and batch-norm modes record and share and update statistics") {
  Generator gen(2);
  for (const char* name : {"wrn-10-1", "preact-rn18"}) {
    auto m = nets::make_model(name, Act::softplus, 10, 3, Device::cpu);
    Tensor x = gen.uniform({2, 32, 32, 3}, 0, 1, DType::f32, Layout::nhwc);
    std::vector<BatchStats> stats;
    nets::ForwardContext train;
    train.record = &stats;
    train.update_running = true;
    Tensor logits = m->forward(x, train);
    CHECK(logits.shape() == Shape{2, 10});
    CHECK(!stats.empty());
    CHECK(*m->registry().counters().front().second == 1);

    // Shared statistics of the same batch reproduce the training-mode logits exactly.
    nets::ForwardContext shared;
    shared.bn = nets::BnMode::shared;
    shared.use = &stats;
    Tensor again = m->forward(x, shared);
    CHECK(compare(again, logits, 1e-30, 0).max_violation <= 1.0);
    CHECK(shared.next == stats.size());

    nets::ForwardContext eval;
    eval.bn = nets::BnMode::eval;
    Tensor ev = m->forward(x, eval);
    CHECK(ev.shape() == Shape{2, 10});
    Tape::current().clear();
  }
}

TEST_CASE("unknown models and activations are refused") {
  CHECK_THROWS_WITH_AS(nets::make_model("vgg-16", Act::relu, 10, 1, Device::cpu), doctest::Contains("unknown model"),
                       Error);
  CHECK_THROWS_WITH_AS(nets::make_model("wrn-27-10", Act::relu, 10, 1, Device::cpu), doctest::Contains("6n + 4"),
                       Error);
  CHECK_THROWS_WITH_AS(nets::parse_act("tanh"), doctest::Contains("unknown activation"), Error);
}

TEST_CASE("weights are converted to the compute dtype once while they stand still and again after an update") {
  // f64 master values computed in f32 on the CPU take the path f32 weights computed in bf16 take on the GPU.
  Generator gen(4);
  Tensor w = gen.normal({6, 5}, 0, 1, DType::f64).requires_grad_();
  Tensor x = gen.normal({3, 5}, 0, 1, DType::f32);
  nets::ComputeCopy copy;
  auto casts_of = [&](Tensor* out) {
    uint64_t before = op_counters().casts;
    *out = copy.of(w, DType::f32);
    return int64_t(op_counters().casts - before);
  };
  Tensor first, second, third;
  CHECK(casts_of(&first) == 1);
  CHECK(casts_of(&second) == 0);
  CHECK(first.dtype() == DType::f32);
  CHECK(first.to_vector() == second.to_vector());
  // The gradient reaches the f64 master through the kept conversion as through a fresh one.
  Tape::current().clear();
  Tensor kept;
  CHECK(casts_of(&kept) == 0);
  Tensor loss = sum(linear(x, kept));
  Tensor g = grad({loss}, {Tensor::scalar(1.0, DType::f32)}, {w})[0];
  CHECK(g.dtype() == DType::f64);
  Tensor g_fresh = grad({sum(linear(x, cast(w, DType::f32)))}, {Tensor::scalar(1.0, DType::f32)}, {w})[0];
  CHECK(max_abs(g) > 0);
  CHECK(g.to_vector() == g_fresh.to_vector());
  Tape::current().clear();
  // A write to the values (an optimiser step, a checkpoint load) makes the next use convert again.
  w.set(0, 7.0);
  CHECK(casts_of(&third) == 1);
  CHECK(third.at(0) == 7.0);
  CHECK(casts_of(&third) == 0);
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
