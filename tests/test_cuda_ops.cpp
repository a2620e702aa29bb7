// Every op of tests/op_cases.cpp on the GPU against the CPU: forward, vjp (a reverse pass with a random cotangent)
// and jvp (eager tangents), in f32 (TF32 off, rtol 1e-5), f32 with TF32 (convolutions and linear layers, 1e-3: TF32
// keeps 10 mantissa bits, unit roundoff 2^-11) and bf16 (1e-2; per-channel and per-example values stay f32). The CPU
// reference runs in f64 on the same rounded inputs. New device allocations are NaN-poisoned, so an element a kernel
// forgets to write fails. Built with CUDA only; without a GPU each case prints that it is skipped. These are the small
// cases (doctest suite "cuda", also run under compute-sanitizer); test_cuda_large.cpp has the real sizes.
#include <cublas_v2.h>
#include <cudnn.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/graph.h"
#include "kernels/allocator.h"
#include "kernels/context.h"
#include "kernels/device_info.h"
#include "tests/cuda_test_util.h"
#include "tests/method_util.h"
#include "train/optimizer.h"
#include "train/robust/robust_kernels.h"
#include "train/step.h"
#include "train/training_kernels.h"

namespace llr::test {
namespace {

TEST_SUITE_BEGIN("cuda");

bool uses_gemm(const OpCase& c) { return c.name.rfind("conv2d", 0) == 0 || c.name.rfind("linear", 0) == 0; }

TEST_CASE("every op on the GPU matches the CPU: forward and vjp and jvp in f32 and TF32 and bf16") {
  if (!gpu_ready("CUDA op comparison")) return;
  std::printf("device: %s\n", cuda::device_summary().c_str());
  const Mode modes[] = {{"f32", DType::f32, false, 1e-5}, {"tf32", DType::f32, true, 1e-3},
                        {"bf16", DType::bf16, false, 1e-2}};
  int failures = 0, runs = 0;
  for (const Mode& m : modes)
    for (const OpCase& c : op_cases()) {
      if (m.tf32 && !uses_gemm(c)) continue;
      run_case(c, m, failures);
      ++runs;
    }
  cuda::context().set_tf32(true);
  std::printf("cuda vs cpu: %d of %d op/mode runs matched\n", runs - failures, runs);
  CHECK(failures == 0);
}

// The autograd's sum of a bf16 and an f32 cotangent: f32, exact to f32 rounding of the sum of the stored values.
TEST_CASE("add_widening of bf16 and f32 on the GPU is their f32 sum") {
  if (!gpu_ready("CUDA add_widening")) return;
  Generator gen(7);
  for (const Shape& shape : {Shape{3, 17, 19, 40}, Shape{3, 17, 19, 5}}) {  // 38,760 and 4,845 elements (a tail)
    Tensor a = gen.normal(shape, 0, 1, DType::f64, Layout::nhwc);
    Tensor b = gen.normal(shape, 0, 1e-3, DType::f64, Layout::nhwc);
    Tensor ref = backend::add(rounded(a, DType::bf16), rounded(b, DType::f32));
    Mode m{"f32", DType::f32, false, 1e-6};
    Tensor ab = backend::add_widening(upload(a, DType::bf16), upload(b, DType::f32));
    Tensor ba = backend::add_widening(upload(b, DType::f32), upload(a, DType::bf16));
    CHECK(ab.dtype() == DType::f32);
    CHECK(ba.dtype() == DType::f32);
    CHECK(check_close("add_widening", "bf16 + f32", m, ab, ref));
    CHECK(check_close("add_widening", "f32 + bf16", m, ba, ref));
  }
}

// The batch norm's vjps with an addend (the autograd's accumulated cotangent of x) on the GPU against the CPU in
// f64 on the same rounded values: bf16 data with a bf16 and with an f32 addend, and f32 data; with the statistics'
// and parameters' cotangents (the reduction kernel) and without them (an attack step's input gradient: the packed
// element-wise kernel), on a shape whose element count and channel count are not multiples of the 8-element pack;
// batch_stats_tangent's vjp with addends of both its outputs; the training-mode vjp (bn_act_train_backward).
TEST_CASE("batch-norm vjps with an addend on the GPU match the CPU") {
  if (!gpu_ready("CUDA batch-norm vjps with an addend")) return;
  for (const Shape& shape : {Shape{6, 9, 7, 24}, Shape{3, 5, 7, 13}}) {
    Generator gen(8);
    const int64_t C = shape.back();
    Tensor x = gen.normal(shape, 0.2, 1.3, DType::f64, Layout::nhwc);
    Tensor gy = gen.normal(shape, 0, 1, DType::f64, Layout::nhwc);
    Tensor addend = gen.normal(shape, 0, 1, DType::f64, Layout::nhwc);
    Tensor scale = gen.uniform({C}, 0.5, 1.5, DType::f64), shift = gen.normal({C}, 0, 1, DType::f64);
    struct Case {
      const char* name;
      DType data, addend;
      double tol;
    };
    for (const Case& c : {Case{"bf16 data, bf16 addend", DType::bf16, DType::bf16, 1e-2},
                          Case{"bf16 data, f32 addend", DType::bf16, DType::f32, 1e-2},
                          Case{"f32 data, f32 addend", DType::f32, DType::f32, 1e-5}}) {
      INFO("shape ", shape_str(shape), ", ", c.name);
      Tensor xr = rounded(x, c.data), gyr = rounded(gy, c.data), ar = rounded(addend, c.addend);
      DType sd = stat_dtype(c.data);
      Tensor sr = rounded(scale, sd), hr = rounded(shift, sd);
      auto [mean, var] = backend::batch_stats(xr);
      Tensor meanr = rounded(mean, sd), varr = rounded(var, sd);
      BnNormalizeGrads ref =
          backend::bn_act_backward(xr, meanr, varr, sr, hr, gyr, 1e-5, Act::softplus, true, true, ar);
      Tensor ref_stats = backend::batch_stats_backward(xr, meanr, ref.mean, ref.var, ar);
      BnNormalizeGrads ref_input =
          backend::bn_act_backward(xr, meanr, varr, sr, hr, gyr, 1e-5, Act::softplus, false, false, ar);
      Tensor xg = upload(x, c.data), gyg = upload(gy, c.data), ag = upload(addend, c.addend);
      Tensor mg = upload(meanr, sd), vg = upload(varr, sd), sg = upload(scale, sd), hg = upload(shift, sd);
      BnNormalizeGrads got = backend::bn_act_backward(xg, mg, vg, sg, hg, gyg, 1e-5, Act::softplus, true, true, ag);
      Tensor got_stats = backend::batch_stats_backward(xg, mg, upload(ref.mean, sd), upload(ref.var, sd), ag);
      BnNormalizeGrads got_input =
          backend::bn_act_backward(xg, mg, vg, sg, hg, gyg, 1e-5, Act::softplus, false, false, ag);
      CHECK(got.x.dtype() == sd);  // with need_stats, dx is in the statistics dtype
      CHECK(got_input.x.dtype() == (c.addend == c.data ? c.data : sd));
      Mode m{c.name, c.data, false, c.tol};
      CHECK(check_close("bn_act_backward with addend", c.name, m, got.x, ref.x));
      CHECK(check_close("bn_act_backward with addend, mean", c.name, m, got.mean, ref.mean));
      CHECK(check_close("batch_stats_backward with addend", c.name, m, got_stats, ref_stats));
      CHECK(check_close("bn_act_backward input only with addend", c.name, m, got_input.x, ref_input.x));
      // batch_stats_tangent's vjp with addends of dx and dxdot, each in its own dtype (the data's or the addend's).
      Tensor gmd = gen.normal({C}, 0, 1, DType::f64), gvd = gen.normal({C}, 0, 1, DType::f64);
      Tensor gmdr = rounded(gmd, sd), gvdr = rounded(gvd, sd);
      auto [mean_dot, var_dot] = backend::batch_stats_tangent(xr, meanr, gyr);
      Tensor mdr = rounded(mean_dot, sd);
      Tensor data_addend = rounded(addend, c.data);
      // The training-mode vjp in one reduction and one pass, with the statistics' own cotangents and the addend.
      BnNormalizeGrads want_train =
          backend::bn_act_train_backward(xr, meanr, varr, sr, hr, gyr, gmdr, gvdr, 1e-5, Act::softplus, true, ar);
      BnNormalizeGrads have_train = backend::bn_act_train_backward(xg, mg, vg, sg, hg, gyg, upload(gmdr, sd),
                                                                   upload(gvdr, sd), 1e-5, Act::softplus, true, ag);
      CHECK(have_train.x.dtype() == (c.addend == c.data ? c.data : sd));
      CHECK(check_close("bn_act_train_backward with addend", c.name, m, have_train.x, want_train.x));
      CHECK(check_close("bn_act_train_backward, scale", c.name, m, have_train.scale, want_train.scale));
      CHECK(check_close("bn_act_train_backward, shift", c.name, m, have_train.shift, want_train.shift));
      for (bool wide_on_x : {true, false}) {
        const Tensor& ax = wide_on_x ? ar : data_addend;
        const Tensor& ad = wide_on_x ? data_addend : ar;
        BatchStatsTangentGrads want = backend::batch_stats_tangent_backward(xr, meanr, gyr, mdr, gmdr, gvdr, ax, ad);
        BatchStatsTangentGrads have = backend::batch_stats_tangent_backward(
            xg, mg, gyg, upload(mdr, sd), upload(gmdr, sd), upload(gvdr, sd),
            upload(ax, wide_on_x ? c.addend : c.data), upload(ad, wide_on_x ? c.data : c.addend));
        CHECK(have.x.dtype() == (wide_on_x ? c.addend : c.data));
        CHECK(have.xdot.dtype() == (wide_on_x ? c.data : c.addend));
        const char* which = wide_on_x ? "the addend's dtype on dx" : "the addend's dtype on dxdot";
        CHECK(check_close("batch_stats_tangent_backward with addends, dx", which, m, have.x, want.x));
        CHECK(check_close("batch_stats_tangent_backward with addends, dxdot", which, m, have.xdot, want.xdot));
        CHECK(check_close("batch_stats_tangent_backward with addends, mean", which, m, have.mean, want.mean));
      }
    }
  }
}

TEST_CASE("a larger convolution (cuDNN algorithm search) matches the CPU in f32") {
  if (!gpu_ready("CUDA large convolution")) return;
  cuda::context().set_tf32(false);
  Generator gen(99);
  Tensor x = gen.normal({5, 17, 15, 24}, 0, 1, DType::f64, Layout::nhwc);
  Tensor w = gen.normal({40, 3, 3, 24}, 0, 0.2, DType::f64, Layout::krsc);
  Tensor y_ref = conv2d(rounded(x, DType::f32), rounded(w, DType::f32), {}, {2, 1});
  Tensor y_dev = conv2d(upload(x, DType::f32), upload(w, DType::f32), {}, {2, 1});
  Mode m{"f32", DType::f32, false, 1e-5};
  check_close("forward", "conv2d 5x17x15x24 -> 40, 3x3 stride 2", m, y_dev, y_ref);
  cuda::context().set_tf32(true);
}

TEST_CASE("caching allocator reuses blocks and counts bytes") {
  if (!gpu_ready("CUDA allocator")) return;
  cuda::CachingAllocator& a = cuda::allocator();
  cuda::context().synchronize();
  a.release_cache();
  cuda::AllocatorStats s0 = a.stats();
  {
    Tensor t = Tensor::empty({1000, 1000}, DType::f32, Layout::plain, Device::cuda);
    cuda::AllocatorStats s1 = a.stats();
    CHECK(s1.bytes_in_use == s0.bytes_in_use + cuda::CachingAllocator::size_class(4000000));
    CHECK(s1.peak_bytes_in_use >= s1.bytes_in_use);
  }
  cuda::AllocatorStats s2 = a.stats();
  CHECK(s2.bytes_in_use == s0.bytes_in_use);
  CHECK(s2.bytes_cached >= cuda::CachingAllocator::size_class(4000000));
  {
    Tensor t = Tensor::empty({999, 1001}, DType::f32, Layout::plain, Device::cuda);  // same size class
    CHECK(a.stats().reuses == s2.reuses + 1);
    CHECK(a.stats().cuda_malloc_calls == s2.cuda_malloc_calls);
  }
}

// Kept apart from the test above: tools/gpu_check.sh leaves it out under compute-sanitizer, which reports the
// deliberately failed 4 TiB cudaMalloc as an error.
TEST_CASE("caching allocator: a 4 TiB request fails as out-of-memory naming the request") {
  if (!gpu_ready("CUDA allocator out-of-memory")) return;
  CHECK_THROWS_WITH_AS(Tensor::empty({int64_t(1) << 40}, DType::f32, Layout::plain, Device::cuda),
                       doctest::Contains("CUDA out of memory: asked for"), Error);
  // The failure was not sticky: the device still works.
  CHECK(Tensor::full({4}, 2.0, DType::f32, Layout::plain, Device::cuda).to(Device::cpu).to_vector() ==
        std::vector<double>{2, 2, 2, 2});
}

// Needs no GPU: only the wording. A sticky error from an earlier faulting kernel must not read as a full GPU.
TEST_CASE("a cudaMalloc failure other than out-of-memory is named as such with the context called corrupted") {
  cuda::AllocatorStats held;
  held.bytes_in_use = size_t(3) << 30;
  std::string oom = cuda::malloc_failure_message(cudaErrorMemoryAllocation, size_t(1) << 30, held);
  CHECK(oom.find("CUDA out of memory: asked for 1024.0 MiB") != std::string::npos);
  CHECK(oom.find("3072.0 MiB in use") != std::string::npos);
  std::string fault = cuda::malloc_failure_message(cudaErrorIllegalAddress, 4096, held);
  CHECK(fault.find("cudaErrorIllegalAddress") != std::string::npos);
  CHECK(fault.find("corrupted") != std::string::npos);
  CHECK(fault.find("out of memory") == std::string::npos);
}

TEST_CASE("host-device copies round-trip exactly") {
  if (!gpu_ready("CUDA copies")) return;
  Generator gen(5);
  Tensor x = gen.normal({3, 7, 5}, 0, 1, DType::f32);
  Tensor back = x.to(Device::cuda).clone().to(Device::cpu);
  CHECK(back.to_vector() == x.to_vector());
  Tensor labels = Tensor::from_labels({1, 0, 3});
  CHECK(labels.to(Device::cuda).to(Device::cpu).to_vector() == labels.to_vector());
}

TEST_CASE("CUDA device query") {
  int runtime = 0, driver = 0, cublas_major = 0, cublas_minor = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  cublasGetProperty(MAJOR_VERSION, &cublas_major);
  cublasGetProperty(MINOR_VERSION, &cublas_minor);
  // A cuDNN older than the headers we were built with is the likeliest reason for a failing convolution there.
  std::printf("CUDA runtime %d, driver supports %d; cuDNN %zu (built with %d); cuBLAS %d.%d\n", runtime, driver,
              cudnnGetVersion(), CUDNN_VERSION, cublas_major, cublas_minor);
  int n = cuda::device_count();
  if (n == 0) {
    std::printf("SKIPPED CUDA device query: %s\n", cuda::device_summary().c_str());
    MESSAGE("skipped: no CUDA device");
    return;
  }
  std::string summary = cuda::device_summary();
  std::printf("CUDA device: %s\n", summary.c_str());
  CHECK(summary.find("sm_") != std::string::npos);
}

// The whole LLR objective (nominal pass, shared statistics, tangent pass, one reverse pass), GradAlign's (two tangent
// passes), ELLE's (a 3N-point batch) and the others with a fixed perturbation and the same random draws: the GPU in
// f32 (TF32 off) against the CPU in f64, on a small softplus WRN. (The CPU in f32 against f64 uses at most 8% of
// this tolerance for every method.)
TEST_CASE("objective gradients on the GPU match the CPU (fixed perturbation)") {
  if (!gpu_ready("CUDA objective gradients")) return;
  cuda::context().set_tf32(false);
  for (const char* method : kMethods) {
    auto cpu_model = nets::make_model("wrn-10-1", Act::softplus, 10, 21, Device::cpu, DType::f64);
    auto gpu_model = nets::make_model("wrn-10-1", Act::softplus, 10, 21, Device::cuda, DType::f32);
    // Same parameters: the f64 values rounded to f32 on both sides.
    auto& ce = cpu_model->registry().entries();
    auto& ge = gpu_model->registry().entries();
    for (size_t i = 0; i < ce.size(); ++i) {
      Tensor r = ce[i].tensor.to(DType::f32);
      copy_into(ge[i].tensor, r.to(Device::cuda));
      copy_into(ce[i].tensor, r.to(DType::f64));
    }
    Generator gen(22);
    Tensor x = rounded(gen.uniform({6, 16, 16, 3}, 0, 1, DType::f64, Layout::nhwc), DType::f32);
    Tensor delta = rounded(robust::perturbation_init(x, 8.0 / 255.0, 0.0, 3, 0), DType::f32);
    Tensor y = gen.randint({6}, 0, 10);
    std::unique_ptr<Method> objective = method_with(method);
    auto run = [&](nets::Model& m, const Tensor& xx, const Tensor& dd, const Tensor& yy, DType dt) {
      StepContext ctx;
      ctx.compute = dt;
      ctx.update_running = false;
      ctx.fixed_delta = &dd;
      ctx.eps = 8.0 / 255.0;  // the radius of GradAlign's and ELLE's random points
      TapeScope scope;
      ObjectiveResult r = objective->build(m, xx, yy, RobustSettings(), ctx);
      std::vector<Tensor> g = objective_gradients(r, m.parameters());
      g.insert(g.begin(), r.loss);
      return g;
    };
    std::vector<Tensor> ref = run(*cpu_model, x, delta, y, DType::f64);
    std::vector<Tensor> got =
        run(*gpu_model, x.to(DType::f32).to(Device::cuda), delta.to(DType::f32).to(Device::cuda), y.to(Device::cuda),
            DType::f32);
    Mode m{"f32", DType::f32, false, 1e-4};  // f32 through ~20 layers, a reverse pass and a tangent pass
    bool ok = true;
    for (size_t k = 0; k < ref.size(); ++k)
      ok &= check_close(k == 0 ? "loss" : "gradient", "objective", m, got[k], ref[k]);
    std::printf("cuda vs cpu objective %-8s %s\n", method, ok ? "ok" : "MISMATCH");
  }
  cuda::context().set_tf32(true);
}

// CUDA graphs (--cuda-graphs): PGD's and TRADES's attack steps and LLR's Adam search steps recorded once and replayed
// give the perturbation the eager steps give, in f32 and bf16. cuDNN may pick a non-deterministic algorithm (atomics), so the replayed result is
// held to the difference between two eager runs: bit for bit when those agree. The recording's pool is released.
TEST_CASE("recorded attack steps replayed as CUDA graphs equal eager ones") {
  if (!gpu_ready("CUDA graphs")) return;
  for (DType compute : {DType::f32, DType::bf16})
    for (const char* name : {"pgd", "trades", "llr"}) {
      INFO(name, " ", dtype_name(compute));
      auto model = nets::make_model("wrn-10-1", Act::relu, 10, 5, Device::cuda);
      Generator gen(11);
      Tensor x = gen.uniform({16, 16, 16, 3}, 0, 1, DType::f32, Layout::nhwc).to(Device::cuda);
      Tensor y = gen.randint({16}, 0, 10).to(Device::cuda);
      auto method = method_with(name);
      RobustSettings robust;
      method->set_steps(robust, 5);
      StepContext ctx;
      ctx.compute = compute;
      ctx.eps = 8.0 / 255;
      ctx.seed = 3;
      ctx.update_running = false;
      auto run = [&](bool graphs) {
        ObjectiveResult r = build_with_graphs(*method, *model, x, y, robust, ctx, graphs);
        return std::make_pair(r.delta.to(Device::cpu), host_value(r.loss));
      };
      auto differing = [](const Tensor& a, const Tensor& b) {
        int64_t n = 0;
        for (int64_t i = 0; i < a.numel(); ++i) n += a.at(i) != b.at(i);
        return n;
      };
      auto eager1 = run(false), eager2 = run(false);
      const graph::Stats before = graph::stats();
      auto replayed = run(true);
      CHECK(graph::stats().failures == before.failures);
      CHECK(graph::stats().replays == before.replays + 4);
      CHECK(cuda::allocator().live_pools() == 0);
      const int64_t spread = differing(eager1.first, eager2.first), got = differing(replayed.first, eager1.first);
      std::printf("cuda graphs %-6s %-4s: %lld of %lld perturbation values differ from eager (two eager runs: %lld)\n",
                  name, dtype_name(compute), static_cast<long long>(got), static_cast<long long>(x.numel()),
                  static_cast<long long>(spread));
      if (spread == 0) {
        CHECK(got == 0);
        // The loss too, where two eager runs agree on it (TRADES's last pass sums batch statistics with atomics).
        if (eager1.second == eager2.second) CHECK(replayed.second == eager1.second);
      } else {
        CHECK(got <= 2 * spread + x.numel() / 1000);
      }
    }
}

// Whole training steps (--cuda-graphs, train/step.h): every method's steps in f32 (natural, PGD and LLR also in bf16)
// recorded at the second step and replayed for the rest, with a new batch, learning rate and random start each step
// and the radius warming up over the first three (the replays read it on the device), against eager steps. The GPU's sums are not deterministic (atomics), so the replayed weights are held to the difference between
// two eager runs (bit for bit when those agree). The recording's pool is released with its runner.
TEST_CASE("training steps replayed as one CUDA graph each equal eager ones") {
  if (!gpu_ready("CUDA graphs")) return;
  for (DType compute : {DType::f32, DType::bf16})
    for (const char* name : kMethods) {
      if (compute == DType::bf16 && std::string(name) != "natural" && std::string(name) != "pgd" &&
          std::string(name) != "llr")
        continue;
      INFO(name, " ", dtype_name(compute));
      struct Run {
        std::vector<Tensor> weights;  // every registry tensor, on the host
        std::vector<double> losses;
        std::vector<bool> recorded;
        int64_t counter = 0;
      };
      auto run = [&](bool graphs) {
        Run out;
        auto model = nets::make_model("wrn-10-1", Act::relu, 10, 5, Device::cuda);
        Sgd sgd(*model, {0.9, true, 5e-4});
        auto method = method_with(name);
        RobustSettings robust;
        method->set_steps(robust, 3);
        const bool was = graph::enabled();
        graph::set_enabled(graphs);
        {
          TrainingSteps steps(*model, sgd, *method, robust);
          Generator gen(11);
          for (int s = 0; s < 6; ++s) {
            Tensor x = gen.uniform({16, 16, 16, 3}, 0, 1, DType::f32, Layout::nhwc).to(Device::cuda);
            Tensor y = gen.randint({16}, 0, 10).to(Device::cuda);
            StepContext ctx;
            ctx.compute = compute;
            ctx.seed = 3;
            ctx.step = static_cast<uint64_t>(s);
            ctx.eps = eps_at(8.0 / 255, 3, ctx.step);
            StepOutput o = steps.run(x, y, ctx, 0.05 / (1 + s));
            out.losses.push_back(host_value(o.loss));
            out.recorded.push_back(steps.last_step_recorded());
          }
        }
        graph::set_enabled(was);
        for (const nets::NamedTensor& e : model->registry().entries()) out.weights.push_back(e.tensor.to(Device::cpu));
        out.counter = *model->registry().counters().at(0).second;
        return out;
      };
      auto rel_l2 = [](const Run& a, const Run& b) {
        double num = 0, den = 0;
        for (size_t k = 0; k < a.weights.size(); ++k)
          for (int64_t i = 0; i < a.weights[k].numel(); ++i) {
            double d = a.weights[k].at(i) - b.weights[k].at(i);
            num += d * d;
            den += b.weights[k].at(i) * b.weights[k].at(i);
          }
        return std::sqrt(num / den);
      };
      Run eager1 = run(false), eager2 = run(false);
      const graph::Stats before = graph::stats();
      Run replayed = run(true);
      CHECK(graph::stats().failures == before.failures);
      CHECK(replayed.recorded == std::vector<bool>{false, true, true, true, true, true});
      CHECK(graph::stats().replays >= before.replays + 5);
      CHECK(cuda::allocator().live_pools() == 0);
      CHECK(replayed.counter == eager1.counter);
      const double spread = rel_l2(eager2, eager1), got = rel_l2(replayed, eager1);
      std::printf("cuda graphs whole step %-7s %-4s: weights after 6 steps differ from eager by %.3g relative L2 "
                  "(two eager runs: %.3g)\n",
                  name, dtype_name(compute), got, spread);
      if (spread == 0) {
        CHECK(got == 0);
        CHECK(replayed.losses == eager1.losses);
      } else {
        CHECK(got <= 10 * spread + 1e-6);
      }
    }
}

// The multi-tensor SGD update: 100 parameters of assorted sizes (empty, one element, odd, a million) take three
// launches of up to 48; every value against the CPU's update of the same f32 values (the GPU may contract g + wd p
// into one rounding), momentum buffers too, and the non-finite count. Every other parameter has a bf16 copy (a
// weight's compute copy), which must hold exactly what a cast of the updated parameter gives.
TEST_CASE("SGD on the GPU updates 100 parameters in chunked launches as the CPU does") {
  if (!gpu_ready("CUDA SGD")) return;
  Generator gen(31);
  std::vector<Tensor> pc, gc, mc, pg, gg, mg, cc(100), cg;
  std::vector<double> wd;
  for (int k = 0; k < 100; ++k) {
    int64_t n = k == 0 ? 0 : k == 1 ? 1 : k == 50 ? (1 << 20) + 3 : 1 + (k * 7919) % 5000;
    Tensor p = gen.normal({n}, 0, 1, DType::f32), g = gen.normal({n}, 0, 1, DType::f32),
           m = gen.normal({n}, 0, 1, DType::f32);
    if (k == 70) g.set(0, NAN);
    pc.push_back(p.clone()), gc.push_back(g), mc.push_back(m.clone());
    pg.push_back(p.to(Device::cuda)), gg.push_back(g.to(Device::cuda)), mg.push_back(m.to(Device::cuda));
    cg.push_back(k % 2 ? Tensor::empty({n}, DType::bf16, Layout::plain, Device::cuda) : Tensor());
    wd.push_back(k % 3 == 0 ? 0.0 : 5e-4);
  }
  for (bool nesterov : {false, true}) {
    Tensor bad_c = Tensor::zeros({}, DType::f64, Layout::plain, Device::cpu);
    Tensor bad_g = Tensor::zeros({}, DType::f64, Layout::plain, Device::cuda);
    training::sgd_update(pc, gc, mc, cc, wd, 0.1, 0.9, nesterov, false, bad_c);
    training::sgd_update(pg, gg, mg, cg, wd, 0.1, 0.9, nesterov, false, bad_g);
    Mode m{"f32", DType::f32, false, 1e-5};
    bool ok = true;
    for (size_t k = 0; k < pc.size(); ++k) {
      if (k == 0 || k == 70) continue;  // empty; NaN at its first element (compared by the count below)
      ok &= check_close("sgd_update", "parameter", m, pg[k], pc[k]);
      ok &= check_close("sgd_update", "momentum", m, mg[k], mc[k]);
      if (cg[k].defined()) {
        Tensor copy = cg[k].to(DType::f32).to(Device::cpu), cast = pg[k].to(DType::bf16).to(DType::f32).to(Device::cpu);
        ok &= compare(copy, cast, 0, 0).max_violation == 0;
      }
    }
    CHECK(ok);
    CHECK(bad_c.item() == 1);
    CHECK(bad_g.to(Device::cpu).item() == 1);
  }
}

// FAB's block-per-example step and bookkeeping and Square's start, queries and acceptance: the GPU against the CPU
// on the same inputs (f64 to rounding; f32 within a few ulps, since block reductions sum in another order and the
// projection's bisection may end one float apart).
TEST_CASE("FAB's and Square's kernels on the GPU match the CPU") {
  if (!gpu_ready("CUDA FAB and Square kernels")) return;
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(std::string(dtype_name(dt)));
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    auto gpu = [](const Tensor& t) { return t.to(Device::cuda); };
    auto same = [&](const char* what, const Tensor& got, const Tensor& ref) {
      Comparison c = compare(got.to(Device::cpu), ref, tol, tol);
      INFO(std::string(what), ": ", c.worst);
      CHECK(c.max_violation <= 1);
    };
    Generator gen(41);
    Tensor x0 = gen.uniform({5, 8, 8, 3}, 0, 1, dt, Layout::nhwc);
    Tensor w = gen.normal({5, 8, 8, 3}, 0, 1, dt, Layout::nhwc);
    Tensor delta = gen.uniform({5, 8, 8, 3}, -0.05, 0.05, dt, Layout::nhwc);
    for (int64_t i = 0; i < delta.numel(); ++i)
      delta.set(i, std::min(1.0, std::max(0.0, x0.at(i) + delta.at(i))) - x0.at(i));
    Tensor f = Tensor::from_vector({0.3, -0.2, 0.0, 2.0, 500.0}, {5}, dt);
    Tensor cpu_delta = delta.clone(), gpu_delta = gpu(delta);
    robust::fab_step(cpu_delta, x0, w, f, 1.05, 0.1);
    robust::fab_step(gpu_delta, gpu(x0), gpu(w), gpu(f), 1.05, 0.1);
    same("fab_step", gpu_delta, cpu_delta);

    Tensor correct = Tensor::from_vector({0, 1, 0, 0, 1}, {5}, dt);
    Tensor best = Tensor::full(x0.shape(), 0.0, dt, Layout::nhwc);
    Tensor norm = Tensor::from_vector({INFINITY, INFINITY, 0.01, INFINITY, INFINITY}, {5}, dt);
    Tensor robust = Tensor::full({5}, 1.0, dt);
    Tensor g_delta = gpu(cpu_delta), g_best = gpu(best), g_norm = gpu(norm), g_robust = gpu(robust);
    robust::fab_track(cpu_delta, correct, best, norm, robust, 0.9, 8.0 / 255.0);
    robust::fab_track(g_delta, gpu(correct), g_best, g_norm, g_robust, 0.9, 8.0 / 255.0);
    same("fab_track delta", g_delta, cpu_delta);
    same("fab_track best delta", g_best, best);
    same("fab_track best norm", g_norm, norm);
    same("fab_track robust", g_robust, robust);

    Tensor ids = Tensor::from_labels({4, 0, 7, 2, 5});
    Tensor start = robust::square_start(x0, ids, 8, 8.0 / 255.0, 7, 0);
    same("square_start", robust::square_start(gpu(x0), gpu(ids), 8, 8.0 / 255.0, 7, 0), start);
    Tensor query = robust::square_proposal(start, x0, ids, 8, 3, 4, 8.0 / 255.0, 7, 0);
    same("square_proposal",
         robust::square_proposal(gpu(start), gpu(x0), gpu(ids), 8, 3, 4, 8.0 / 255.0, 7, 0), query);
    Tensor z = gen.normal({5, 10}, 0, 1, dt);
    Tensor labels = Tensor::from_labels({1, 3, 0, 9, 4});
    Tensor margin = Tensor::from_vector({INFINITY, -1.0, 0.5, 2.0, 0.1}, {5}, dt);
    Tensor still = Tensor::from_vector({1, 1, 0, 1, 1}, {5}, dt);
    Tensor g_margin = gpu(margin), g_still = gpu(still);
    Tensor accepted = robust::square_accept(z, labels, margin, still);
    same("square_accept", robust::square_accept(gpu(z), gpu(labels), g_margin, g_still), accepted);
    same("square_accept margin", g_margin, margin);
    same("square_accept robust", g_still, still);
  }
}

// The kernels of the fast methods on the GPU against the CPU on the same inputs, in f32 and f64: GradAlign's cosine
// and derivatives, ELLE's triplets and coefficients, the perturbation step that projects onto the box only
// (N-FGSM), and LLR's Adam step with its device step counter. Outputs are NaN-poisoned before the kernels run.
TEST_CASE("the fast methods' perturbation kernels on the GPU match the CPU") {
  if (!gpu_ready("CUDA fast-method kernels")) return;
  for (DType d : {DType::f32, DType::f64}) {
    Mode m{d == DType::f32 ? "f32" : "f64", d, false, d == DType::f32 ? 1e-5 : 1e-12};
    Generator gen(41);
    Shape s{5, 6, 6, 3};
    Tensor g1 = rounded(gen.normal(s, 0, 1, DType::f64, Layout::nhwc), d);
    Tensor g2 = rounded(gen.normal(s, 0, 1, DType::f64, Layout::nhwc), d);
    for (int64_t j = 0; j < 108; ++j) g1.set(4 * 108 + j, 0.0);  // a vanishing gradient: the guard
    GradientAlignment ref = robust::gradient_alignment(g1.to(d), g2.to(d), 1e-8);
    GradientAlignment got = robust::gradient_alignment(upload(g1, d), upload(g2, d), 1e-8);
    check_close("cos", "gradient_alignment", m, got.cos, host_f64(ref.cos));
    check_close("d cos / d g1", "gradient_alignment", m, got.d_cos_d_g1, host_f64(ref.d_cos_d_g1));
    check_close("d cos / d g2", "gradient_alignment", m, got.d_cos_d_g2, host_f64(ref.d_cos_d_g2));

    Tensor x = rounded(gen.uniform(s, 0, 1, DType::f64, Layout::nhwc), d);
    for (int64_t i = 0; i < 20; ++i) x.set(3 * i, i % 2 ? 1.0 : 0.0);
    Tensor y = gen.randint({5}, 0, 10);
    ElleTriplets tr = robust::elle_triplets(x.to(d), y, 8.0 / 255.0, 7, 11);
    ElleTriplets tg = robust::elle_triplets(upload(x, d), y.to(Device::cuda), 8.0 / 255.0, 7, 11);
    check_close("points", "elle_triplets", m, tg.points, host_f64(tr.points));
    check_close("alpha", "elle_triplets", m, tg.alpha, host_f64(tr.alpha));
    Tensor labels = tg.labels.to(Device::cpu);
    for (int64_t k = 0; k < 15; ++k) CHECK(labels.data<int32_t>()[k] == tr.labels.data<int32_t>()[k]);

    Tensor losses = rounded(gen.uniform({15}, 0.5, 3, DType::f64), d);
    ElleCoefficients cr = robust::elle_coefficients(losses.to(d), tr.alpha, 1000.0);
    ElleCoefficients cg = robust::elle_coefficients(upload(losses, d), tg.alpha, 1000.0);
    check_close("residual", "elle_coefficients", m, cg.residual, host_f64(cr.residual));
    check_close("loss weights", "elle_coefficients", m, cg.loss_weight, host_f64(cr.loss_weight));

    PerturbationParams p;
    p.step_size = 0.03;
    p.eps = 8.0 / 255.0;
    p.projection = Projection::box;
    Tensor start = robust::perturbation_init(x.to(d), p.eps.times(2), 0.0, 5, 0);
    Tensor delta_cpu = start.clone(), delta_gpu = start.to(Device::cuda), none, mm, vv, dots, steps;
    robust::perturbation_step(delta_cpu, x.to(d), g1.to(d), none, none, mm, vv, dots, steps, p);
    robust::perturbation_step(delta_gpu, upload(x, d), upload(g1, d), none, none, mm, vv, dots, steps, p);
    check_close("delta", "perturbation_step (box only)", m, delta_gpu, host_f64(delta_cpu));

    // The same start and step with the radius read on the device (a recorded training step's), which holds another
    // radius than the call's host value: the kernels must take the device's, as the CPU does.
    Tensor eps_gpu = Tensor::full({}, 6.0 / 255.0, DType::f64, Layout::plain, Device::cuda);
    Tensor eps_cpu = Tensor::full({}, 6.0 / 255.0, DType::f64);
    auto start_and_step = [&](const Tensor& device_eps, const Tensor& xs, const Tensor& gs) {
      PerturbationParams q = p;
      q.eps = EpsLength(1.0, 8.0 / 255.0, device_eps);
      q.step_size = EpsLength(1.25, 8.0 / 255.0, device_eps);
      Tensor delta = robust::perturbation_init(xs, q.eps.times(2), 0.0, 5, 0), no, m1, v1, d1, s1;
      robust::perturbation_step(delta, xs, gs, no, no, m1, v1, d1, s1, q);
      return delta;
    };
    Tensor on_cpu = start_and_step(eps_cpu, x.to(d), g1.to(d));
    check_close("delta", "perturbation_init and step (device radius)", m,
                start_and_step(eps_gpu, upload(x, d), upload(g1, d)), host_f64(on_cpu));
    CHECK(max_abs(on_cpu) > 0);

    // The LLR search's fused step: Adam with its step count on the device (read for the bias correction and counted
    // on by the kernel launch after), the gap direction, projection onto the ball and the box, and d written in
    // place; three steps, so the bias correction changes from one to the next. The GPU's d and moments start from
    // NaN-poisoned tensors written only by the kernels.
    Tensor gx = rounded(gen.normal(s, 0, 1, DType::f64, Layout::nhwc), d);
    Tensor sign_g = Tensor::from_vector({1, -1, 1, -1, 1}, {5}, d);
    PerturbationParams pa;
    pa.update = PerturbationUpdate::adam;
    pa.step_size = 0.1;
    pa.eps = 8.0 / 255.0;
    Tensor da_cpu = start.clone(), da_gpu = start.to(Device::cuda);
    Tensor m_cpu = backend::full_like(da_cpu, 0.0), v_cpu = backend::full_like(da_cpu, 0.0);
    Tensor m_gpu = backend::full_like(da_gpu, 0.0), v_gpu = backend::full_like(da_gpu, 0.0);
    Tensor steps_cpu = Tensor::zeros({}, DType::f64, Layout::plain, Device::cpu);
    Tensor steps_gpu = Tensor::zeros({}, DType::f64, Layout::plain, Device::cuda);
    Tensor dots_cpu = Tensor::empty({5}, d, Layout::plain, Device::cpu);
    Tensor dots_gpu = Tensor::empty({5}, d, Layout::plain, Device::cuda);
    for (int t = 0; t < 3; ++t) {
      Tensor gw = rounded(gen.normal(s, 0, 1, DType::f64, Layout::nhwc), d);
      robust::perturbation_step(da_cpu, x.to(d), gw.to(d), gx.to(d), sign_g, m_cpu, v_cpu, dots_cpu, steps_cpu, pa);
      robust::perturbation_step(da_gpu, upload(x, d), upload(gw, d), upload(gx, d), sign_g.to(Device::cuda), m_gpu,
                                v_gpu, dots_gpu, steps_gpu, pa);
    }
    check_close("delta", "perturbation_step (Adam, gap)", m, da_gpu, host_f64(da_cpu));
    check_close("Adam m", "perturbation_step (Adam, gap)", m, m_gpu, host_f64(m_cpu));
    check_close("Adam v", "perturbation_step (Adam, gap)", m, v_gpu, host_f64(v_cpu));
    check_close("d", "perturbation_step (Adam, gap)", m, dots_gpu, host_f64(dots_cpu));
    CHECK(steps_cpu.item() == 3);
    CHECK(steps_gpu.to(Device::cpu).item() == 3);
  }
}

TEST_SUITE_END();

}  // namespace
}  // namespace llr::test
