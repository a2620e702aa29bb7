// Recorded device work (engine/graph.h) on the CPU, where a replay makes the recorded kernel calls again with the
// arguments they had, as a CUDA graph does: the allocator's pool bookkeeping (engine/block_cache.h, with made-up
// addresses), the refusal of host reads and writes while recording, host values frozen at their recorded values, and
// PGD, TRADES and LLR training steps, whose attack or search steps (sign or Adam) replay one recording, equal to the
// eager ones bit for bit. The same comparison on a GPU, with real CUDA graphs, is in
// test_cuda_ops.cpp.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/block_cache.h"
#include "engine/backend.h"
#include "engine/graph.h"
#include "nets/model.h"
#include "tests/method_util.h"
#include "tests/test_util.h"
#include "train/methods/method.h"
#include "train/optimizer.h"
#include "train/robust/robust_kernels.h"
#include "train/safetensors.h"
#include "train/step.h"
#include "train/trainer.h"

namespace llr::test {
namespace {

// Every case here is in the quick subset (ctest -L fast).
TEST_SUITE_BEGIN("fast");

void* addr(uintptr_t a) { return reinterpret_cast<void*>(a); }

// Graphs on for the scope, and whole training steps recorded on the CPU too, restored after.
struct GraphsOn {
  bool was = graph::enabled(), cpu_steps = TrainingSteps::record_on_cpu();
  GraphsOn() {
    graph::set_enabled(true);
    TrainingSteps::set_record_on_cpu(true);
  }
  ~GraphsOn() {
    graph::set_enabled(was);
    TrainingSteps::set_record_on_cpu(cpu_steps);
  }
};

TEST_CASE("block cache: an open pool serves and keeps its own blocks and holds back outside blocks freed meanwhile") {
  BlockCache c;
  c.give_back(addr(0x1000), 512);  // an ordinary cached block
  CHECK(c.cached_bytes() == 512);

  int pool = c.open_pool();
  CHECK(c.pool_open());
  CHECK_THROWS_WITH_AS(c.open_pool(), doctest::Contains("already open"), Error);
  // While the pool is open a cached shared block joins the pool; with none cached the request gets fresh memory,
  // which the pool adopts.
  CHECK(c.take(512) == addr(0x1000));
  CHECK(c.take(512) == nullptr);
  c.adopt(addr(0x2000));
  c.give_back(addr(0x2000), 512);     // pool blocks freed during the recording: back to the pool
  c.give_back(addr(0x1000), 512);
  CHECK(c.take(512) == addr(0x1000)); // and reused by the recording
  CHECK(c.take(512) == addr(0x2000));
  c.give_back(addr(0x1000), 512);
  c.give_back(addr(0x2000), 512);
  c.give_back(addr(0x3000), 1024);    // an outside block freed during the recording: held back
  c.close_pool(pool);
  // The pool's free and held blocks are reserved for its replays, not cached for anyone.
  CHECK(c.reserved_bytes() == 512 + 512 + 1024);
  CHECK(c.shared_bytes() == 0);

  // Closed but live: new requests come from the shared lists again (empty); the pool's blocks stay reserved.
  CHECK(c.take(1024) == nullptr);
  CHECK(c.take(512) == nullptr);
  CHECK(c.cached_bytes() == 512 + 512 + 1024);

  c.release_pool(pool);
  CHECK(c.live_pools() == 0);
  CHECK(c.cached_bytes() == 512 + 512 + 1024);
  CHECK(c.reserved_bytes() == 0);
  CHECK(c.shared_bytes() == 512 + 512 + 1024);
  CHECK(c.take(1024) == addr(0x3000));
  CHECK(c.take(512) != nullptr);
  CHECK(c.take(512) != nullptr);
  CHECK(c.take(512) == nullptr);
  // Released: a block that was the pool's goes to the shared lists when freed.
  c.give_back(addr(0x2000), 512);
  int again = c.open_pool();
  CHECK(c.take(512) == addr(0x2000));
  c.close_pool(again);
  c.release_pool(again);
}

TEST_CASE("block cache: a pool block still in use when its pool is released returns to the shared lists when freed") {
  BlockCache c;
  int pool = c.open_pool();
  c.adopt(addr(0x4000));
  c.close_pool(pool);
  c.release_pool(pool);
  c.give_back(addr(0x4000), 2048);
  CHECK(c.take(2048) == addr(0x4000));
  // drain takes the shared lists only.
  c.give_back(addr(0x5000), 512);
  int p2 = c.open_pool();
  c.adopt(addr(0x6000));
  c.give_back(addr(0x6000), 512);
  c.close_pool(p2);
  BlockCache::FreeLists drained = c.drain();
  CHECK(drained[512] == std::vector<void*>{addr(0x5000)});
  CHECK(c.cached_bytes() == 512);  // the pool's block
  CHECK(c.reserved_bytes() == 512);
  CHECK(c.shared_bytes() == 0);
  c.release_pool(p2);
  CHECK(c.take(512) == addr(0x6000));
}

TEST_CASE("graph::repeat runs the body eagerly first and replays the recorded kernel calls and not the host code") {
  GraphsOn on;
  const graph::Stats before = graph::stats();
  // One kernel call per run on a tensor updated in place (acc = acc + 1, through a temporary), and a host counter.
  Tensor acc = Tensor::zeros({3}, DType::f32, Layout::plain, Device::cpu);
  Tensor one = Tensor::full({3}, 1.0, DType::f32, Layout::plain, Device::cpu);
  int host_runs = 0;
  graph::repeat(Device::cpu, 5, [&] {
    ++host_runs;
    copy_into(acc, backend::add(acc, one));
  });
  CHECK(acc.to_vector() == std::vector<double>{5, 5, 5});
  // The eager run and the recording ran the host code; the three replays only the kernels.
  CHECK(host_runs == 2);
  CHECK(graph::stats().recordings == before.recordings + 1);
  CHECK(graph::stats().replays == before.replays + 3);

  // Fewer than three runs are not worth a recording.
  graph::repeat(Device::cpu, 2, [&] { ++host_runs; });
  CHECK(host_runs == 4);
  CHECK(graph::stats().recordings == before.recordings + 1);

  // A host value passed to a kernel keeps the value it had when recorded, as in a CUDA graph: here the fill value.
  Tensor mark = Tensor::zeros({1}, DType::f32, Layout::plain, Device::cpu);
  int k = 0;
  graph::repeat(Device::cpu, 4, [&] {
    ++k;
    robust::update_max(mark, Tensor::full({1}, double(k), DType::f32, Layout::plain, Device::cpu));
  });
  CHECK(k == 2);
  CHECK(mark.item() == 2);  // 1 eagerly, 2 when recorded, then 2 again at each replay (4 if it ran eagerly)
}

TEST_CASE("graph::repeat switches graphs off with a warning when a recorded body reads or writes on the host") {
  Tensor t = Tensor::full({1}, 3.0, DType::f32, Layout::plain, Device::cpu);
  auto failing_body_runs = [&](const std::function<void()>& body) {
    GraphsOn on;
    const int64_t failures = graph::stats().failures;
    int runs = 0;
    graph::repeat(Device::cpu, 4, [&] {
      ++runs;
      body();
    });
    CHECK(graph::stats().failures == failures + 1);
    CHECK_FALSE(graph::enabled());
    CHECK_FALSE(graph::recording());
    return runs;  // the eager run, the recording that failed, then eager runs for the rest
  };
  CHECK(failing_body_runs([&] { (void)t.item(); }) == 4 + 1);
  CHECK(failing_body_runs([&] { (void)t.to(Device::cpu); }) == 4 + 1);
  CHECK(failing_body_runs([&] { t.set(0, 1.0); }) == 4 + 1);
  CHECK_THROWS_WITH_AS(graph::record(Device::cpu, [&] { (void)t.item(); }), doctest::Contains("recorded for replay"),
                       Error);
  CHECK_THROWS_WITH_AS(graph::record(Device::cpu, [&] { t.set(0, 1.0); }),
                       doctest::Contains("write tensor values from the host"), Error);

  graph::set_enabled(false);
  const int64_t rec = graph::stats().recordings;
  graph::repeat(Device::cpu, 4, [&] { (void)t.item(); });  // graphs off: every run eager, no recording
  CHECK(graph::stats().recordings == rec);
}

TEST_CASE("PGD and TRADES and LLR steps with recorded attack or search steps equal the eager ones bit for bit") {
  for (const char* name : {"pgd", "trades", "llr"}) {
    INFO(name);
    auto model = nets::make_model("wrn-10-1", Act::relu, 10, 5, Device::cpu);
    Generator gen(11);
    Tensor x = gen.uniform({4, 8, 8, 3}, 0, 1, DType::f32, Layout::nhwc);
    Tensor y = gen.randint({4}, 0, 10);
    auto method = method_with(name);
    RobustSettings robust;
    method->set_steps(robust, 4);
    StepContext ctx;
    ctx.eps = 8.0 / 255;
    ctx.seed = 3;
    ctx.step = 2;
    ctx.update_running = false;
    ObjectiveResult eager = build_with_graphs(*method, *model, x, y, robust, ctx, false);
    const graph::Stats before = graph::stats();
    ObjectiveResult replayed = build_with_graphs(*method, *model, x, y, robust, ctx, true);
    // 4 steps: one eager, one recorded (which runs on the CPU), two replays.
    CHECK(graph::stats().replays == before.replays + 2);
    if (std::string(name) == "llr") CHECK(eager.metrics.count("llr_gamma") == 1);
    REQUIRE(eager.delta.defined());
    CHECK(max_abs(eager.delta) > 0);
    CHECK(compare(replayed.delta, eager.delta, 0, 0).max_violation == 0);
    CHECK(replayed.loss.item() == eager.loss.item());
  }
}

// The run of `steps` training steps of `name` on a small Wide-ResNet (or what `make` makes), a new batch and learning
// rate each step and the radius warming up over the first `warmup` steps: through TrainingSteps (graphs on) or
// training_step (eager). `before_step` runs before each step.
struct StepRun {
  std::unique_ptr<nets::Model> model;
  std::unique_ptr<Sgd> sgd;
  std::vector<double> losses, metrics;
  std::vector<bool> recorded;  // per step: whether it was the recording or a replay of it
  std::vector<int64_t> casts;  // per step: conversions by the cast op
};

StepRun run_steps(const char* name, int steps, int warmup, bool graphs,
                  const std::function<std::unique_ptr<nets::Model>()>& make = nullptr,
                  const std::function<void(int, nets::Model&)>& before_step = nullptr) {
  StepRun run;
  run.model = make ? make() : nets::make_model("wrn-10-1", Act::relu, 10, 5, Device::cpu);
  run.sgd = std::make_unique<Sgd>(*run.model, SgdOptions{0.9, true, 5e-4});
  auto method = method_with(name);
  RobustSettings robust;
  method->set_steps(robust, 3);
  GraphsOn on;
  graph::set_enabled(graphs);
  TrainingSteps runner(*run.model, *run.sgd, *method, robust);
  Generator gen(11);
  for (int s = 0; s < steps; ++s) {
    Tensor x = gen.uniform({4, 8, 8, 3}, 0, 1, DType::f32, Layout::nhwc);
    Tensor y = gen.randint({4}, 0, 10);
    StepContext ctx;
    ctx.seed = 3;
    ctx.step = static_cast<uint64_t>(s);
    ctx.eps = eps_at(8.0 / 255, warmup, ctx.step);
    const double lr = 0.05 / (1 + s);
    if (before_step) before_step(s, *run.model);
    const uint64_t casts = op_counters().casts;
    StepOutput out = graphs ? runner.run(x, y, ctx, lr)
                            : training_step(*run.model, *run.sgd, *method, robust, x, y, ctx, lr);
    run.casts.push_back(static_cast<int64_t>(op_counters().casts - casts));
    run.recorded.push_back(graphs && runner.last_step_recorded());
    run.losses.push_back(out.loss.item());
    for (const auto& [k, v] : out.metrics) run.metrics.push_back(v.item());
    if (out.clean_correct.defined()) run.metrics.push_back(out.clean_correct.item());
    if (out.adv_correct.defined()) run.metrics.push_back(out.adv_correct.item());
  }
  return run;
}

TEST_CASE("whole training steps replayed from one recording equal the eager steps bit for bit for every method") {
  const int steps = 7, warmup = 2;
  for (const char* name : kMethods) {
    INFO(std::string(name));
    StepRun eager = run_steps(name, steps, warmup, false);
    const graph::Stats before = graph::stats();
    StepRun replayed = run_steps(name, steps, warmup, true);
    const graph::Stats after = graph::stats();
    // Step 0 eager, step 1 recorded (run by the recording on the CPU), steps 2-6 replayed, step 2 with a radius other
    // than the recording's (the warm-up's last step: the replay reads it on the device). Nothing failed.
    CHECK(after.failures == before.failures);
    CHECK(replayed.recorded == std::vector<bool>{false, true, true, true, true, true, true});
    CHECK(after.replays >= before.replays + 5);
    CHECK(replayed.losses == eager.losses);
    CHECK(replayed.metrics == eager.metrics);
    // Different batches and random starts each step: the losses differ from step to step.
    CHECK(eager.losses[5] != eager.losses[6]);
    const auto& a = replayed.model->registry().entries();
    const auto& b = eager.model->registry().entries();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].name);
      CHECK(compare(a[i].tensor, b[i].tensor, 0, 0).max_violation == 0);
    }
    for (size_t i = 0; i < eager.sgd->momentum_buffers().size(); ++i)
      CHECK(compare(replayed.sgd->momentum_buffers()[i], eager.sgd->momentum_buffers()[i], 0, 0).max_violation == 0);
    auto& ca = replayed.model->registry().counters();
    auto& cb = eager.model->registry().counters();
    REQUIRE(ca.size() == cb.size());
    for (size_t i = 0; i < ca.size(); ++i) CHECK(*ca[i].second == *cb[i].second);
    if (!ca.empty()) CHECK(*ca[0].second >= steps);
  }
}

