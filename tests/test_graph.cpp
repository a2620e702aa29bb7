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
#include "train/robust/robust_kernels.h"

namespace llr::test {
namespace {

// Every case here is in the quick subset (ctest -L fast).
TEST_SUITE_BEGIN("fast");

void* addr(uintptr_t a) { return reinterpret_cast<void*>(a); }

// Graphs on for the scope, restored after.
struct GraphsOn {
  bool was = graph::enabled();
  GraphsOn() { graph::set_enabled(true); }
  ~GraphsOn() { graph::set_enabled(was); }
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

  // Closed but live: new requests come from the shared lists again (empty); the pool's blocks stay reserved.
  CHECK(c.take(1024) == nullptr);
  CHECK(c.take(512) == nullptr);
  CHECK(c.cached_bytes() == 512 + 512 + 1024);

  c.release_pool(pool);
  CHECK(c.live_pools() == 0);
  CHECK(c.cached_bytes() == 512 + 512 + 1024);
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

TEST_SUITE_END();

}  // namespace
}  // namespace llr::test
