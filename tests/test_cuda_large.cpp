// The CUDA backend at the sizes Wide-ResNet-28-10 trains at (doctest suite "cuda-large"), where the small op table of
// test_cuda_ops.cpp never reaches: tensor-core convolutions at 16 to 640 channels, grid-stride loops that wrap (more
// elements than the launch's threads: 132 SMs x 32 blocks x 256 threads = 1,081,344 on an H100 or H200), per-channel
// sums over 131,072 rows and per-row sums over 163,840 elements. Three kinds of reference:
//   - the CPU in f64 on the same rounded inputs, where it is affordable (convolutions at batch 4, every elementwise,
//     batch-norm and loss kernel on 1.3M to 12M elements): rtol tied to the dtype as in test_cuda_ops.cpp;
//   - the GPU in f32 (TF32 off) for whole networks in bf16, where the CPU would take minutes (WRN-28-10 at batch
//     128: about 2 TFLOP per forward and backward), with a relative-L2 bound derived from bf16's precision below;
//   - the plan counters of kernels/conv_plans.h: WRN-28-10's bf16 convolutions must run in bf16, not in f32.
// Without a GPU each case prints that it is skipped.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/context.h"
#include "kernels/conv_plans.h"
#include "tests/cuda_test_util.h"
#include "tests/method_util.h"