// Natural training that reads its loss on the host, which a recorded step must not.
class ReadsOnHost final : public Method {
 public:
  const char* name() const override { return "reads-on-host"; }
  const char* summary() const override { return ""; }
  const char* cost() const override { return "3F"; }
  std::unique_ptr<Method> clone() const override { return std::make_unique<ReadsOnHost>(); }
  ObjectiveResult build(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                        const StepContext& ctx) const override {
    ObjectiveResult r = natural_->build(model, x, y, robust, ctx);
    (void)r.loss.item();
    return r;
  }

 private:
  std::unique_ptr<Method> natural_ = method_with("natural");
};

TEST_CASE("a training step whose recording fails runs eagerly once with graphs switched off") {
  auto run = [](bool graphs) {
    auto model = nets::make_model("wrn-10-1", Act::relu, 10, 5, Device::cpu);
    Sgd sgd(*model, {0.9, false, 5e-4});
    ReadsOnHost method;
    RobustSettings robust;
    GraphsOn on;
    graph::set_enabled(graphs);
    TrainingSteps runner(*model, sgd, method, robust);
    Generator gen(3);
    for (int s = 0; s < 4; ++s) {
      StepContext ctx;
      ctx.step = static_cast<uint64_t>(s);
      runner.run(gen.uniform({4, 8, 8, 3}, 0, 1, DType::f32, Layout::nhwc), gen.randint({4}, 0, 10), ctx, 0.05);
      CHECK_FALSE(runner.last_step_recorded());
    }
    CHECK_FALSE(graph::enabled());
    return model;
  };
  auto eager = run(false);
  const graph::Stats before = graph::stats();
  auto failed = run(true);
  CHECK(graph::stats().failures == before.failures + 1);
  // The failed recording ran the step's forward pass (on the CPU) up to the host read: the batch-norm averages it
  // updated were put back, so the eager rerun updates them once, and its counters count once.
  const auto& a = failed->registry().entries();
  const auto& b = eager->registry().entries();
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].name);
    CHECK(compare(a[i].tensor, b[i].tensor, 0, 0).max_violation == 0);
  }
  for (size_t i = 0; i < failed->registry().counters().size(); ++i)
    CHECK(*failed->registry().counters()[i].second == *eager->registry().counters()[i].second);
}

