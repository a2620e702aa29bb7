// Micro-benchmark of the CPU backend's convolutions on the distinct layers of a CIFAR Wide-ResNet (3x3 stem, three
// groups of widths 16w, 32w, 64w, the second and third starting with stride 2 and a 1x1 projection shortcut): forward,
// backward-data and backward-filter in f32, median of --iters runs after one warm-up, as ms and GFLOP/s. Timing only
// (the convolutions' values are checked by the op tests against finite differences and an f64 reference).
//   llr_cpu_conv_bench [--width 1] [--batch 128] [--iters 5] [--algorithm auto|im2col|direct]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/cpu_common.h"
#include "engine/rng.h"

namespace {

using namespace llr;

struct Layer {
  int64_t hw, cin, cout, kernel, stride;
};

double median_ms(const std::function<void()>& f, int iters) {
  f();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t width = 1, batch = 128;
  int iters = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--width")) width = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--batch")) batch = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--iters")) iters = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--algorithm")) {
      std::string a = argv[i + 1];
      cpu::set_conv_algorithm(a == "im2col"   ? cpu::ConvAlgorithm::im2col
                              : a == "direct" ? cpu::ConvAlgorithm::direct
                                              : cpu::ConvAlgorithm::automatic);
    } else { std::fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
  }
  const int64_t w1 = 16 * width, w2 = 32 * width, w3 = 64 * width;
  std::vector<Layer> layers = {{32, 3, 16, 3, 1},  {32, 16, w1, 3, 1}, {32, w1, w1, 3, 1}, {32, w1, w2, 3, 2},
                               {32, w1, w2, 1, 2}, {16, w2, w2, 3, 1}, {16, w2, w3, 3, 2}, {16, w2, w3, 1, 2},
                               {8, w3, w3, 3, 1}};
  if (width != 1) layers.insert(layers.begin() + 2, Layer{32, 16, w1, 1, 1});
  Backend& be = backend_for(Device::cpu);
  Generator gen(1);
  std::printf("%-22s %9s %9s %9s %8s\n", "layer (hw cin->cout)", "fwd ms", "bwd-d ms", "bwd-f ms", "GFLOP/s");
  double total[3] = {0, 0, 0};
  for (const Layer& l : layers) {
    Conv2dGeometry g{static_cast<int>(l.stride), static_cast<int>(l.kernel / 2)};
    Tensor x = gen.uniform({batch, l.hw, l.hw, l.cin}, -1, 1, DType::f32, Layout::nhwc);
    Tensor w = gen.uniform({l.cout, l.kernel, l.kernel, l.cin}, -1, 1, DType::f32, Layout::krsc);
    Tensor y = be.conv2d_forward(x, w, g);
    Tensor gy = gen.uniform(y.shape(), -1, 1, DType::f32, Layout::nhwc);
    double t[3] = {median_ms([&] { be.conv2d_forward(x, w, g); }, iters),
                   median_ms([&] { be.conv2d_backward_data(gy, w, x.shape(), g); }, iters),
                   median_ms([&] { be.conv2d_backward_filter(x, gy, w.shape(), g); }, iters)};
    double flop = 2.0 * y.numel() * l.kernel * l.kernel * l.cin;
    char name[64];
    std::snprintf(name, sizeof name, "%lldx%lld %lld %lld->%lld s%lld", (long long)l.kernel, (long long)l.kernel,
                  (long long)l.hw, (long long)l.cin, (long long)l.cout, (long long)l.stride);
    std::printf("%-22s %9.2f %9.2f %9.2f %8.1f\n", name, t[0], t[1], t[2], 3 * flop / (t[0] + t[1] + t[2]) / 1e6);
    for (int i = 0; i < 3; ++i) total[i] += t[i];
  }
  std::printf("%-22s %9.2f %9.2f %9.2f\n", "total (one of each)", total[0], total[1], total[2]);
  return 0;
}
