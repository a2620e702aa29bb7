// The CPU backend's two convolution algorithms (im2col + GEMM, and the direct kernel of engine/cpu/conv_direct.h)
// against a plain f64 loop over the definition, for the forward, backward-data and backward-filter, over shapes that
// reach every path of the direct kernel: channel counts that are not whole SIMD vectors, pixel tiles with a
// remainder, strides 1 and 2, paddings 0 to 3 (3 > kernel - 1: the backward-data crops gy), 1x1 to 5x5 kernels,
// one example and several split among threads.
#include <functional>
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine/backend.h"
#include "engine/conv_rewrites.h"
#include "engine/cpu/cpu_common.h"
#include "tests/test_util.h"

TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

struct ConvCase {
  int64_t n, hw, c, k, kernel;
  int stride, padding;
};

// y[n, p, q, k] = sum over r, s, c of x[n, p*stride - pad + r, q*stride - pad + s, c] * w[k, r, s, c].
template <class F>
void for_each_tap(const ConvCase& cc, int64_t out_hw, F&& f) {
  for (int64_t i = 0; i < cc.n; ++i)
    for (int64_t p = 0; p < out_hw; ++p)
      for (int64_t q = 0; q < out_hw; ++q)
        for (int64_t r = 0; r < cc.kernel; ++r)
          for (int64_t s = 0; s < cc.kernel; ++s) {
            const int64_t h = p * cc.stride - cc.padding + r, w = q * cc.stride - cc.padding + s;
            if (h < 0 || h >= cc.hw || w < 0 || w >= cc.hw) continue;
            for (int64_t k = 0; k < cc.k; ++k)
              for (int64_t c = 0; c < cc.c; ++c) f(i, p, q, k, r, s, c, h, w);
          }
}

struct AlgorithmScope {
  explicit AlgorithmScope(cpu::ConvAlgorithm a) { cpu::set_conv_algorithm(a); }
  ~AlgorithmScope() { cpu::set_conv_algorithm(cpu::ConvAlgorithm::automatic); }
};

TEST_CASE("CPU convolutions: im2col and direct algorithms equal the f64 definition") {
  const ConvCase cases[] = {
      {2, 8, 3, 16, 3, 1, 1},  {1, 7, 5, 17, 3, 1, 1},  {3, 9, 16, 16, 3, 2, 1}, {2, 6, 8, 33, 5, 1, 2},
      {2, 10, 4, 9, 3, 1, 0},  {1, 8, 16, 32, 1, 2, 0}, {3, 5, 19, 7, 3, 2, 2},  {4, 13, 2, 40, 3, 1, 1},
      {1, 1, 3, 5, 3, 1, 1},   {2, 11, 24, 24, 3, 2, 1}, {2, 7, 3, 6, 3, 1, 3}};
  Backend& be = backend_for(Device::cpu);
#ifdef _OPENMP
  const int threads_before = omp_get_max_threads();
#endif
  int case_index = 0;
  for (const ConvCase& cc : cases) {
    Generator gen = seeded(100 + case_index++);
    Conv2dGeometry g{cc.stride, cc.padding};
    const int64_t out_hw = conv2d_output_size(cc.hw, cc.kernel, g);
    Tensor x = gen.uniform({cc.n, cc.hw, cc.hw, cc.c}, -1, 1, DType::f64, Layout::nhwc);
    Tensor w = gen.uniform({cc.k, cc.kernel, cc.kernel, cc.c}, -1, 1, DType::f64, Layout::krsc);
    Tensor gy = gen.uniform({cc.n, out_hw, out_hw, cc.k}, -1, 1, DType::f64, Layout::nhwc);
    Tensor y_ref = Tensor::zeros(gy.shape(), DType::f64, Layout::nhwc);
    Tensor dx_ref = Tensor::zeros(x.shape(), DType::f64, Layout::nhwc);
    Tensor dw_ref = Tensor::zeros(w.shape(), DType::f64, Layout::krsc);
    double* yr = y_ref.data<double>();
    double* dxr = dx_ref.data<double>();
    double* dwr = dw_ref.data<double>();
    const double* xp = x.data<double>();
    const double* wp = w.data<double>();
    const double* gp = gy.data<double>();
    for_each_tap(cc, out_hw, [&](int64_t i, int64_t p, int64_t q, int64_t k, int64_t r, int64_t s, int64_t c,
                                 int64_t h, int64_t ww) {
      const int64_t yi = ((i * out_hw + p) * out_hw + q) * cc.k + k;
      const int64_t xi = ((i * cc.hw + h) * cc.hw + ww) * cc.c + c;
      const int64_t wi = ((k * cc.kernel + r) * cc.kernel + s) * cc.c + c;
      yr[yi] += xp[xi] * wp[wi];
      dxr[xi] += gp[yi] * wp[wi];
      dwr[wi] += gp[yi] * xp[xi];
    });
    for (auto algorithm : {cpu::ConvAlgorithm::im2col, cpu::ConvAlgorithm::direct, cpu::ConvAlgorithm::automatic})
      for (int threads : {1, 3}) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        AlgorithmScope scope(algorithm);
        INFO("case " << case_index - 1 << " (n " << cc.n << ", " << cc.hw << "x" << cc.hw << ", " << cc.c << "->"
                     << cc.k << ", kernel " << cc.kernel << ", stride " << cc.stride << ", padding " << cc.padding
                     << "), algorithm " << static_cast<int>(algorithm) << ", threads " << threads);
        Comparison fy = compare(be.conv2d_forward(x, w, g), y_ref, 1e-12, 1e-12);
        Comparison fdx = compare(be.conv2d_backward_data(gy, w, x.shape(), g), dx_ref, 1e-12, 1e-12);
        Comparison fdw = compare(be.conv2d_backward_filter(x, gy, w.shape(), g), dw_ref, 1e-12, 1e-12);
        CHECK_MESSAGE(fy.max_violation <= 1, "forward ", fy.worst);
        CHECK_MESSAGE(fdx.max_violation <= 1, "backward-data ", fdx.worst);
        CHECK_MESSAGE(fdw.max_violation <= 1, "backward-filter ", fdw.worst);
      }
  }
