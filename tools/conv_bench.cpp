// Micro-benchmark of the convolution layers of Wide-ResNet-28-10 (CIFAR, 32x32 inputs) through the engine's CUDA
// backend: forward, backward-data and backward-filter, in f32 (TF32) and bf16, timed with CUDA events after warm-up
// (median of --iters runs), reported as ms and achieved TFLOP/s.
//   llr_conv_bench [--batch 128] [--iters 20] [--json FILE]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/rng.h"
#include "kernels/context.h"
#include "kernels/cuda_check.h"
#include "kernels/device_info.h"

namespace {

using namespace llr;

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
double median_ms(int iters, F&& f) {
  cudaStream_t s = cuda::context().stream();
  cudaEvent_t a, b;
  LLR_CUDA_CHECK(cudaEventCreate(&a));
  LLR_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();  // warm-up, includes the one-time algorithm search
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    LLR_CUDA_CHECK(cudaEventRecord(a, s));
    f();
    LLR_CUDA_CHECK(cudaEventRecord(b, s));
    LLR_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    LLR_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  try {
    int64_t batch = 128;
    int iters = 20;
    std::string json;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--batch" && i + 1 < argc) batch = std::atoll(argv[++i]);
      else if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
      else if (a == "--json" && i + 1 < argc) json = argv[++i];
      else throw Error("llr_conv_bench: unknown option '" + a + "'");
    }
    if (batch < 1 || iters < 1) throw Error("llr_conv_bench: --batch and --iters must be positive");
    cuda::init();
    std::printf("device: %s, batch %lld, median of %d runs\n", cuda::device_summary().c_str(),
                static_cast<long long>(batch), iters);
    FILE* jf = json.empty() ? nullptr : std::fopen(json.c_str(), "w");
    std::printf("%-22s %-5s %9s %8s %9s %8s %9s %8s\n", "layer", "prec", "fwd ms", "TFLOP/s", "bwd-d ms", "TFLOP/s",
                "bwd-f ms", "TFLOP/s");
    Generator gen(1);
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
        double f = median_ms(iters, [&] { backend::conv2d_forward(x, w, g); });
        double d = median_ms(iters, [&] { backend::conv2d_backward_data(gy, w, x.shape(), g); });
        double k = median_ms(iters, [&] { backend::conv2d_backward_filter(x, gy, w.shape(), g); });
        auto tf = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
        std::printf("%-22s %-5s %9.3f %8.1f %9.3f %8.1f %9.3f %8.1f\n", l.name, prec, f, tf(f), d, tf(d), k, tf(k));
        if (jf)
          std::fprintf(jf,
                       "{\"layer\": \"%s\", \"prec\": \"%s\", \"batch\": %lld, \"count\": %lld, \"fwd_ms\": %.4f, "
                       "\"bwd_data_ms\": %.4f, \"bwd_filter_ms\": %.4f, \"fwd_tflops\": %.2f, \"bwd_data_tflops\": "
                       "%.2f, \"bwd_filter_tflops\": %.2f}\n",
                       l.name, prec, static_cast<long long>(batch), static_cast<long long>(l.count), f, d, k, tf(f),
                       tf(d), tf(k));
        total_ms += l.count * (f + d + k);
        total_flop += l.count * 3 * flop;
      }
      std::printf("%-22s %-5s all WRN-28-10 convolutions, fwd+bwd: %.2f ms, %.1f TFLOP/s\n", "total", prec, total_ms,
                  total_flop / (total_ms * 1e-3) / 1e12);
    }
    if (jf) std::fclose(jf);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llr_conv_bench: error: %s\n", e.what());
    return 1;
  }
}