TEST_CASE("llrtrain train with recorded steps saves the checkpoint an eager run saves bit for bit") {
  // Two epochs of 3 steps: step 1 recorded, 2 replayed; the evaluation at the epoch's end drops the recording, step 3
  // records again and 4 and 5 replay.
  namespace fs = std::filesystem;
  fs::path dir = temp_dir("train_graphs");
  TrainConfig c;
  c.data.data = "synthetic";
  c.data.synthetic_train = 96;
  c.data.synthetic_val = 16;
  c.model = "wrn-10-1";
  c.method = "pgd";
  c.robust.attack_steps = 2;
  c.robust.eps_warmup = 0;
  c.batch = 32;
  c.epochs = 2;
  c.lr = 0.05;
  c.schedule = "cosine";
  c.device = "cpu";
  c.seed = 3;
  c.out = (dir / "eager").string();
  train(c);
  GraphsOn on;
  c.cuda_graphs = true;
  c.out = (dir / "graphs").string();
  const graph::Stats before = graph::stats();
  train(c);
  CHECK(graph::stats().recordings == before.recordings + 2);
  CHECK(graph::stats().replays == before.replays + 3);
  CHECK(graph::stats().failures == before.failures);
  for (const char* file : {"model.safetensors", "train_state-00000006.safetensors"}) {
    INFO(file);
    io::SafetensorsFile a = io::read_safetensors((dir / "eager" / file).string());
    io::SafetensorsFile b = io::read_safetensors((dir / "graphs" / file).string());
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (const auto& [name, t] : a.tensors) {
      INFO(name);
      CHECK(t.bytes == b.tensors.at(name).bytes);
    }
  }
  fs::remove_all(dir);
}