#ifdef _OPENMP
  omp_set_num_threads(threads_before);
#endif
}

// f32 takes the same kernels with 8-lane vectors (f64: 4 lanes), so its tails and packing are checked too.
TEST_CASE("CPU convolutions in f32: the direct algorithm agrees with im2col") {
  Backend& be = backend_for(Device::cpu);
  Generator gen = seeded(7);
  for (int stride : {1, 2}) {
    Conv2dGeometry g{stride, 1};
    Tensor x = gen.uniform({3, 12, 12, 13}, -1, 1, DType::f32, Layout::nhwc);
    Tensor w = gen.uniform({21, 3, 3, 13}, -1, 1, DType::f32, Layout::krsc);
    const int64_t out_hw = conv2d_output_size(12, 3, g);
    Tensor gy = gen.uniform({3, out_hw, out_hw, 21}, -1, 1, DType::f32, Layout::nhwc);
    Tensor ref[3], got[3];
    {
      AlgorithmScope scope(cpu::ConvAlgorithm::im2col);
      ref[0] = be.conv2d_forward(x, w, g);
      ref[1] = be.conv2d_backward_data(gy, w, x.shape(), g);
      ref[2] = be.conv2d_backward_filter(x, gy, w.shape(), g);
    }
    {
      AlgorithmScope scope(cpu::ConvAlgorithm::direct);
      got[0] = be.conv2d_forward(x, w, g);
      got[1] = be.conv2d_backward_data(gy, w, x.shape(), g);
      got[2] = be.conv2d_backward_filter(x, gy, w.shape(), g);
    }
    // Sums of 117 (forward, backward-data) and 3*out_hw^2 (filter) products of values in [-1, 1]: f32 rounding of
    // either order stays far below 1e-4 absolute.
    for (int i = 0; i < 3; ++i) {
      INFO("stride " << stride << ", result " << i);
      Comparison c = compare(got[i], ref[i], 1e-4, 1e-5);
      CHECK_MESSAGE(c.max_violation <= 1, c.worst);
    }
  }
}

