// Micro-benchmark of the convolution layers of Wide-ResNet-28-10 (CIFAR, 32x32 inputs) through the engine's CUDA
// backend: forward, backward-data and backward-filter, in f32 (TF32) and bf16, timed with CUDA events after warm-up
// (median of --iters timings, each over --calls calls queued back to back, so the host's time to issue a call is
// hidden as it is in a training step), reported as ms and achieved TFLOP/s. Each timed result is also checked against
// the CPU in f64 on the values the GPU saw (the forward and backward-data on the first examples, the backward-filter on
// the first output channels over the whole batch), so a fast wrong algorithm cannot pass; a bf16 convolution that ran
// in f32 is flagged, and so is each direction that runs a graph-API engine (kernels/conv_engines.h) rather than a
// legacy cuDNN algorithm. --search picks the bf16 plan search (kernels/conv_plans.h); LLR_PRINT_PLANS=1 prints every
// candidate's time. Exits 1 on any mismatch.
//   llr_conv_bench [--batch 128] [--iters 20] [--calls 5] [--search legacy|both|engines] [--json FILE]
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/rng.h"
#include "kernels/context.h"
#include "kernels/conv_plans.h"
#include "kernels/cuda_check.h"
#include "kernels/device_info.h"

namespace {

using namespace llr;

// Convolutions run as a rewrite so far (either kind).
uint64_t rewrite_calls() {
  const cuda::ConvPlanStats s = cuda::conv_plan_stats();
  return s.product_calls + s.transposed_calls;
}

struct Layer {
  const char* name;
  int64_t hw, cin, cout, kernel, stride, count;  // count: how many such layers WRN-28-10 has
};

// WRN-28-10: a 3x3 stem, then three groups of four pre-activation blocks (widths 160, 320, 640); each group's first
// block changes width (and stride) and has a 1x1 projection shortcut.
const Layer kLayers[] = {
    {"stem 3x3 3->16", 32, 3, 16, 3, 1, 1},
    {"g1 3x3 16->160", 32, 16, 160, 3, 1, 1},
    {"g1 1x1 16->160", 32, 16, 160, 1, 1, 1},
    {"g1 3x3 160->160", 32, 160, 160, 3, 1, 7},
    {"g2 3x3 160->320 s2", 32, 160, 320, 3, 2, 1},
    {"g2 1x1 160->320 s2", 32, 160, 320, 1, 2, 1},
    {"g2 3x3 320->320", 16, 320, 320, 3, 1, 7},
    {"g3 3x3 320->640 s2", 16, 320, 640, 3, 2, 1},
    {"g3 1x1 320->640 s2", 16, 320, 640, 1, 2, 1},
    {"g3 3x3 640->640", 8, 640, 640, 3, 1, 7},
};

template <class F>
double median_ms(int iters, int calls, F&& f) {
  cudaStream_t s = cuda::context().stream();
  cudaEvent_t a, b;
  LLR_CUDA_CHECK(cudaEventCreate(&a));
  LLR_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();  // warm-up, includes the one-time algorithm search
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    LLR_CUDA_CHECK(cudaEventRecord(a, s));
    for (int c = 0; c < calls; ++c) f();
    LLR_CUDA_CHECK(cudaEventRecord(b, s));
    LLR_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    LLR_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t / float(calls));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Relative tolerance per precision, with atol = rtol max|ref| (the reasoning is in tests/test_cuda_large.cpp): TF32
// rounds or truncates both operands to 10 mantissa bits (a product off by up to 2 x 2^-10); bf16 inputs multiply
// exactly into f32 sums and the output is rounded to 8 bits (2^-8).
double tolerance(DType dt) { return dt == DType::bf16 ? 1e-2 : 2e-3; }

// The first `n` slices along axis 0 of a CPU tensor: examples of an NHWC tensor, output channels of a KRSC filter.
Tensor head(const Tensor& t, int64_t n) {
  Shape s = t.shape();
  s[0] = n;
  Tensor out = Tensor::empty(s, t.dtype(), t.layout());
  std::memcpy(out.raw_data(), t.raw_data(), static_cast<size_t>(out.numel()) * dtype_size(t.dtype()));
  return out;
}

// The first `k` channels (last axis) of a tensor on the CPU.
Tensor first_channels(const Tensor& t, int64_t k) {
  Shape s = t.shape();
  int64_t c = s.back(), rows = t.numel() / c;
  s.back() = k;
  Tensor out = Tensor::empty(s, t.dtype(), t.layout());
  const double* src = t.data<double>();
  double* dst = out.data<double>();
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * k, src + r * c, static_cast<size_t>(k) * sizeof(double));
  return out;
}