TEST_CASE("a recorded training step draws its random start from the step count on the device at each replay") {
  // The same start as a plain counter gives, and a new one when the device's step changes, without recording again.
  Generator gen(4);
  Tensor x = gen.uniform({3, 4, 4, 3}, 0, 1, DType::f32, Layout::nhwc);
  Tensor step = Tensor::zeros({}, DType::f64, Layout::plain, Device::cpu);
  const uint64_t numel = static_cast<uint64_t>(x.numel());
  RandomCounter c(numel, 4 * numel, step);
  Tensor start;
  GraphsOn on;
  std::unique_ptr<graph::Replay> replay =
      graph::record(Device::cpu, [&] { start = robust::perturbation_init(x, 0.1, 0.0, 9, c); }, graph::Span::lasting);
  CHECK(compare(start, robust::perturbation_init(x, 0.1, 0.0, 9, numel), 0, 0).max_violation == 0);
  for (uint64_t s : {5u, 6u}) {
    backend::fill(step, double(s));
    replay->launch();
    Tensor expected = robust::perturbation_init(x, 0.1, 0.0, 9, (4 * s + 1) * numel);
    CHECK(compare(start, expected, 0, 0).max_violation == 0);
  }
  CHECK(compare(robust::perturbation_init(x, 0.1, 0.0, 9, 6 * numel),
                robust::perturbation_init(x, 0.1, 0.0, 9, 5 * numel), 0, 0)
            .max_violation > 0);
  const RandomCounter bad(0, numel, Tensor::zeros({}, DType::f32, Layout::plain, Device::cpu));
  CHECK_THROWS_WITH_AS(robust::perturbation_init(x, 0.1, 0.0, 9, bad), doctest::Contains("one f64 element"), Error);
}