#ifdef _OPENMP
// Training is reproducible at any thread count: the direct backward-filter groups its sum the same way for 1 or 3
// threads (f32, where a different grouping would show in the last bits).
TEST_CASE("CPU convolutions: the direct backward-filter does not depend on the thread count") {
  Backend& be = backend_for(Device::cpu);
  Generator gen = seeded(11);
  Conv2dGeometry g{1, 1};
  Tensor x = gen.uniform({13, 16, 16, 16}, -1, 1, DType::f32, Layout::nhwc);
  Tensor gy = gen.uniform({13, 16, 16, 32}, -1, 1, DType::f32, Layout::nhwc);
  AlgorithmScope scope(cpu::ConvAlgorithm::direct);
  const int threads_before = omp_get_max_threads();
  omp_set_num_threads(1);
  Tensor one = be.conv2d_backward_filter(x, gy, {32, 3, 3, 16}, g);
  omp_set_num_threads(3);
  Tensor three = be.conv2d_backward_filter(x, gy, {32, 3, 3, 16}, g);
  omp_set_num_threads(threads_before);
  CHECK(compare(three, one, 0, 0).max_violation == 0);
}
#endif

// The decomposition the CUDA backend times against cuDNN (engine/conv_rewrites.h, products): the unfold and fold
// copies by the shared index maps, and the three products with the operands, shapes and transposes the CUDA path
// passes to cuBLAS (as the matmul functions do), equal the convolutions in f64. 1x1 filters with padding 0 at strides
// 1 to 4 (sizes the stride does not divide), 3x3 and 5x5 filters with padding 0 to 2 and strides 1 and 2, 1x1
// filters with padding 1, channel counts that are not multiples of 8.
Tensor unfold(const Tensor& x, const conv_rewrites::Unfold& u) {
  const int64_t M = u.N * u.P * u.Q, J = u.R * u.S * u.C;
  Tensor cols = Tensor::empty({M, J}, DType::f64);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < J; ++j) {
      const int64_t from = conv_rewrites::unfold_source(m, j, u);
      cols.data<double>()[m * J + j] = from < 0 ? 0.0 : x.data<double>()[from];
    }
  return cols;
}

Tensor fold(const Tensor& cols, const Shape& x_shape, const conv_rewrites::Unfold& u) {
  const int64_t J = u.R * u.S * u.C;
  Tensor dx = Tensor::empty(x_shape, DType::f64, Layout::nhwc);
  for (int64_t row = 0; row < u.N * u.H * u.W; ++row)
    for (int64_t c = 0; c < u.C; ++c) {
      double sum = 0;
      for (int64_t r = 0; r < u.R; ++r)
        for (int64_t t = 0; t < u.S; ++t) {
          const int64_t m = conv_rewrites::fold_row(row, r, t, u);
          if (m >= 0) sum += cols.data<double>()[m * J + (r * u.S + t) * u.C + c];
        }
      dx.data<double>()[row * u.C + c] = sum;
    }
  return dx;
}