namespace llr::test {
namespace {

TEST_SUITE_BEGIN("cuda-large");

using Tensors = std::vector<Tensor>;
constexpr DType f64 = DType::f64;

// rtol per dtype (atol = rtol max|ref|). The inputs are rounded identically on both sides, so what is compared is the
// arithmetic:
//   f32 1e-5: the kernels sum in f32 in blocks (a thread's few rows, 8 rows of a block, then one atomic add per
//     block: about 1,000 adds for the longest sums here); with rounding errors of random sign the relative error of
//     such a sum is about 2^-24 sqrt(1000) = 2e-6, a fifth of the tolerance.
//   f32 convolutions 1e-4: at these sizes cuDNN may choose Winograd or FFT algorithms, whose transforms amplify f32
//     rounding by 10 to 100 (Winograd F(4x4, 3x3)); still a thousandth of the O(1) error of a wrong element.
//   tf32 2e-3: cuDNN rounds (or truncates) both operands to 10 mantissa bits, so a product can be off by 2 x 2^-10
//     relative; a systematic part is covered by rtol, the random part of a 5,760-term sum by atol.
//   bf16 1e-2: bf16 products are exact in f32 and accumulate in f32; the output is rounded to 8 bits, 2^-8 = 3.9e-3.
const Mode kF32{"f32", DType::f32, false, 1e-5};
const Mode kF32Conv{"f32", DType::f32, false, 1e-4};
const Mode kTf32{"tf32", DType::f32, true, 2e-3};
const Mode kBf16{"bf16", DType::bf16, false, 1e-2};

Tensor normal(Generator& g, const Shape& s, Layout l = Layout::plain, double sd = 1.0) {
  return g.normal(s, 0.0, sd, f64, l);
}
Tensor positive(Generator& g, const Shape& s) { return g.uniform(s, 0.5, 1.5, f64); }

std::string named(const std::string& op, const Shape& s) { return op + " " + shape_str(s); }

// ---------------------------------------------------------------------------------------------------------------
// Convolutions at WRN-28-10's channel counts, strides and 1x1 shortcuts. run_case compares the forward, the vjp
// (backward-data and backward-filter) and the jvp (two forwards) with the CPU; batch 4 keeps the CPU reference at a
// few GFLOP. llr_conv_bench checks the same layers at batch 128.
// ---------------------------------------------------------------------------------------------------------------

struct ConvLayer {
  const char* name;
  int64_t hw, cin, cout, kernel, stride;
};

const ConvLayer kWrnConvs[] = {
    {"stem 3x3 3->16", 32, 3, 16, 3, 1},           {"g1 3x3 16->160", 32, 16, 160, 3, 1},
    {"g1 1x1 16->160", 32, 16, 160, 1, 1},         {"g1 3x3 160->160", 32, 160, 160, 3, 1},
    {"g2 3x3 160->320 s2", 32, 160, 320, 3, 2},    {"g2 1x1 160->320 s2", 32, 160, 320, 1, 2},
    {"g2 3x3 320->320", 16, 320, 320, 3, 1},       {"g3 3x3 320->640 s2", 16, 320, 640, 3, 2},
    {"g3 1x1 320->640 s2", 16, 320, 640, 1, 2},    {"g3 3x3 640->640", 8, 640, 640, 3, 1},
};

OpCase conv_layer_case(const ConvLayer& l, int64_t batch) {
  Shape x{batch, l.hw, l.hw, l.cin}, w{l.cout, l.kernel, l.kernel, l.cin};
  Conv2dOptions o{static_cast<int>(l.stride), static_cast<int>(l.kernel / 2)};
  // Filters scaled like He initialisation, so outputs stay O(1) whatever the fan-in.
  double sd = std::sqrt(2.0 / double(l.kernel * l.kernel * l.cin));
  return {std::string("conv2d ") + l.name + " batch " + std::to_string(batch),
          [=](Generator& g) { return Tensors{normal(g, x, Layout::nhwc), normal(g, w, Layout::krsc, sd)}; },
          {true, true},
          [=](const Tensors& in) { return conv2d(in[0], in[1], {}, o); }};
}

// run_case of each layer at this batch in f32, TF32 and bf16 (TF32 on again after): the number of failing runs.
int run_in_every_mode(const std::vector<ConvLayer>& layers, int64_t batch) {
  int failures = 0;
  for (const Mode& m : {kF32Conv, kTf32, kBf16})
    for (const ConvLayer& l : layers) run_case(conv_layer_case(l, batch), m, failures);
  cuda::context().set_tf32(true);
  return failures;
}

// Puts the rewrites' mode (kernels/conv_plans.h) back as it was.
struct RestoreRewrites {
  cuda::ConvRewrites saved = cuda::conv_rewrites();
  ~RestoreRewrites() { cuda::set_conv_rewrites(saved); }
};

TEST_CASE("WRN-28-10 convolutions at real channel counts match the CPU: forward and backward-data and backward-filter") {
  if (!gpu_ready("CUDA WRN-size convolutions")) return;
  int failures = 0, runs = 0;
  for (const Mode& m : {kF32Conv, kTf32, kBf16}) {
    uint64_t fallbacks_before = cuda::conv_plan_stats().bf16_fallback_calls;
    for (const ConvLayer& l : kWrnConvs) {
      run_case(conv_layer_case(l, 4), m, failures);
      ++runs;
    }
    if (m.data == DType::bf16) {
      cuda::ConvPlanStats s = cuda::conv_plan_stats();
      for (const std::string& f : s.bf16_fallbacks) std::printf("  bf16 fallback: %s\n", f.c_str());
      INFO("bf16 convolutions computed in f32 instead: ", s.bf16_fallback_calls - fallbacks_before);
      CHECK(s.bf16_fallback_calls == fallbacks_before);
    }
  }
  cuda::context().set_tf32(true);
  std::printf("cuda vs cpu WRN convolutions: %d of %d layer/mode runs matched\n", runs - failures, runs);
  CHECK(failures == 0);
}

// The bf16 plans through cuDNN's graph API (kernels/conv_engines.h) alone: each WRN-28-10 convolution runs the
// fastest engine cuDNN's heuristics offer for it (the default search may keep the legacy algorithm where that is
// faster, so the case above need not reach an engine at all).
TEST_CASE("bf16 convolutions through cuDNN graph-API engines match the CPU at WRN-28-10 channel counts") {
  if (!gpu_ready("CUDA graph-API convolutions")) return;
  if (const char* h = std::getenv("LLR_CUDNN_HEURISTIC"); h && *h && *h != '0') {
    std::printf("SKIPPED graph-API convolutions: LLR_CUDNN_HEURISTIC plans by the legacy heuristic alone\n");
    return;
  }
  struct RestoreSearch {
    cuda::ConvSearch saved = cuda::conv_search();
    ~RestoreSearch() { cuda::set_conv_search(saved); }
  } restore;
  cuda::set_conv_search(cuda::ConvSearch::engines);
  // Every layer through engines, none rewritten (the rewrites have their own cases below).
  RestoreRewrites restore_rewrites;
  cuda::set_conv_rewrites(cuda::ConvRewrites::off);
  const cuda::ConvPlanStats before = cuda::conv_plan_stats();
  int failures = 0;
  // Batch 2 (its own plans, apart from the case above's at batch 4) keeps the CPU reference to a few seconds.
  for (const ConvLayer& l : kWrnConvs) run_case(conv_layer_case(l, 2), kBf16, failures);
  const cuda::ConvPlanStats after = cuda::conv_plan_stats();
  for (size_t i = before.engine_failures.size(); i < after.engine_failures.size(); ++i)
    std::printf("  graph API failed: %s\n", after.engine_failures[i].c_str());
  std::printf("graph-API engines: %llu of %llu new bf16 plans run one, %llu kept the legacy algorithm; %llu calls\n",
              static_cast<unsigned long long>(after.engine_plans - before.engine_plans),
              static_cast<unsigned long long>(after.searches - before.searches),
              static_cast<unsigned long long>(after.legacy_plans - before.legacy_plans),
              static_cast<unsigned long long>(after.engine_calls - before.engine_calls));
  CHECK(failures == 0);
  CHECK(after.engine_plans > before.engine_plans);
  CHECK(after.engine_calls > before.engine_calls);
  CHECK(after.engine_failure_count == before.engine_failure_count);
  CHECK(after.bf16_fallback_calls == before.bf16_fallback_calls);
}

// The rewrites of engine/conv_rewrites.h whatever cuDNN's timing would pick (ConvRewrites::products, ::transposed).
TEST_CASE("convolutions rewritten as cuBLAS matrix products match the CPU: WRN-28-10 shortcuts and stem and more") {
  if (!gpu_ready("CUDA convolutions as matrix products")) return;
  RestoreRewrites restore;
  cuda::set_conv_rewrites(cuda::ConvRewrites::products);
  // WRN-28-10's three shortcuts, its stem and first 3x3 layer (unfolded: 27 and 144 columns), a stride that does not
  // divide the image, channel counts that are not whole 16-byte packs (the copies then go element by element), a
  // strided 3x3 filter on an odd image size, with whole packs and without.
  const std::vector<ConvLayer> layers = {kWrnConvs[2],
                                         kWrnConvs[5],
                                         kWrnConvs[8],
                                         kWrnConvs[0],
                                         kWrnConvs[1],
                                         {"1x1 24->40 s2 on 7x7", 7, 24, 40, 1, 2},
                                         {"1x1 3->5 s2 on 9x9", 9, 3, 5, 1, 2},
                                         {"1x1 5->7 on 6x6", 6, 5, 7, 1, 1},
                                         {"1x1 16->8 s3 on 8x8", 8, 16, 8, 1, 3},
                                         {"3x3 8->16 s2 on 9x9", 9, 8, 16, 3, 2},
                                         {"3x3 3->5 s2 on 9x9", 9, 3, 5, 3, 2}};
  const cuda::ConvPlanStats before = cuda::conv_plan_stats();
  const int failures = run_in_every_mode(layers, 2);
  const cuda::ConvPlanStats after = cuda::conv_plan_stats();
  const uint64_t plans = after.product_plans - before.product_plans;
  std::printf("convolutions as products: %llu plans, %llu calls\n", static_cast<unsigned long long>(plans),
              static_cast<unsigned long long>(after.product_calls - before.product_calls));
  CHECK(failures == 0);
  // Every plan made here is the products (no cuDNN search ran), at least one per layer and direction.
  CHECK(after.searches - before.searches == plans);
  CHECK(plans >= 66);  // 11 layers, 3 directions, f32 (TF32 may share its keys) and bf16
  CHECK(after.product_calls - before.product_calls >= plans);
}

TEST_CASE("stride-1 forwards rewritten as the transpose's backward-data match the CPU: WRN-28-10 layers and 5x5") {
  if (!gpu_ready("CUDA forwards as the transpose's backward-data")) return;
  RestoreRewrites restore;
  cuda::set_conv_rewrites(cuda::ConvRewrites::transposed);
  // WRN-28-10's stride-1 3x3 layers, and a 5x5 filter (padding 2) on an odd image size.
  const std::vector<ConvLayer> layers = {kWrnConvs[1], kWrnConvs[3], kWrnConvs[6], kWrnConvs[9],
                                         {"5x5 8->24 on 7x7", 7, 8, 24, 5, 1}};
  const cuda::ConvPlanStats before = cuda::conv_plan_stats();
  const int failures = run_in_every_mode(layers, 2);
  const cuda::ConvPlanStats after = cuda::conv_plan_stats();
  const uint64_t plans = after.transposed_plans - before.transposed_plans;
  std::printf("forwards as the transpose's backward-data: %llu plans, %llu calls\n",
              static_cast<unsigned long long>(plans),
              static_cast<unsigned long long>(after.transposed_calls - before.transposed_calls));
  CHECK(failures == 0);
  CHECK(plans >= 5);  // each layer's forward (f32 and TF32 share their keys under LLR_NO_TF32)
  CHECK(after.transposed_calls - before.transposed_calls >= plans);
  CHECK(after.bf16_fallback_calls == before.bf16_fallback_calls);
}

// ---------------------------------------------------------------------------------------------------------------
// Elementwise, batch-norm and loss kernels on more than a million elements.
// ---------------------------------------------------------------------------------------------------------------

// WRN-28-10 activations: the stem's output at batch 128 (16 channels of 131,072 rows each: the longest per-channel
// sums), group 1 at batch 16 (160 channels), group 3 at batch 40 (640 channels: 20 blocks of 32 channels).
const Shape kStem{128, 32, 32, 16}, kGroup1{16, 32, 32, 160}, kGroup3{40, 8, 8, 640};
// Logits: more rows than a launch has threads (each thread takes two), and ImageNet-wide rows.
const Shape kManyRows{1200000, 10}, kWideRows{1024, 1000};

OpCase bn_stats_case(const Shape& s, bool var) {
  return {named(var ? "batch_stats var" : "batch_stats mean", s),
          [=](Generator& g) { return Tensors{normal(g, s, Layout::nhwc)}; },
          {true},
          [=](const Tensors& in) {
            BatchStats st = batch_stats(in[0]);
            return var ? st.var : st.mean;
          }};
}

// Data 300 standard deviations from zero: a variance computed as E[x^2] - E[x]^2 without a shift would keep none of
// f32's bits (the one-pass statistics shift by a sample mean of each channel).
OpCase bn_stats_offset_case(const Shape& s) {
  return {named("batch_stats var (mean 300, sd 1)", s),
          [=](Generator& g) { return Tensors{g.normal(s, 300.0, 1.0, f64, Layout::nhwc)}; },
          {true},
          [=](const Tensors& in) { return batch_stats(in[0]).var; }};
}

OpCase bn_training_case(const Shape& s) {
  int64_t c = s.back();
  return {named("batch_norm training mode", s),
          [=](Generator& g) { return Tensors{normal(g, s, Layout::nhwc), positive(g, {c}), normal(g, {c})}; },
          {true, true, true},
          [](const Tensors& in) {
            BatchStats st = batch_stats(in[0]);
            return batch_norm(in[0], st.mean, st.var, in[1], in[2], 1e-5);
          }};
}

// For ReLU the inputs keep |x| >= 0.1 and the shift is zero, so that no normalised value lies within rounding of the
// kink (where the GPU in f32 and the CPU in f64 could take different sides; a million normal inputs would put some
// there). The batch mean, about 1e-2, stays inside that gap.
OpCase bn_act_case(const Shape& s, Act act) {
  int64_t c = s.back();
  return {named(act == Act::relu ? "batch_norm_act relu" : "batch_norm_act softplus", s),
          [=](Generator& g) {
            if (act == Act::relu)
              return Tensors{away_from_zero(g, s, f64, Layout::nhwc), positive(g, {c}), Tensor::zeros({c}, f64)};
            return Tensors{normal(g, s, Layout::nhwc), positive(g, {c}), normal(g, {c}, Layout::plain, 0.3)};
          },
          {true, true, true},
          [act](const Tensors& in) {
            BatchStats st = batch_stats(in[0]);
            return batch_norm_act(in[0], st.mean, st.var, in[1], in[2], 1e-5, act);
          }};
}

OpCase bn_tangent_case(const Shape& s) {
  int64_t c = s.back();
  return {named("bn_tangent", s),
          [=](Generator& g) {
            return Tensors{normal(g, s, Layout::nhwc), normal(g, {c}), positive(g, {c}), normal(g, {c}),
                           normal(g, s, Layout::nhwc), normal(g, {c}), normal(g, {c})};
          },
          std::vector<bool>(7, true),
          [](const Tensors& in) { return bn_tangent(in[0], in[1], in[2], in[3], in[4], in[5], in[6], 1e-5); },
          true};
}

OpCase bn_stats_tangent_case(const Shape& s, bool var) {
  int64_t c = s.back();
  return {named(var ? "batch_stats_tangent var_dot" : "batch_stats_tangent mean_dot", s),
          [=](Generator& g) { return Tensors{normal(g, s, Layout::nhwc), normal(g, {c}), normal(g, s, Layout::nhwc)}; },
          {true, true, true},
          [var](const Tensors& in) {
            BatchStats d = batch_stats_tangent(in[0], in[1], in[2]);
            return var ? d.var : d.mean;
          },
          true};
}

OpCase bn_act_tangent_case(const Shape& s) {
  int64_t c = s.back();
  return {named("batch_norm_act_tangent softplus", s),
          [=](Generator& g) {
            return Tensors{normal(g, s, Layout::nhwc), normal(g, {c}), positive(g, {c}), positive(g, {c}),
                           normal(g, {c}), normal(g, s, Layout::nhwc), normal(g, {c}), normal(g, {c}),
                           normal(g, {c}), normal(g, {c})};
          },
          std::vector<bool>(10, true),
          [](const Tensors& in) {
            return batch_norm_act_tangent(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9], 1e-5,
                                          Act::softplus);
          },
          true};
}

template <class F>
OpCase binary_case(const std::string& op, const Shape& s, F f) {
  return {named(op, s), [=](Generator& g) { return Tensors{normal(g, s, Layout::nhwc), normal(g, s, Layout::nhwc)}; },
          {true, true}, [f](const Tensors& in) { return f(in[0], in[1]); }};
}

template <class F>
OpCase unary_case(const std::string& op, const Shape& s, F f, double sd = 1.0) {
  return {named(op, s), [=](Generator& g) { return Tensors{normal(g, s, Layout::nhwc, sd)}; }, {true},
          [f](const Tensors& in) { return f(in[0]); }};
}

OpCase loss_case(const std::string& op, const Shape& s, bool tangent_input) {
  int64_t n = s[0], k = s[1];
  return {named(op, s),
          [=](Generator& g) {
            Tensors in{normal(g, s, Layout::plain, 2.0), g.randint({n}, 0, static_cast<int32_t>(k))};
            if (tangent_input) in.push_back(normal(g, s));
            return in;
          },
          tangent_input ? std::vector<bool>{true, false, true} : std::vector<bool>{true, false},
          [op](const Tensors& in) {
            if (op == "cross_entropy") return cross_entropy(in[0], in[1]);
            if (op == "margin_loss") return margin_loss(in[0], in[1]);
            return cross_entropy_tangent(in[0], in[1], in[2]);
          },
          tangent_input};
}

// The element-wise, batch-norm and loss cases: per-channel sums over `stem` (few channels, long sums), wide activations
// `group1` and `group3`, loss rows `many_rows` and `wide_rows`.
std::vector<OpCase> elementwise_cases(const Shape& stem, const Shape& group1, const Shape& group3,
                                      const Shape& many_rows, const Shape& wide_rows) {
  std::vector<OpCase> c;
  for (bool var : {false, true}) c.push_back(bn_stats_case(stem, var));
  c.push_back(bn_stats_offset_case(stem));
  for (const Shape& s : {stem, group3}) {
    c.push_back(bn_training_case(s));
    c.push_back(bn_act_case(s, Act::softplus));
    c.push_back(bn_tangent_case(s));
  }
  c.push_back(bn_act_case(group1, Act::relu));
  c.push_back(bn_stats_tangent_case(stem, true));
  c.push_back(bn_stats_tangent_case(group1, false));
  c.push_back(bn_act_tangent_case(stem));
  const Shape& s = group1;
  c.push_back(binary_case("add", s, [](const Tensor& a, const Tensor& b) { return add(a, b); }));
  c.push_back(binary_case("sub", s, [](const Tensor& a, const Tensor& b) { return sub(a, b); }));
  c.push_back(binary_case("mul", s, [](const Tensor& a, const Tensor& b) { return mul(a, b); }));
  c.push_back(unary_case("scale", s, [](const Tensor& a) { return scale(a, -1.7); }));
  c.push_back(binary_case("per_example_dot", s,
                          [](const Tensor& a, const Tensor& b) { return per_example_dot(a, b); }));
  c.push_back(unary_case("softplus", s, [](const Tensor& a) { return softplus(a); }, 2.0));
  c.push_back(binary_case("activation_tangent softplus", s,
                          [](const Tensor& a, const Tensor& t) { return activation_tangent(Act::softplus, a, t); }));
  c.back().is_tangent_op = true;
  c.push_back(unary_case("global_avg_pool", s, [](const Tensor& a) { return global_avg_pool(a); }));
  c.push_back(unary_case("sum", s, [](const Tensor& a) { return sum(a); }));
  c.push_back({named("bias_add", s),
               [=](Generator& g) { return Tensors{normal(g, s, Layout::nhwc), normal(g, {s.back()})}; },
               {true, true},
               [](const Tensors& in) { return bias_add(in[0], in[1]); }});
  c.push_back({named("scale_per_example", s),
               [=](Generator& g) { return Tensors{normal(g, s, Layout::nhwc), normal(g, {s[0]})}; },
               {true, true},
               [](const Tensors& in) { return scale_per_example(in[0], in[1]); }});
  c.push_back(loss_case("cross_entropy", many_rows, false));
  c.push_back(loss_case("margin_loss", many_rows, false));
  c.push_back(loss_case("cross_entropy_tangent", many_rows, true));
  c.push_back(loss_case("cross_entropy", wide_rows, false));
  return c;
}

TEST_CASE("elementwise and batch-norm and loss kernels on over a million elements match the CPU in f32 and bf16") {
  if (!gpu_ready("CUDA large elementwise, batch-norm and loss kernels")) return;
  int failures = 0, runs = 0;
  for (const OpCase& c : elementwise_cases(kStem, kGroup1, kGroup3, kManyRows, kWideRows))
    for (const Mode& m : {kF32, kBf16}) {
      run_case(c, m, failures);
      ++runs;
    }
  cuda::context().set_tf32(true);
  std::printf("cuda vs cpu large kernels: %d of %d op/mode runs matched\n", runs - failures, runs);
  CHECK(failures == 0);
}

// The same kernels on shapes whose element counts are not multiples of the 8-element packs of the element-wise
// kernels (for_each_pack in kernels/cuda_common.cuh) and whose channel counts (1, 3, 6, 13) are not either, so a pack
// spans channels and images and the last pack is partial; tensors of 3 and 6 elements have only a partial pack; 2,100
// channels need two tiles of the per-channel sums. In the small suite, so that compute-sanitizer's memcheck sees them.
TEST_CASE("element-wise and batch-norm kernels on odd sizes (partial packs) match the CPU in f32 and bf16" *
          doctest::test_suite("cuda")) {
  if (!gpu_ready("CUDA element-wise kernels on odd sizes")) return;
  int failures = 0, runs = 0;
  const Shape tiny1{1, 1, 3, 1}, tiny3{1, 1, 2, 3}, odd{3, 5, 7, 13}, odd6{2, 3, 3, 6};
  std::vector<OpCase> cases = elementwise_cases(odd, odd6, tiny1, {7, 3}, {5, 11});
  for (const OpCase& c : elementwise_cases(tiny3, odd, odd6, {1, 10}, {3, 5}))
    if (c.name.rfind("batch_norm", 0) == 0 || c.name.rfind("bn_", 0) == 0) cases.push_back(c);
  // More than 256 packs of channels: the per-channel sums take a second tile of channels (blockIdx.y = 1).
  const Shape wide{5, 1, 1, 2100};
  cases.push_back(bn_stats_case(wide, true));
  cases.push_back(bn_act_case(wide, Act::softplus));
  cases.push_back(bn_tangent_case(wide));
  for (const OpCase& c : cases)
    for (const Mode& m : {kF32, kBf16}) {
      run_case(c, m, failures);
      ++runs;
    }
  std::printf("cuda vs cpu odd-size kernels: %d of %d op/mode runs matched\n", runs - failures, runs);
  CHECK(failures == 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Whole networks in bf16 against f32 (TF32 off) on the GPU.
//
// The bound. bf16 keeps 8 significant bits: unit roundoff u = 2^-8 = 3.9e-3. Each layer rounds its input, its
// weights and its output to bf16, errors of relative size up to u and RMS u/sqrt(3) each, about u per layer together.
// Batch norm keeps each layer's gain near one, so with errors of random sign they add in quadrature along a chain of
// L layers: relative L2 about sqrt(L) u. A forward pass is a chain of L layers; a gradient goes forward and back, 2L;
// LLR's gradient adds a tangent pass and its reverse, 4L. We allow 3 sqrt(chain) u: a factor 3 for what the model
// leaves out (residual branches that carry correlated errors, the weights' rounding shared by every example). A wrong
// kernel (a dropped term, a wrong index, an unwritten element) gives errors of order one, far above these bounds:
// WRN-28-10 (L = 28): forward 0.062, gradients 0.088.
//
// One tensor's gradient can be less precise than all of them together: an early layer's weight gradient, and a
// batch-norm bias gradient most of all, is a sum over the batch with heavy cancellation. So each tensor is also held
// to the noise bf16 itself puts there: a second bf16 run on the input jittered by one bf16 rounding
// (x (1 + 2^-8 xi), xi uniform in [-1, 1]) is as valid a bf16 result as the first; two such runs differ by about
// sqrt(2) times what each differs from the exact result if the errors are rounding noise (PyTorch's autocast on
// WRN-28-10 at batch 128, H100: error/spread at most 0.94, tools/reference/bf16_gradient_reference.py). A tensor
// passes if it is within the a-priori bound or within twice that spread of f32. A systematic error moves both bf16
// runs alike and leaves the spread small: on the H100 (2026-11-27) block 1's weight gradients were 0.15-0.22 from
// f32 at 5-7x the spread, which tests/test_bf16_emulation.cpp then reproduced on the CPU and traced to the batch
// norm's vjp rounding its dx before the statistics' share cancelled part of it (fixed: that dx is f32 now).
//
// Softplus, not ReLU: a ReLU whose input changes sign under rounding flips its derivative from 0 to 1, so its error
// would count sign flips rather than measure precision.
// ---------------------------------------------------------------------------------------------------------------

constexpr double kBf16UnitRoundoff = 1.0 / 256.0;
double bf16_bound(int chain_layers) { return 3.0 * std::sqrt(double(chain_layers)) * kBf16UnitRoundoff; }

// Names of model.parameters(), in order, and whether each is a convolution or linear weight.
std::vector<std::pair<std::string, bool>> parameter_names(nets::Model& model) {
  std::vector<std::pair<std::string, bool>> names;
  for (const nets::NamedTensor& e : model.registry().entries())
    if (e.kind != nets::TensorKind::buffer) names.push_back({e.name, e.kind == nets::TensorKind::weight});
  return names;
}

struct PassResult {
  Tensor logits;
  Tensor input_grad;
  std::vector<Tensor> param_grads;
};

// Logits, and the gradients of sum_i CE_i with respect to the input and every parameter, batch norm in train mode.
PassResult forward_backward(nets::Model& model, const Tensor& x, const Tensor& y, DType compute) {
  nets::ForwardContext ctx;
  ctx.compute = compute;
  Tensor X = x.detach().requires_grad_();
  Tensor logits = model.forward(X, ctx);
  Tensor S = sum(cross_entropy(logits, y));
  std::vector<Tensor> wrt = model.parameters();
  wrt.insert(wrt.begin(), X);
  std::vector<Tensor> g = grad({S}, {backend::full_like(S, 1.0)}, wrt);
  Tape::current().clear();
  return {logits.detach(), g[0], std::vector<Tensor>(g.begin() + 1, g.end())};
}

// The input, each value times (1 + 2^-8 xi) with xi uniform in [-1, 1], kept in [0, 1], on the GPU: one more
// bf16 rounding of it (see the bound above).
Tensor jittered(const Tensor& x_host, uint64_t seed) {
  Generator gen(seed);
  Tensor xi = gen.uniform(x_host.shape(), -1, 1, DType::f64, x_host.layout());
  Tensor j = Tensor::empty(x_host.shape(), DType::f32, x_host.layout());
  for (int64_t i = 0; i < j.numel(); ++i)
    j.set(i, std::clamp(x_host.at(i) * (1.0 + xi.at(i) / 256.0), 0.0, 1.0));
  return j.to(Device::cuda);
}

// Checks each convolution/linear weight's gradient against `bound` or, where `twin` (the same bf16 computation on
// a jittered input) is given, against twice the two bf16 runs' spread on that tensor if that is larger; and all
// parameter gradients together against `bound`. Prints the three worst tensors.
bool check_param_grads(const char* what, nets::Model& model, const std::vector<Tensor>& got,
                       const std::vector<Tensor>& ref, double bound, const std::vector<Tensor>* twin = nullptr) {
  auto names = parameter_names(model);
  REQUIRE(names.size() == got.size());
  if (twin) REQUIRE(twin->size() == got.size());
  std::vector<std::pair<double, std::string>> errors;
  bool ok = true;
  int by_spread = 0;
  double worst_ratio = 0;
  std::string worst_ratio_name;
  for (size_t k = 0; k < got.size(); ++k) {
    double e = relative_l2({got[k]}, {ref[k]});
    errors.push_back({e, names[k].first});
    if (!names[k].second) continue;
    double spread = twin ? relative_l2({(*twin)[k]}, {got[k]}) : 0.0;
    double b = std::max(bound, 2.0 * spread);
    if (twin && spread > 0 && e / spread > worst_ratio) {
      worst_ratio = e / spread;
      worst_ratio_name = names[k].first;
    }
    if (e > bound && e <= b) ++by_spread;
    if (!(e <= b)) {
      ok = false;
      std::printf("  mismatch: %s gradient of %s: relative L2 %.4g > %.4g (a-priori %.4g, bf16 spread %.4g)\n", what,
                  names[k].first.c_str(), e, b, bound, spread);
    }
  }
  if (twin)
    std::printf("  %s: %d weight gradients above the a-priori bound and within twice the bf16 spread; largest "
                "error/spread %.3g (%s)\n",
                what, by_spread, worst_ratio, worst_ratio_name.c_str());
  std::sort(errors.rbegin(), errors.rend());
  for (size_t k = 0; k < std::min<size_t>(3, errors.size()); ++k)
    std::printf("  %s: worst parameter gradients: %s %.4g\n", what, errors[k].second.c_str(), errors[k].first);
  double all = relative_l2(got, ref);
  std::printf("  %s: all parameter gradients together: relative L2 %.4g (bound %.4g)\n", what, all, bound);
  ok &= all <= bound;
  INFO(std::string(what), ": parameter gradients, bf16 vs f32 (see the lines printed above)");
  CHECK(ok);
  return ok;
}

bool check_rel_l2(const char* what, const Tensor& got, const Tensor& ref, double bound) {
  double e = relative_l2({got}, {ref});
  bool ok = e <= bound;
  std::printf("  %s: relative L2 %.4g (bound %.4g)%s\n", what, e, bound, ok ? "" : " MISMATCH");
  INFO(std::string(what), ": relative L2 ", e, " > bound ", bound);
  CHECK(ok);
  return ok;
}

// Also: a second step searches no plan again, a fallback included (each search benchmarks every cuDNN algorithm).
TEST_CASE("WRN-28-10's bf16 convolutions run in bf16 at batch 128: none falls back to f32 and plans are searched once") {
  if (!gpu_ready("CUDA WRN-28-10 bf16 without fallback")) return;
  auto model = nets::make_model("wrn-28-10", Act::relu, 10, 7, Device::cuda, DType::f32);
  Generator gen(30);
  Tensor x = gen.uniform({128, 32, 32, 3}, 0, 1, DType::f32, Layout::nhwc).to(Device::cuda);
  Tensor y = gen.randint({128}, 0, 10).to(Device::cuda);
  cuda::ConvPlanStats before = cuda::conv_plan_stats();
  forward_backward(*model, x, y, DType::bf16);
  cuda::ConvPlanStats first = cuda::conv_plan_stats();
  forward_backward(*model, x, y, DType::bf16);
  cuda::ConvPlanStats second = cuda::conv_plan_stats();
  for (const std::string& f : second.bf16_fallbacks) std::printf("  bf16 fallback: %s\n", f.c_str());
  uint64_t calls = second.bf16_fallback_calls - before.bf16_fallback_calls;
  uint64_t searches_first = first.searches - before.searches, searches_second = second.searches - first.searches;
  std::printf("cuda WRN-28-10 bf16 forward and backward, twice: %llu convolutions computed in f32 instead of bf16, "
              "%llu plans searched in the first step and %llu in the second %s\n",
              static_cast<unsigned long long>(calls), static_cast<unsigned long long>(searches_first),
              static_cast<unsigned long long>(searches_second), calls == 0 && searches_second == 0 ? "ok" : "MISMATCH");
  INFO("bf16 convolutions that fell back to f32 (listed above): ", calls);
  CHECK(calls == 0);
  CHECK(searches_second == 0);
}

TEST_CASE("WRN-28-10 at batch 128: bf16 logits and input and weight gradients agree with f32 to bf16 precision") {
  if (!gpu_ready("CUDA WRN-28-10 bf16 vs f32")) return;
  cuda::context().set_tf32(false);
  const int depth = 28;
  auto model = nets::make_model("wrn-28-10", Act::softplus, 10, 7, Device::cuda, DType::f32);
  Generator gen(31);
  Tensor x_host = gen.uniform({128, 32, 32, 3}, 0, 1, DType::f32, Layout::nhwc);
  Tensor x = x_host.to(Device::cuda);
  Tensor y = gen.randint({128}, 0, 10).to(Device::cuda);
  PassResult ref = forward_backward(*model, x, y, DType::f32);
  PassResult got = forward_backward(*model, x, y, DType::bf16);
  PassResult twin = forward_backward(*model, jittered(x_host, 32), y, DType::bf16);
  std::printf("cuda WRN-28-10 softplus, batch 128, bf16 vs f32 (TF32 off):\n");
  bool ok = check_rel_l2("logits", got.logits, ref.logits, bf16_bound(depth));
  ok &= check_rel_l2("input gradient", got.input_grad, ref.input_grad, bf16_bound(2 * depth));
  ok &= check_param_grads("WRN-28-10", *model, got.param_grads, ref.param_grads, bf16_bound(2 * depth),
                          &twin.param_grads);
  std::printf("cuda WRN-28-10 bf16 vs f32 %s\n", ok ? "ok" : "MISMATCH");
  cuda::context().set_tf32(true);
}

// ---------------------------------------------------------------------------------------------------------------
// Objective gradients (fixed perturbation) in bf16 against f32 on the GPU, softplus WRN-16-4 at batch 64.
// LLR's gradient depends on sign(g_i) and sign(d_i) (DESIGN.md): where rounding flips one, the two precisions compute
// different objectives and no precision bound applies. So delta_i = eps sign of the f32 input gradient, which makes
// d_i = eps ||grad_i||_1 > 0 in both precisions, and the comparisons are
//   - PGD (a forward and a backward at x + delta; chain 2L);
//   - LLR with lambda = 0: the nominal pass, its input gradient, the tangent pass along mu sign(d_i) delta_i and the
//     one reverse pass (chain 4L), where only sign(d_i) matters;
//   - LLR as configured (lambda = 4), at the smallest eps of a fixed list at which every g_i has the same sign, with a
//     margin, in bf16 and f32; if there is none, it says so and is not compared: the signs, not the precision, differ.
// ---------------------------------------------------------------------------------------------------------------

struct LlrTerms {
  std::vector<double> g, d;
};

// g_i and d_i as the LLR objective computes them for a fixed delta (train/methods/llr.cpp, steps 1 to 3).
LlrTerms llr_terms(nets::Model& model, const Tensor& x, const Tensor& y, const Tensor& delta, DType compute) {
  std::vector<BatchStats> stats;
  nets::ForwardContext nominal;
  nominal.compute = compute;
  nominal.record = &stats;
  Tensor X = x.detach().requires_grad_();
  Tensor l = cross_entropy(model.forward(X, nominal), y);
  Tensor S = sum(l);
  Tensor gx = grad({S}, {backend::full_like(S, 1.0)}, {X})[0];
  Tensor d = backend::per_example_dot(delta, gx);
  Tensor lp;
  {
    NoGradGuard no_grad;
    nets::ForwardContext shared;
    shared.bn = nets::BnMode::shared;
    shared.use = &stats;
    shared.compute = compute;
    lp = cross_entropy(model.forward(add(x, delta), shared), y);
  }
  Tape::current().clear();
  std::vector<double> lv = host_f64(l).to_vector(), lpv = host_f64(lp).to_vector(), dv = host_f64(d).to_vector();
  LlrTerms t;
  for (size_t i = 0; i < lv.size(); ++i) t.g.push_back(lpv[i] - lv[i] - dv[i]);
  t.d = dv;
  return t;
}

// Examples whose sign of g or d differs between a and b, or is within half its own size of flipping.
int sign_disagreements(const LlrTerms& a, const LlrTerms& b) {
  auto unsure = [](double u, double v) {
    return std::signbit(u) != std::signbit(v) || std::fabs(u - v) > 0.5 * std::fabs(v);
  };
  int n = 0;
  for (size_t i = 0; i < a.g.size(); ++i) n += unsure(a.g[i], b.g[i]) || unsure(a.d[i], b.d[i]);
  return n;
}

// x + eps sign(gradient), projected onto [0, 1], minus x (on the GPU).
Tensor signed_step(const Tensor& x_host, const Tensor& gradient, double eps) {
  Tensor d = Tensor::empty(x_host.shape(), DType::f32, Layout::nhwc);
  for (int64_t i = 0; i < d.numel(); ++i) {
    double xi = x_host.at(i), gi = gradient.at(i), step = gi > 0 ? eps : gi < 0 ? -eps : 0.0;
    d.set(i, std::clamp(xi + step, 0.0, 1.0) - xi);
  }
  return d.to(Device::cuda);
}

// The objective's loss and parameter gradients in bf16 and f32 (TF32 off) on the same model, batch and delta.
bool compare_objective(const char* name, nets::Model& model, const Tensor& x, const Tensor& x_twin, const Tensor& y,
                       const Tensor& delta, const Method& method, int chain_layers, int loss_chain_layers) {
  auto run = [&](DType compute, const Tensor& input) {
    StepContext ctx;
    ctx.compute = compute;
    ctx.update_running = false;
    ctx.fixed_delta = &delta;
    TapeScope scope;
    ObjectiveResult r = method.build(model, input, y, RobustSettings(), ctx);
    std::vector<Tensor> g = objective_gradients(r, model.parameters());
    g.insert(g.begin(), r.loss);
    return g;
  };
  std::vector<Tensor> ref = run(DType::f32, x), got = run(DType::bf16, x), twin = run(DType::bf16, x_twin);
  std::printf("cuda %s objective on WRN-16-4 softplus, batch %lld, bf16 vs f32 (TF32 off):\n", name,
              static_cast<long long>(x.dim(0)));
  bool ok = check_rel_l2("loss", got[0], ref[0], bf16_bound(loss_chain_layers));
  std::vector<Tensor> twin_grads(twin.begin() + 1, twin.end());
  ok &= check_param_grads(name, model, std::vector<Tensor>(got.begin() + 1, got.end()),
                          std::vector<Tensor>(ref.begin() + 1, ref.end()), bf16_bound(chain_layers), &twin_grads);
  std::printf("cuda %s objective bf16 vs f32 %s\n", name, ok ? "ok" : "MISMATCH");
  return ok;
}

TEST_CASE("PGD and LLR objective gradients in bf16 agree with f32 to bf16 precision (fixed perturbation)") {
  if (!gpu_ready("CUDA objective gradients bf16 vs f32")) return;
  cuda::context().set_tf32(false);
  const int depth = 16, batch = 64;
  auto model = nets::make_model("wrn-16-4", Act::softplus, 10, 41, Device::cuda, DType::f32);
  Generator gen(42);
  Tensor x_host = gen.uniform({batch, 32, 32, 3}, 0, 1, DType::f32, Layout::nhwc);
  Tensor x = x_host.to(Device::cuda);
  Tensor y = gen.randint({batch}, 0, 10).to(Device::cuda);
  Tensor gx;
  {
    nets::ForwardContext ctx;
    Tensor X = x.detach().requires_grad_();
    Tensor S = sum(cross_entropy(model->forward(X, ctx), y));
    gx = host_f64(grad({S}, {backend::full_like(S, 1.0)}, {X})[0]);
    Tape::current().clear();
  }
  Tensor delta = signed_step(x_host, gx, 8.0 / 255.0);
  Tensor x_twin = jittered(x_host, 43);

  compare_objective("PGD", *model, x, x_twin, y, delta, *method_with("pgd"), 2 * depth, depth);

  std::unique_ptr<Method> llr = method_with("llr");
  compare_objective("LLR (lambda 0)", *model, x, x_twin, y, delta, *method_with("llr", {{"lambda", 0}}), 4 * depth,
                    2 * depth);

  for (double eps : {8.0 / 255.0, 16.0 / 255.0, 32.0 / 255.0, 64.0 / 255.0}) {
    Tensor d = signed_step(x_host, gx, eps);
    LlrTerms f32_terms = llr_terms(*model, x, y, d, DType::f32);
    int unsure = sign_disagreements(llr_terms(*model, x, y, d, DType::bf16), f32_terms);
    int unsure_twin = sign_disagreements(llr_terms(*model, x_twin, y, d, DType::bf16), f32_terms);
    std::printf("  LLR signs at eps %.4f: %d (jittered input: %d) of %d examples differ, or are within 50%% of "
                "flipping, in bf16 vs f32\n",
                eps, unsure, unsure_twin, batch);
    if (unsure == 0 && unsure_twin == 0) {
      compare_objective("LLR", *model, x, x_twin, y, d, *llr, 4 * depth, 2 * depth);
      cuda::context().set_tf32(true);
      return;
    }
  }
  std::printf("cuda LLR objective bf16 vs f32 not compared: no eps gives the same signs of g in both precisions\n");
  MESSAGE("full LLR objective not compared in bf16: sign(g_i) differs between bf16 and f32 at every eps tried");
  cuda::context().set_tf32(true);
}

TEST_SUITE_END();

}  // namespace
}  // namespace llr::test