// The values a GPU tensor holds, as f64 on the CPU.
Tensor seen(const Tensor& t) {
  return (t.dtype() == DType::bf16 ? t.to(DType::f32) : t).to(Device::cpu).to(DType::f64);
}

struct Check {
  double max_error = 0;      // max |got - ref| / max |ref|
  double max_violation = 0;  // max |got - ref| / (atol + rtol |ref|); <= 1 passes
};

Check compare(const Tensor& got, const Tensor& ref, double rtol) {
  const double *g = got.data<double>(), *r = ref.data<double>();
  double scale = 0, diff = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, std::fabs(r[i]));
  if (scale == 0) scale = 1;
  Check c;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    double d = std::fabs(g[i] - r[i]);
    double v = d / (rtol * scale + rtol * std::fabs(r[i]));
    if (std::isnan(v)) v = INFINITY, d = INFINITY;
    diff = std::max(diff, d);
    c.max_violation = std::max(c.max_violation, v);
  }
  c.max_error = diff / scale;
  return c;
}

// A NaN or an infinity (an unwritten or overflowing result) is not a JSON number.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    int64_t batch = 128;
    int iters = 20, calls = 5;
    std::string json, search = "both";
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--batch" && i + 1 < argc) batch = std::atoll(argv[++i]);
      else if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
      else if (a == "--calls" && i + 1 < argc) calls = std::atoi(argv[++i]);
      else if (a == "--search" && i + 1 < argc) search = argv[++i];
      else if (a == "--json" && i + 1 < argc) json = argv[++i];
      else throw Error("llr_conv_bench: unknown option '" + a + "'");
    }
    if (batch < 1 || iters < 1 || calls < 1)
      throw Error("llr_conv_bench: --batch, --iters and --calls must be positive");
    if (search != "legacy" && search != "both" && search != "engines")
      throw Error("llr_conv_bench: --search takes legacy, both or engines, not '" + search + "'");
    cuda::init();
    cuda::set_conv_search(search == "legacy" ? cuda::ConvSearch::legacy
                          : search == "engines" ? cuda::ConvSearch::engines
                                                : cuda::ConvSearch::both);
    std::printf("device: %s, cuDNN %zu (built with %d), batch %lld, median of %d timings of %d calls, bf16 search %s\n",
                cuda::device_summary().c_str(), cudnnGetVersion(), CUDNN_VERSION, static_cast<long long>(batch), iters,
                calls, search.c_str());
    FILE* jf = json.empty() ? nullptr : std::fopen(json.c_str(), "w");
    if (!json.empty() && !jf) throw Error("llr_conv_bench: cannot write " + json);
    const int64_t ref_examples = std::min<int64_t>(2, batch), ref_channels = 4;
    std::printf("%-22s %-5s %9s %8s %9s %8s %9s %8s  %-26s %s\n", "layer", "prec", "fwd ms", "TFLOP/s", "bwd-d ms",
                "TFLOP/s", "bwd-f ms", "TFLOP/s", "max err fwd/bwd-d/bwd-f", "check");
    Generator gen(1);
    int mismatches = 0;
    for (DType dt : {DType::f32, DType::bf16}) {
      const char* prec = dt == DType::f32 ? "tf32" : "bf16";
      cuda::context().set_tf32(true);
      double total_ms = 0, total_flop = 0;
      for (const Layer& l : kLayers) {
        Conv2dGeometry g{static_cast<int>(l.stride), static_cast<int>(l.kernel / 2)};
        int64_t out = conv2d_output_size(l.hw, l.kernel, g);
        Tensor x = gen.normal({batch, l.hw, l.hw, l.cin}, 0, 1, DType::f32, Layout::nhwc).to(Device::cuda).to(dt);
        Tensor w = gen.normal({l.cout, l.kernel, l.kernel, l.cin}, 0, 0.05, DType::f32, Layout::krsc)
                       .to(Device::cuda)
                       .to(dt);
        Tensor gy = gen.normal({batch, out, out, l.cout}, 0, 1, DType::f32, Layout::nhwc).to(Device::cuda).to(dt);
        double flop = 2.0 * batch * out * out * l.cout * l.kernel * l.kernel * l.cin;
        uint64_t fallbacks = cuda::conv_plan_stats().bf16_fallback_calls;
        // Whether a direction's timed calls ran a graph-API engine: the engine calls before and after each.
        // And whether they ran as a rewrite (kernels/conv_plans.h: 1x1 products, a transposed forward).
        uint64_t e0 = cuda::conv_plan_stats().engine_calls, p0 = rewrite_calls();
        double f = median_ms(iters, calls, [&] { backend::conv2d_forward(x, w, g); });
        uint64_t e1 = cuda::conv_plan_stats().engine_calls, p1 = rewrite_calls();
        double d = median_ms(iters, calls, [&] { backend::conv2d_backward_data(gy, w, x.shape(), g); });
        uint64_t e2 = cuda::conv_plan_stats().engine_calls, p2 = rewrite_calls();
        double k = median_ms(iters, calls, [&] { backend::conv2d_backward_filter(x, gy, w.shape(), g); });
        uint64_t e3 = cuda::conv_plan_stats().engine_calls, p3 = rewrite_calls();
        // (A transposed forward's own backward-data may run an engine: that is the rewrite's, not the forward's.)
        const bool rewritten_f = p1 != p0, rewritten_d = p2 != p1, rewritten_k = p3 != p2;
        const bool engine_f = e1 != e0 && !rewritten_f, engine_d = e2 != e1 && !rewritten_d;
        const bool engine_k = e3 != e2 && !rewritten_k;
        bool fell_back = cuda::conv_plan_stats().bf16_fallback_calls != fallbacks;
        std::string engines;
        if (engine_f || engine_d || engine_k)
          engines = std::string(" (engine:") + (engine_f ? " fwd" : "") + (engine_d ? " bwd-d" : "") +
                    (engine_k ? " bwd-f" : "") + ")";
        if (rewritten_f || rewritten_d || rewritten_k)
          engines += std::string(" (rewritten:") + (rewritten_f ? " fwd" : "") + (rewritten_d ? " bwd-d" : "") +
                     (rewritten_k ? " bwd-f" : "") + ")";

        // The timed computations once more, against the CPU in f64 on the same (rounded) values.
        Tensor y = seen(backend::conv2d_forward(x, w, g));
        Tensor dx = seen(backend::conv2d_backward_data(gy, w, x.shape(), g));
        Tensor dw = seen(backend::conv2d_backward_filter(x, gy, w.shape(), g));
        Tensor xs = seen(x), ws = seen(w), gys = seen(gy);
        int64_t kc = std::min(ref_channels, l.cout);
        Shape w_sub = w.shape();
        w_sub[0] = kc;
        Shape x_sub = x.shape();
        x_sub[0] = ref_examples;
        double rtol = tolerance(dt);
        Check cf = compare(head(y, ref_examples), backend::conv2d_forward(head(xs, ref_examples), ws, g), rtol);
        Check cd = compare(head(dx, ref_examples),
                           backend::conv2d_backward_data(head(gys, ref_examples), ws, x_sub, g), rtol);
        Check ck = compare(head(dw, kc), backend::conv2d_backward_filter(xs, first_channels(gys, kc), w_sub, g), rtol);
        bool ok = cf.max_violation <= 1 && cd.max_violation <= 1 && ck.max_violation <= 1;
        mismatches += !ok;
        char errors[64];
        std::snprintf(errors, sizeof errors, "%.1e/%.1e/%.1e", cf.max_error, cd.max_error, ck.max_error);
        auto tf = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
        std::printf("%-22s %-5s %9.3f %8.1f %9.3f %8.1f %9.3f %8.1f  %-26s %s%s%s\n", l.name, prec, f, tf(f), d, tf(d),
                    k, tf(k), errors, ok ? "ok" : "MISMATCH", fell_back ? " (bf16 fell back to f32)" : "",
                    engines.c_str());
        std::fflush(stdout);
        if (jf) {
          std::fprintf(jf,
                       "{\"layer\": \"%s\", \"prec\": \"%s\", \"batch\": %lld, \"count\": %lld, \"fwd_ms\": %.4f, "
                       "\"bwd_data_ms\": %.4f, \"bwd_filter_ms\": %.4f, \"fwd_tflops\": %.2f, \"bwd_data_tflops\": "
                       "%.2f, \"bwd_filter_tflops\": %.2f, \"max_err_fwd\": %s, \"max_err_bwd_data\": %s, "
                       "\"max_err_bwd_filter\": %s, \"values_ok\": %s, \"bf16_fell_back\": %s, \"engine_fwd\": %s, "
                       "\"engine_bwd_data\": %s, \"engine_bwd_filter\": %s, \"rewritten_fwd\": %s, "
                       "\"rewritten_bwd_data\": %s, \"rewritten_bwd_filter\": %s, \"search\": \"%s\", \"calls\": %d}\n",
                       l.name, prec, static_cast<long long>(batch), static_cast<long long>(l.count), f, d, k, tf(f),
                       tf(d), tf(k), json_number(cf.max_error).c_str(), json_number(cd.max_error).c_str(),
                       json_number(ck.max_error).c_str(), ok ? "true" : "false", fell_back ? "true" : "false",
                       engine_f ? "true" : "false", engine_d ? "true" : "false", engine_k ? "true" : "false",
                       rewritten_f ? "true" : "false", rewritten_d ? "true" : "false", rewritten_k ? "true" : "false",
                       search.c_str(), calls);
          std::fflush(jf);
        }
        total_ms += l.count * (f + d + k);
        total_flop += l.count * 3 * flop;
      }
      std::printf("%-22s %-5s all WRN-28-10 convolutions, fwd+bwd: %.2f ms, %.1f TFLOP/s\n", "total", prec, total_ms,
                  total_flop / (total_ms * 1e-3) / 1e12);
    }
    cuda::ConvPlanStats plans = cuda::conv_plan_stats();
    std::printf("cuDNN plans: %llu searched, %llu bf16 convolutions computed in f32; bf16 plans with a graph-API "
                "engine %llu, with the legacy algorithm kept after timing %llu; rewritten: %llu as cuBLAS products, "
                "%llu forwards as the transpose's backward-data\n",
                static_cast<unsigned long long>(plans.searches),
                static_cast<unsigned long long>(plans.bf16_fallback_calls),
                static_cast<unsigned long long>(plans.engine_plans),
                static_cast<unsigned long long>(plans.legacy_plans),
                static_cast<unsigned long long>(plans.product_plans),
                static_cast<unsigned long long>(plans.transposed_plans));
    for (const std::string& f : plans.engine_failures) std::printf("graph API failed: %s\n", f.c_str());
    for (const std::string& f : plans.bf16_fallbacks) std::printf("bf16 fallback: %s\n", f.c_str());
    std::printf("values: %s (CPU f64 reference on %lld examples / %lld output channels; rtol tf32 %.0e, bf16 %.0e)\n",
                mismatches ? "MISMATCH" : "all layers ok", static_cast<long long>(ref_examples),
                static_cast<long long>(ref_channels), tolerance(DType::f32), tolerance(DType::bf16));
    if (jf) std::fclose(jf);
    return mismatches ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llr_conv_bench: error: %s\n", e.what());
    return 1;
  }
}