TEST_CASE("recorded perturbation kernels read their radius and step sizes on the device at each replay") {
  // A start of 2 eps and an FGSM step of 1.25 eps projected onto the eps-ball, recorded at one radius and replayed at
  // two others: each replay equals the eager kernels at its radius, as plain numbers give them.
  Generator gen(5);
  Tensor x = gen.uniform({3, 4, 4, 3}, 0, 1, DType::f32, Layout::nhwc);
  Tensor g = gen.normal({3, 4, 4, 3}, 0, 1, DType::f32, Layout::nhwc);
  Tensor eps = Tensor::zeros({}, DType::f64, Layout::plain, Device::cpu);
  backend::fill(eps, 4.0 / 255);
  auto fgsm = [&](const EpsLength& radius, Tensor* start) {
    *start = robust::perturbation_init(x, radius.times(2.0), 0.0, 9, 0);
    PerturbationParams p;
    p.step_size = EpsLength(1.25, radius.radius, radius.eps);
    p.eps = radius;
    Tensor none, m, v, dots, steps;
    robust::perturbation_step(*start, x, g, none, none, m, v, dots, steps, p);
  };
  Tensor recorded;
  GraphsOn on;
  std::unique_ptr<graph::Replay> replay = graph::record(
      Device::cpu, [&] { fgsm(EpsLength(1.0, 4.0 / 255, eps), &recorded); }, graph::Span::lasting);
  for (double e : {8.0 / 255, 6.0 / 255}) {
    backend::fill(eps, e);
    replay->launch();
    Tensor expected;
    fgsm(EpsLength(1.0, e, Tensor()), &expected);
    CHECK(compare(recorded, expected, 0, 0).max_violation == 0);
    CHECK(max_abs(recorded) <= e + 1e-7);
    CHECK(max_abs(recorded) > 0.99 * e);
  }
  const EpsLength bad(1.0, 0.1, Tensor::zeros({}, DType::f32, Layout::plain, Device::cpu));
  CHECK_THROWS_WITH_AS(robust::perturbation_init(x, bad, 0.0, 9, 0), doctest::Contains("one f64 element"), Error);
  CHECK_THROWS_WITH_AS(robust::perturbation_init(x, EpsLength(-0.1), 0.0, 9, 0), doctest::Contains("non-negative"),
                       Error);
}