TEST_CASE("convolutions as matrix products over their unfolded input equal the convolutions") {
  struct Case {
    int64_t n, h, w, c, k, kernel;
    int stride, padding;
  };
  const Case cases[] = {{2, 8, 8, 16, 24, 1, 1, 0}, {2, 8, 8, 16, 24, 1, 2, 0}, {3, 7, 5, 3, 5, 1, 2, 0},
                        {2, 9, 10, 4, 6, 1, 3, 0},  {1, 6, 6, 8, 8, 1, 4, 0},   {2, 1, 3, 5, 7, 1, 2, 0},
                        {2, 8, 8, 3, 16, 3, 1, 1},  {1, 7, 9, 3, 5, 3, 2, 1},   {2, 6, 6, 2, 4, 5, 1, 2},
                        {1, 9, 7, 4, 3, 3, 2, 0},   {2, 5, 5, 8, 8, 3, 1, 1},   {2, 5, 6, 4, 3, 1, 1, 1},
                        {1, 7, 7, 5, 6, 1, 2, 1}};
  Backend& be = backend_for(Device::cpu);
  Generator gen = seeded(31);
  for (const Case& cc : cases) {
    INFO("n " << cc.n << ", " << cc.h << "x" << cc.w << ", " << cc.c << "->" << cc.k << ", kernel " << cc.kernel
              << ", stride " << cc.stride << ", padding " << cc.padding);
    Conv2dGeometry g{cc.stride, cc.padding};
    REQUIRE(conv_rewrites::products_apply(cc.kernel, cc.kernel, cc.c, g.padding));
    const int64_t P = conv2d_output_size(cc.h, cc.kernel, g), Q = conv2d_output_size(cc.w, cc.kernel, g);
    const conv_rewrites::Unfold u{cc.n, cc.h, cc.w, cc.c, cc.kernel, cc.kernel, P, Q, cc.stride, cc.padding};
    const int64_t M = cc.n * P * Q, J = cc.kernel * cc.kernel * cc.c;
    Tensor x = gen.uniform({cc.n, cc.h, cc.w, cc.c}, -1, 1, DType::f64, Layout::nhwc);
    Tensor w = gen.uniform({cc.k, cc.kernel, cc.kernel, cc.c}, -1, 1, DType::f64, Layout::krsc);
    Tensor gy = gen.uniform({cc.n, P, Q, cc.k}, -1, 1, DType::f64, Layout::nhwc);
    Tensor cols = unfold(x, u);
    if (conv_rewrites::unfold_is_identity(u))  // the CUDA path then multiplies x itself
      CHECK(compare(cols.reshaped(x.shape(), Layout::nhwc), x, 0, 0).max_violation == 0);
    Tensor w2 = w.reshaped({cc.k, J}), g2 = gy.reshaped({M, cc.k});
    Tensor y = be.matmul_nt(cols, w2).reshaped(gy.shape(), Layout::nhwc);
    Tensor dx = fold(be.matmul_nn(g2, w2), x.shape(), u);
    Tensor dw = be.matmul_tn(g2, cols).reshaped(w.shape(), Layout::krsc);
    Comparison fy = compare(y, be.conv2d_forward(x, w, g), 1e-13, 1e-13);
    Comparison fdx = compare(dx, be.conv2d_backward_data(gy, w, x.shape(), g), 1e-13, 1e-13);
    Comparison fdw = compare(dw, be.conv2d_backward_filter(x, gy, w.shape(), g), 1e-13, 1e-13);
    CHECK_MESSAGE(fy.max_violation <= 1, "forward ", fy.worst);
    CHECK_MESSAGE(fdx.max_violation <= 1, "backward-data ", fdx.worst);
    CHECK_MESSAGE(fdw.max_violation <= 1, "backward-filter ", fdw.worst);
  }
  CHECK_FALSE(conv_rewrites::products_apply(3, 3, 160, 1));  // J = 1,440: its unfolded input would be 9x the input
}

// The other rewrite of engine/conv_rewrites.h: a stride-1 "same" forward equals the backward-data of the filter's
// transpose (built by the shared index map) taking x as its output gradient, in f64; 3x3 and 5x5 filters, channel
// counts that differ either way, an image that is not square.
TEST_CASE("stride-1 convolution forwards equal the backward-data of the transposed filter") {
  struct Case {
    int64_t n, h, w, c, k, kernel;
  };
  const Case cases[] = {{2, 8, 8, 16, 24, 3}, {1, 7, 5, 3, 5, 3}, {2, 6, 9, 9, 4, 5}, {3, 4, 4, 8, 8, 3}};
  Backend& be = backend_for(Device::cpu);
  Generator gen = seeded(37);
  for (const Case& cc : cases) {
    INFO("n " << cc.n << ", " << cc.h << "x" << cc.w << ", " << cc.c << "->" << cc.k << ", kernel " << cc.kernel);
    Conv2dGeometry g{1, static_cast<int>(cc.kernel / 2)};
    REQUIRE(conv_rewrites::transposed_applies(cc.kernel, cc.kernel, g.stride, g.padding));
    Tensor x = gen.uniform({cc.n, cc.h, cc.w, cc.c}, -1, 1, DType::f64, Layout::nhwc);
    Tensor w = gen.uniform({cc.k, cc.kernel, cc.kernel, cc.c}, -1, 1, DType::f64, Layout::krsc);
    Tensor wt = Tensor::empty({cc.c, cc.kernel, cc.kernel, cc.k}, DType::f64, Layout::krsc);
    for (int64_t i = 0; i < wt.numel(); ++i)
      wt.data<double>()[i] =
          w.data<double>()[conv_rewrites::transposed_filter_source(i, cc.k, cc.kernel, cc.kernel, cc.c)];
    Tensor y = be.conv2d_forward(x, w, g);
    Comparison c = compare(be.conv2d_backward_data(x, wt, y.shape(), g), y, 1e-13, 1e-13);
    CHECK_MESSAGE(c.max_violation <= 1, c.worst);
  }
  CHECK_FALSE(conv_rewrites::transposed_applies(3, 3, 2, 1));
  CHECK_FALSE(conv_rewrites::transposed_applies(3, 3, 1, 0));
  CHECK_FALSE(conv_rewrites::transposed_applies(1, 1, 1, 0));
}

}  // namespace
}  // namespace llr::test
