// Every op of tests/op_cases.cpp on the GPU against the CPU: forward, vjp (a reverse pass with a random cotangent)
// and jvp (eager tangents), in f32 (TF32 off, rtol 1e-5), f32 with TF32 (convolutions and linear layers, 1e-3: TF32
// keeps 10 mantissa bits, unit roundoff 2^-11) and bf16 (1e-2; per-channel and per-example values stay f32). The CPU
// reference runs in f64 on the same rounded inputs. New device allocations are NaN-poisoned, so an element a kernel
// forgets to write fails. Built with CUDA only; without a GPU each case prints that it is skipped.
#include <cstdio>
#include <cstring>

#include "kernels/allocator.h"
#include "kernels/context.h"
#include "kernels/device_info.h"
#include "tests/op_cases.h"
#include "tests/test_util.h"

namespace llr::test {
namespace {

bool gpu_ready(const char* what) {
  if (!cuda::available()) {
    std::printf("SKIPPED %s: %s\n", what, cuda::device_summary().c_str());
    MESSAGE("skipped (no CUDA device): ", what);
    return false;
  }
  cuda::init();
  cuda::allocator().set_poison(true);
  return true;
}

double round_to_bf16(double v) {
  float f = static_cast<float>(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
  u &= 0xFFFF0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// The f64 values a tensor of dtype d holds after rounding t (f64) to d.
Tensor rounded(const Tensor& t, DType d) {
  if (t.dtype() == DType::i32) return t;
  Tensor r = t.to(DType::f32).to(DType::f64);
  if (d == DType::bf16)
    for (int64_t i = 0; i < r.numel(); ++i) r.set(i, round_to_bf16(r.at(i)));
  if (d == DType::f64) r = t.clone();
  return r;
}

Tensor upload(const Tensor& t, DType d) {
  if (t.dtype() == DType::i32) return t.to(Device::cuda);
  if (d == DType::f64) return t.to(Device::cuda);
  Tensor g = t.to(DType::f32).to(Device::cuda);
  return d == DType::bf16 ? g.to(DType::bf16) : g;
}

Tensor host_f64(const Tensor& t) {
  Tensor h = t.dtype() == DType::bf16 ? t.to(DType::f32) : t;
  return h.to(Device::cpu).to(DType::f64);
}

struct Mode {
  const char* name;
  DType data;
  bool tf32;
  double tol;
};

// Per-channel and per-example vectors (rank <= 1) stay in the statistics dtype.
DType input_dtype(const Tensor& t, DType data) { return t.rank() <= 1 ? stat_dtype(data) : data; }

bool check_close(const char* what, const std::string& name, const Mode& m, const Tensor& got, const Tensor& ref) {
  Tensor g = host_f64(got);
  double scale = max_abs(ref);
  if (scale == 0) scale = 1;
  Comparison c = compare(g, ref, m.tol * scale, m.tol);
  INFO(name, " [", m.name, "] ", what, ": worst ", c.worst, " (scale ", scale, ")");
  CHECK(c.max_violation <= 1.0);
  return c.max_violation <= 1.0;
}

void run_case(const OpCase& c, const Mode& m, int& failures) {
  cuda::context().set_tf32(m.tf32);
  const uint64_t seed = 4242;
  Generator gen(seed);
  std::vector<Tensor> in64 = c.make_inputs(gen);
  std::vector<DType> dt;
  for (const Tensor& t : in64) dt.push_back(input_dtype(t, m.data));
  auto fresh = [&](bool on_gpu) {
    std::vector<Tensor> v;
    for (size_t i = 0; i < in64.size(); ++i) {
      Tensor t = on_gpu ? upload(in64[i], dt[i]) : rounded(in64[i], dt[i]);
      if (c.differentiable[i]) t.requires_grad_();
      v.push_back(t);
    }
    return v;
  };
  bool ok = true;
  // Forward and vjp.
  {
    std::vector<Tensor> dev = fresh(true), ref = fresh(false);
    Tensor y_dev = c.fn(dev), y_ref = c.fn(ref);
    ok &= check_close("forward", c.name, m, y_dev, y_ref);
    Tensor u64 = gen.normal(y_ref.shape(), 0, 1, DType::f64, y_ref.layout());
    std::vector<Tensor> wrt_dev, wrt_ref;
    for (size_t i = 0; i < in64.size(); ++i)
      if (c.differentiable[i]) wrt_dev.push_back(dev[i]), wrt_ref.push_back(ref[i]);
    std::vector<Tensor> g_dev = grad({y_dev}, {upload(u64, y_dev.dtype())}, wrt_dev);
    std::vector<Tensor> g_ref = grad({y_ref}, {rounded(u64, y_dev.dtype())}, wrt_ref);
    for (size_t k = 0; k < g_dev.size(); ++k) {
      CHECK(g_dev[k].dtype() == wrt_dev[k].dtype());
      ok &= check_close("vjp", c.name, m, g_dev[k], g_ref[k]);
    }
    Tape::current().clear();
  }
  // jvp with eager tangents.
  if (!c.is_tangent_op) {
    NoGradGuard no_grad;
    std::vector<Tensor> dev = fresh(true), ref = fresh(false);
    for (size_t i = 0; i < in64.size(); ++i) {
      if (!c.differentiable[i]) continue;
      Tensor t64 = gen.normal(in64[i].shape(), 0, 1, DType::f64, in64[i].layout());
      dev[i].set_tangent(upload(t64, dt[i]));
      ref[i].set_tangent(rounded(t64, dt[i]));
    }
    Tensor y_dev = c.fn(dev), y_ref = c.fn(ref);
    REQUIRE(y_dev.has_tangent() == y_ref.has_tangent());
    if (y_ref.has_tangent()) ok &= check_close("jvp", c.name, m, y_dev.tangent(), y_ref.tangent());
  }
  std::printf("cuda vs cpu %-6s %-42s %s\n", m.name, c.name.c_str(), ok ? "ok" : "MISMATCH");
  if (!ok) ++failures;
}

bool uses_gemm(const OpCase& c) { return c.name.rfind("conv2d", 0) == 0 || c.name.rfind("linear", 0) == 0; }

TEST_CASE("every op on the GPU matches the CPU: forward, vjp and jvp in f32, TF32 and bf16") {
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

TEST_CASE("caching allocator reuses blocks, counts bytes and names the request on out-of-memory") {
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
  CHECK_THROWS_WITH_AS(Tensor::empty({int64_t(1) << 40}, DType::f32, Layout::plain, Device::cuda),
                       doctest::Contains("CUDA out of memory: asked for"), Error);
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

}  // namespace
}  // namespace llr::test

#include "tests/method_util.h"
#include "train/robust/robust_kernels.h"

namespace llr::test {
namespace {

// The whole LLR objective (nominal pass, shared statistics, tangent pass, one reverse pass) and PGD/TRADES with a
// fixed perturbation: the GPU in f32 (TF32 off) against the CPU in f64, on a small softplus WRN.
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
    for (size_t k = 0; k < ref.size(); ++k) ok &= check_close(k == 0 ? "loss" : "gradient", "objective", m, got[k], ref[k]);
    std::printf("cuda vs cpu objective %-8s %s\n", method, ok ? "ok" : "MISMATCH");
  }
  cuda::context().set_tf32(true);
}

// FAB's block-per-example step and bookkeeping and Square's start, queries and acceptance: the GPU against the CPU
// on the same inputs (f64 to rounding; f32 within a few ulps, since block reductions sum in another order and the
// projection's bisection may end one float apart).
TEST_CASE("FAB's and Square's kernels on the GPU match the CPU") {
  if (!gpu_ready("CUDA FAB and Square kernels")) return;
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(dtype_name(dt));
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    auto gpu = [](const Tensor& t) { return t.to(Device::cuda); };
    auto same = [&](const char* what, const Tensor& got, const Tensor& ref) {
      Comparison c = compare(got.to(Device::cpu), ref, tol, tol);
      INFO(what, ": ", c.worst);
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

}  // namespace
}  // namespace llr::test