TEST_CASE("a weight's compute copy is reused eagerly and in scoped recordings and made anew in a lasting one") {
  Generator gen(2);
  Tensor w = gen.uniform({5}, -1, 1, DType::f32);
  nets::ComputeCopy copy;
  Tensor a = copy.of(w, DType::f64), b = copy.of(w, DType::f64);
  CHECK(a.raw_data() == b.raw_data());  // converted once while the weight stands still
  GraphsOn on;
  Tensor in_scoped, in_lasting, again_in_lasting;
  auto scoped = graph::record(Device::cpu, [&] { in_scoped = copy.of(w, DType::f64); });
  CHECK(in_scoped.raw_data() == a.raw_data());  // its replays all come before the weight changes
  auto lasting = graph::record(
      Device::cpu,
      [&] {
        in_lasting = copy.of(w, DType::f64);
        again_in_lasting = copy.of(w, DType::f64);
      },
      graph::Span::lasting);
  CHECK(in_lasting.raw_data() != a.raw_data());              // an eager copy would be stale at a replay
  CHECK(again_in_lasting.raw_data() == in_lasting.raw_data());  // once per recording
  // The weight changes between replays, as the optimiser changes it between steps: each replay converts it anew.
  copy_into(w, gen.uniform({5}, -1, 1, DType::f32));
  lasting->launch();
  CHECK(compare(in_lasting, w.to(DType::f64), 0, 0).max_violation == 0);
  // Outside, the recording's copy is not reused.
  Tensor after = copy.of(w, DType::f64);
  CHECK(after.raw_data() != in_lasting.raw_data());
  CHECK(compare(after, w.to(DType::f64), 0, 0).max_violation == 0);
}

// Convolution weights kept as f64 masters and computed in f32, without batch norm (whose parameters the compute dtype
// does not convert): on the CPU, the path f32 weights computed in bf16 take on the GPU.
class F64Masters final : public nets::Model {
 public:
  F64Masters() : Model("f64-masters", Act::relu, 10) {
    Generator gen(6);
    nets::Init init{&gen, DType::f64, Device::cpu};
    a_ = nets::Conv2d(registry(), "a", 3, 8, 3, 1, 1, init);
    b_ = nets::Conv2d(registry(), "b", 8, 10, 1, 1, 0, init);
  }
  Tensor forward(const Tensor& x, nets::ForwardContext& ctx) override {
    return global_avg_pool(b_.forward(relu(a_.forward(x, ctx)), ctx));
  }

 private:
  nets::Conv2d a_, b_;
};

std::unique_ptr<nets::Model> f64_masters() { return std::make_unique<F64Masters>(); }

TEST_CASE("the optimiser writes the weights' compute copies so that only the first step converts them") {
  for (const char* name : {"natural", "pgd"}) {
    INFO(name);
    StepRun eager = run_steps(name, 4, 0, false, f64_masters);
    // The first step's forward passes convert each weight once (PGD: 1 + 3 attack passes share it); the optimiser then
    // writes the copies, rounded as the cast rounds.
    CHECK(eager.casts == std::vector<int64_t>{2, 0, 0, 0});
    for (const nets::NamedTensor& e : eager.model->registry().entries()) {
      INFO(e.name);
      REQUIRE(e.compute);
      CHECK(e.compute->maintained());
      CHECK(compare(e.compute->target(), e.tensor.to(DType::f32), 0, 0).max_violation == 0);
    }
    // A write from elsewhere (a checkpoint loaded into a weight) makes the next step convert that weight again, into
    // the same storage, which the optimiser goes on writing.
    const void* storage = nullptr;
    StepRun written = run_steps(name, 4, 0, false, f64_masters, [&](int s, nets::Model& m) {
      if (s != 2) return;
      const nets::NamedTensor& e = m.registry().entries()[0];
      storage = e.compute->target().raw_data();
      copy_into(e.tensor, e.tensor.to(DType::f64));
    });
    CHECK(written.casts == std::vector<int64_t>{2, 0, 1, 0});
    CHECK(written.losses == eager.losses);
    CHECK(written.model->registry().entries()[0].compute->target().raw_data() == storage);
  }
}

TEST_CASE("recorded training steps read the compute copies the optimiser writes and record again after other writes") {
  for (const char* name : {"natural", "pgd", "llr"}) {
    INFO(name);
    // Step 0 eager, step 1 recorded (reading the copies the optimiser wrote), 2-5 replayed; then a weight is written
    // from elsewhere before step 6, which runs eagerly (converting that weight afresh), and step 7 records again.
    auto write = [](int s, nets::Model& m) {
      if (s != 6) return;
      Tensor w = m.registry().entries()[1].tensor;
      copy_into(w, scale(w, 0.5).detach());
    };
    StepRun eager = run_steps(name, 8, 1, false, f64_masters, write);
    const graph::Stats before = graph::stats();
    StepRun replayed = run_steps(name, 8, 1, true, f64_masters, write);
    const graph::Stats after = graph::stats();
    CHECK(after.failures == before.failures);
    CHECK(replayed.recorded == std::vector<bool>{false, true, true, true, true, true, false, true});
    CHECK(replayed.casts == std::vector<int64_t>{2, 0, 0, 0, 0, 0, 1, 0});
    CHECK(replayed.losses == eager.losses);
    CHECK(replayed.metrics == eager.metrics);
    CHECK(eager.losses[6] != eager.losses[7]);
    const auto& a = replayed.model->registry().entries();
    const auto& b = eager.model->registry().entries();
    for (size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].name);
      CHECK(compare(a[i].tensor, b[i].tensor, 0, 0).max_violation == 0);
      CHECK(compare(a[i].compute->target(), a[i].tensor.to(DType::f32), 0, 0).max_violation == 0);
    }
  }
}

TEST_SUITE_END();

}  // namespace
}  // namespace llr::test
