// CUDA backend: convolutions through cuDNN (NHWC activations, KRSC filters) and matrix products through cuBLAS.
// For each convolution shape and direction, cuDNN's legacy algorithms are benchmarked once (cudnnFind*AlgorithmEx);
// for bf16 the execution plans of cuDNN's graph API (conv_engines.h) are then timed against the legacy pick on the
// same tensors, and the fastest that fits the workspace limit is cached for the run as the shape's plan; where one
// of engine/conv_rewrites.h applies (1x1 convolutions as cuBLAS matrix products, a stride-1 forward as the
// backward-data of its transpose), it is then timed too and replaces the pick when faster. Workspaces come from the
// caching allocator. A bf16 convolution cuDNN cannot run is planned, once, as an f32 convolution (conv_plans.h counts
// them).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <array>
#include <functional>
#include <iomanip>
#include <map>
#include <memory>
#include <tuple>
#include <sstream>
#include <string>

#include "engine/autograd.h"
#include "engine/conv_rewrites.h"
#include "engine/graph.h"
#include "engine/profile.h"
#include "kernels/allocator.h"
#include "kernels/conv_engines.h"
#include "kernels/conv_plans.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace llr::cuda {

// The backward-data through its plan, without the op counter (the transposed forward runs one).
Tensor conv2d_backward_data_planned(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g);

namespace {

constexpr size_t kWorkspaceLimit = size_t(1) << 30;  // bytes a convolution algorithm may use

bool env_flag_set(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && *v != '0';
}

// LLR_NO_TF32=1 keeps f32 convolutions and matrix products in full f32 whatever the context says, so that
// `llrtrain eval` computes what a PyTorch reference with TF32 disabled computes (tools/gpu_check.sh's PGD cross-check
// expects the same robust accuracy from both).
bool use_tf32() {
  static const bool disabled = env_flag_set("LLR_NO_TF32");
  return context().tf32() && !disabled;
}

// TF32 for f32 when enabled, tensor cores for bf16, plain math for f64.
cudnnMathType_t cudnn_math(DType t) {
  if (t == DType::bf16) return CUDNN_TENSOR_OP_MATH;
  if (t == DType::f32) return use_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
  return CUDNN_DEFAULT_MATH;
}

class TensorDesc {
 public:
  TensorDesc(const Shape& nhwc, DType t) {
    LLR_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_));
    LLR_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d_, CUDNN_TENSOR_NHWC, cudnn_dtype(t), int(nhwc[0]), int(nhwc[3]),
                                               int(nhwc[1]), int(nhwc[2])));
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  operator cudnnTensorDescriptor_t() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

class FilterDesc {
 public:
  FilterDesc(const Shape& krsc, DType t) {
    LLR_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d_));
    LLR_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d_, cudnn_dtype(t), CUDNN_TENSOR_NHWC, int(krsc[0]), int(krsc[3]),
                                               int(krsc[1]), int(krsc[2])));
  }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d_); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
  operator cudnnFilterDescriptor_t() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

class ConvDesc {
 public:
  ConvDesc(const Conv2dGeometry& g, DType t) {
    LLR_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d_));
    cudnnDataType_t compute = t == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    LLR_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d_, g.padding, g.padding, g.stride, g.stride, 1, 1,
                                                    CUDNN_CROSS_CORRELATION, compute));
    LLR_CUDNN_CHECK(cudnnSetConvolutionMathType(d_, cudnn_math(t)));
  }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d_); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
  operator cudnnConvolutionDescriptor_t() const { return d_; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

// Device scratch memory from the caching allocator, returned on scope exit.
class Workspace {
 public:
  // A storage, so the memory ledger counts it under the convolution that asked for it.
  explicit Workspace(size_t bytes) {
    if (bytes) storage_ = std::make_unique<Storage>(bytes, Device::cuda);
  }
  void* get() const { return storage_ ? storage_->data() : nullptr; }
  size_t bytes() const { return storage_ ? storage_->bytes() : 0; }

 private:
  std::unique_ptr<Storage> storage_;
};

using Direction = ConvDirection;

const char* direction_name(Direction d) {
  return d == Direction::forward ? "forward" : d == Direction::backward_data ? "backward-data" : "backward-filter";
}

// A convolution's identity for its plan: compared as numbers on every call, printed only in messages.
struct PlanKey {
  Direction direction;
  std::array<int64_t, 4> x, w;
  int stride, padding;
  DType dtype;
  int math;
  ConvSearch search;
  ConvRewrites rewrites;
  bool operator<(const PlanKey& o) const {
    return std::tie(direction, x, w, stride, padding, dtype, math, search, rewrites) <
           std::tie(o.direction, o.x, o.w, o.stride, o.padding, o.dtype, o.math, o.search, o.rewrites);
  }
  // Readable, because it names the convolution in the fallback note and in conv_plan_stats().
  std::string describe() const {
    std::ostringstream os;
    os << "conv2d " << direction_name(direction) << " x" << shape_str(Shape(x.begin(), x.end())) << " w"
       << shape_str(Shape(w.begin(), w.end())) << " stride " << stride << " pad " << padding << ' '
       << dtype_name(dtype) << " math " << math
       << (search == ConvSearch::legacy ? " legacy" : search == ConvSearch::engines ? " engines" : "")
       << (rewrites == ConvRewrites::off          ? " no-rewrites"
           : rewrites == ConvRewrites::products   ? " as-products"
           : rewrites == ConvRewrites::transposed ? " as-transposed"
                                                  : "");
    return os.str();
  }
};

PlanKey plan_key(Direction d, const Shape& x, const Shape& w, const Conv2dGeometry& g, DType t) {
  return {d, {x[0], x[1], x[2], x[3]}, {w[0], w[1], w[2], w[3]}, g.stride, g.padding, t, int(cudnn_math(t)),
          conv_search(), conv_rewrites()};
}

// What a convolution runs with: its cuDNN descriptors (built once) and legacy algorithm and workspace, or a graph-API
// engine that ran faster on the planning call (the legacy algorithm stays as its fallback), or one of the rewrites of
// engine/conv_rewrites.h, or (bf16 only) f32 because cuDNN has no bf16 algorithm for it. Decided once
// per key, including the fallback: retrying a refused bf16 search on every call would cost a full algorithm search
// per step.
enum class Rewrite { none, products, transposed };  // engine/conv_rewrites.h

struct ConvPlan {
  bool f32_fallback = false;
  int algo = 0;
  size_t workspace = 0;
  std::shared_ptr<TensorDesc> x, y;
  std::shared_ptr<FilterDesc> w;
  std::shared_ptr<ConvDesc> conv;
  std::shared_ptr<ConvEngine> engine;
  bool legacy_picked = false;  // whether algo and workspace hold a legacy pick
  bool engines_timed = false;  // graph-API engines were timed against the legacy pick
  // A rewrite that runs instead of the cuDNN pick (which, if any, stays as its fallback).
  Rewrite rewrite = Rewrite::none;
};

// LLR_CUDNN_HEURISTIC=1 takes cuDNN's heuristic first choice instead of benchmarking every algorithm (much faster
// under compute-sanitizer, where benchmarking is slow and its timings meaningless).
bool heuristic_only() {
  static const bool on = env_flag_set("LLR_CUDNN_HEURISTIC");
  return on;
}

// Diagnostics of bf16 precision and of algorithm choice (not for training runs):
//   LLR_CONV_F32=forward,backward-data,backward-filter (or all): those bf16 convolutions are computed in f32 from the
//     same bf16 inputs and rounded to bf16, as the fallback does, so a bf16-against-f32 comparison can tell cuDNN's
//     bf16 arithmetic from the rest of the engine;
//   LLR_PRINT_PLANS=1: each new plan's key, the algorithm picked, its workspace and the first few timings to stderr.
bool conv_in_f32_forced(Direction d) {
  static const std::string list = [] {
    const char* v = std::getenv("LLR_CONV_F32");
    return v ? "," + std::string(v) + "," : std::string();
  }();
  if (list.empty()) return false;
  return list.find(",all,") != std::string::npos ||
         list.find("," + std::string(direction_name(d)) + ",") != std::string::npos;
}

bool print_plans() {
  static const bool on = env_flag_set("LLR_PRINT_PLANS");
  return on;
}

std::map<PlanKey, ConvPlan>& plan_cache() {
  static std::map<PlanKey, ConvPlan> cache;
  return cache;
}

ConvPlanStats& plan_stats() {
  static ConvPlanStats stats;
  return stats;
}

// cuDNN cannot run a convolution in the requested dtype (as opposed to failing while running it): the bf16 path
// falls back to f32 on this, and only on this, so an out-of-memory or a sticky CUDA error still surfaces.
class ConvUnsupported : public Error {
 public:
  using Error::Error;
};

// cuDNN 9 groups its statuses by thousands: 2xxx a parameter it rejects, 3xxx a configuration it does not support.
void check_cudnn_runs(cudnnStatus_t status, const char* call, const PlanKey& key) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  std::string message = std::string(call) + " for " + key.describe() + ": cuDNN error: " + cudnnGetErrorString(status);
  int category = int(status) / 1000;
  if (category == 2 || category == 3) throw ConvUnsupported(message);
  LLR_FAIL(message);
}

// The cached plan of `key`, or a new one with its descriptors and the algorithm `search(plan)` picks (which throws
// ConvUnsupported when no algorithm can run it).
template <class Search>
ConvPlan& plan_for(const PlanKey& key, const Shape& x, const Shape& w, const Shape& y, const Conv2dGeometry& g,
                   const Tensor& out, Search search) {
  auto it = plan_cache().find(key);
  if (it != plan_cache().end()) return it->second;
  // cuDNN's search runs and times kernels, which a graph capture cannot: the step run eagerly before a recording
  // plans every convolution the recording meets.
  if (graph::recording()) graph::check_not_recording(("planning the convolution " + key.describe()).c_str());
  ++plan_stats().searches;
  ConvPlan plan;
  plan.x = std::make_shared<TensorDesc>(x, key.dtype);
  plan.y = std::make_shared<TensorDesc>(y, key.dtype);
  plan.w = std::make_shared<FilterDesc>(w, key.dtype);
  plan.conv = std::make_shared<ConvDesc>(g, key.dtype);
  search(plan);
  // The search ran its candidates into the call's output: poisoned again where the tests poison new allocations, so
  // the plan's own run must write every element of it (no candidate's values stand in for it).
  if (allocator().poison())
    LLR_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0xFF, size_t(out.numel()) * dtype_size(out.dtype()),
                                   context().stream()));
  return plan_cache().emplace(key, std::move(plan)).first->second;
}

// Picks the fastest successful result within the workspace limit.
template <class Perf>
void pick(const Perf* perf, int count, const PlanKey& key, ConvPlan& plan) {
  if (print_plans()) {
    std::fprintf(stderr, "plan %s:", key.describe().c_str());
    for (int i = 0; i < std::min(count, 4); ++i)
      std::fprintf(stderr, " [algo %d %s %.3f ms %zu MiB math %d]", int(perf[i].algo),
                   cudnnGetErrorString(perf[i].status), double(perf[i].time), perf[i].memory >> 20,
                   int(perf[i].mathType));
    std::fprintf(stderr, "\n");
  }
  for (int i = 0; i < count; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= kWorkspaceLimit) {
      plan.algo = int(perf[i].algo);
      plan.workspace = perf[i].memory;
      plan.legacy_picked = true;
      return;
    }
  std::ostringstream os;
  os << "cuDNN found no usable algorithm for " << key.describe() << " (" << count << " tried:";
  for (int i = 0; i < count; ++i) {
    os << ' ' << cudnnGetErrorString(perf[i].status);
    if (perf[i].status == CUDNN_STATUS_SUCCESS) os << " but needs " << (perf[i].memory >> 20) << " MiB";
  }
  os << ')';
  throw ConvUnsupported(os.str());
}

// The search mode (conv_plans.h).
ConvSearch initial_search() {
  const char* v = std::getenv("LLR_CUDNN_ENGINES");
  if (heuristic_only()) return ConvSearch::legacy;
  if (!v || !*v) return ConvSearch::both;
  std::string s(v);
  if (s == "0" || s == "legacy") return ConvSearch::legacy;
  if (s == "only" || s == "engines") return ConvSearch::engines;
  if (s != "1" && s != "both")
    std::fprintf(stderr, "llrtrain: note: LLR_CUDNN_ENGINES=%s is not 0, 1 or only; the default (1) applies\n", v);
  return ConvSearch::both;
}

ConvSearch& search_mode() {
  static ConvSearch mode = initial_search();
  return mode;
}

// The rewrites' mode (conv_plans.h).
ConvRewrites initial_rewrites() {
  const char* v = std::getenv("LLR_CONV_REWRITES");
  if (!v || !*v) return ConvRewrites::timed;
  std::string s(v);
  if (s == "0" || s == "off") return ConvRewrites::off;
  if (s == "products") return ConvRewrites::products;
  if (s == "transposed") return ConvRewrites::transposed;
  if (s != "1" && s != "timed")
    std::fprintf(stderr,
                 "llrtrain: note: LLR_CONV_REWRITES=%s is not 0, 1, products or transposed; the default (1) applies\n",
                 v);
  return ConvRewrites::timed;
}

ConvRewrites& rewrites_mode() {
  static ConvRewrites mode = initial_rewrites();
  return mode;
}

// Graph-API engines timed per plan: cuDNN's heuristics rank them, so the fast ones come first.
constexpr int kEngineCandidates = 10;
// Candidates within this factor of the fastest count as equally fast; the one with the smallest workspace wins.
constexpr double kTimeTie = 1.03;

// The fastest of three timings of `run` after one untimed run (which loads its kernels), in ms per run, on the
// profiler's CUDA clock; infinity when a run reports a failure. Each timing queues three runs back to back, so the
// host's time to issue a run (building the variant pack, say) hides behind the device's work as it does in a training
// step. A candidate whose first timing exceeds `cutoff` ms per run is not timed again.
template <class Run>
double fastest_ms(const Run& run, double cutoff = INFINITY) {
  constexpr int kTimings = 3, kCalls = 3;
  if (run() != CUDNN_STATUS_SUCCESS) {
    cudaGetLastError();  // a launch error of a refused configuration is not sticky (a sticky one stays)
    return INFINITY;
  }
  std::unique_ptr<profile::Clock> clock = profile::make_clock(Device::cuda);
  double best = INFINITY;
  for (int i = 0; i < kTimings && (i == 0 || best <= cutoff); ++i) {
    clock->reset();
    const int from = clock->stamp();
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    for (int c = 0; c < kCalls && st == CUDNN_STATUS_SUCCESS; ++c) st = run();
    const int to = clock->stamp();
    const double ms = clock->elapsed_ms(from, to);  // synchronizes: throws on a sticky error (a fault is not slow)
    // A refused run, or a kernel that failed to launch (its error is not sticky: cleared here), is no candidate.
    if (cudaGetLastError() != cudaSuccess || st != CUDNN_STATUS_SUCCESS) return INFINITY;
    best = std::min(best, ms / kCalls);
  }
  return best;
}

// A legacy algorithm's run of a plan: the cuDNN call with the plan's algorithm, into the given workspace.
using LegacyRun = std::function<cudnnStatus_t(const ConvPlan&, void* workspace, size_t bytes)>;

// After the legacy search of a bf16 plan: times the graph API's engines and the legacy pick on the planning call's
// tensors (x, w, y as ConvEngine::run takes them) and keeps an engine in the plan if one is fastest. A graph API that
// cannot describe the convolution leaves the legacy plan, noted in the stats.
void consider_engines(const PlanKey& key, const Shape& y_shape, ConvPlan& p, cudnnHandle_t h, void* x, void* w,
                      void* y, const LegacyRun& legacy, bool legacy_picked) {
  if (key.dtype != DType::bf16 || key.search == ConvSearch::legacy || !ConvEngine::aligned(x, w, y)) return;
  ConvProblem problem;
  problem.direction = key.direction;
  problem.x = key.x;
  problem.w = key.w;
  problem.y = {y_shape[0], y_shape[1], y_shape[2], y_shape[3]};
  problem.stride = key.stride;
  problem.padding = key.padding;
  problem.dtype = key.dtype;
  ConvEngineOffer offer;
  try {
    offer = conv_engines(h, problem, kWorkspaceLimit, kEngineCandidates);
  } catch (const std::exception& e) {
    cudaGetLastError();
    ++plan_stats().engine_failure_count;
    if (plan_stats().engine_failures.size() < 16)
      plan_stats().engine_failures.push_back(key.describe() + ": " + e.what());
    if (print_plans()) std::fprintf(stderr, "plan %s: graph API: %s\n", key.describe().c_str(), e.what());
    return;
  }
  double legacy_ms = INFINITY;
  if (legacy_picked) {
    Workspace ws(p.workspace);
    legacy_ms = fastest_ms([&] { return legacy(p, ws.get(), ws.bytes()); });
    // A heuristic pick that does not run is no fallback for an engine: the benchmark runs unless an engine wins.
    if (!std::isfinite(legacy_ms)) legacy_picked = p.legacy_picked = false;
  }
  // Engines far slower than the fastest so far (cuDNN's fallback list holds kernels 100x slower) are timed once only.
  std::vector<std::pair<double, std::shared_ptr<ConvEngine>>> timed;
  double fastest = legacy_ms;
  for (std::unique_ptr<ConvEngine>& e : offer.engines) {
    std::unique_ptr<Workspace> ws;
    try {
      ws = std::make_unique<Workspace>(e->workspace());
    } catch (const Error&) {
      cudaGetLastError();  // its workspace does not fit now: the candidate is left out
      continue;
    }
    ConvEngine* engine = e.get();
    const double ms = fastest_ms([&] { return engine->run(h, x, w, y, ws->get()); }, 3 * fastest);
    if (!std::isfinite(ms)) continue;
    fastest = std::min(fastest, ms);
    timed.emplace_back(ms, std::shared_ptr<ConvEngine>(std::move(e)));
  }
  const bool legacy_counts = legacy_picked && (key.search == ConvSearch::both || timed.empty());
  double best = legacy_counts ? legacy_ms : INFINITY;
  for (const auto& [ms, e] : timed) best = std::min(best, ms);
  // The smallest workspace among the candidates as fast as the fastest (the legacy pick first, on a tie).
  std::shared_ptr<ConvEngine> chosen;
  size_t chosen_bytes = SIZE_MAX;
  double chosen_ms = INFINITY;
  if (legacy_counts && legacy_ms <= best * kTimeTie) chosen_bytes = p.workspace, chosen_ms = legacy_ms;
  for (const auto& [ms, e] : timed) {
    if (ms > best * kTimeTie || e->workspace() >= chosen_bytes) continue;
    chosen = e;
    chosen_bytes = e->workspace();
    chosen_ms = ms;
  }
  if (print_plans()) {
    std::fprintf(stderr, "plan %s: legacy algo %d %.3f ms", key.describe().c_str(), legacy_picked ? p.algo : -1,
                 legacy_ms);
    for (const auto& [ms, e] : timed)
      std::fprintf(stderr, "; %s %.3f ms %zu MiB", e->name().c_str(), ms, e->workspace() >> 20);
    std::fprintf(stderr, "%s%s -> %s %.3f ms\n", offer.skipped.empty() ? "" : ";", offer.skipped.c_str(),
                 chosen ? chosen->name().c_str() : "legacy", chosen_ms);
  }
  p.engines_timed = true;
  p.engine = chosen;
}

// A plan's search. Legacy algorithms: cuDNN's heuristic (LLR_CUDNN_HEURISTIC) or its benchmark (cudnnFind*, which runs
// every algorithm, the slow non-tensor-core ones included: up to 100 ms each for a WRN-28-10 layer). A bf16 plan that
// may take a graph-API engine starts from the heuristic's legacy pick (none if the heuristic offers nothing usable),
// times the engines against it (consider_engines), and runs the benchmark only if no engine won: an engine is kept
// only when it ran faster than the heuristic's pick, which for an NHWC bf16 convolution is the tensor-core algorithm
// the benchmark picks too.
//   heuristic(perf, &count) and find(perf, &count, workspace, bytes) fill cuDNN's perf results of the direction;
//   engines(legacy_picked) is consider_engines on the planning call's tensors.
template <class Perf, int Count, class Heuristic, class Find>
void search_plan(const PlanKey& key, ConvPlan& p, const char* heuristic_call, Heuristic heuristic,
                 const char* find_call, Find find, const std::function<void(bool)>& engines) {
  auto legacy = [&](bool benchmark) {
    Perf perf[Count];
    int n = 0;
    if (!benchmark) {
      check_cudnn_runs(heuristic(perf, &n), heuristic_call, key);
    } else {
      Workspace ws(kWorkspaceLimit);
      check_cudnn_runs(find(perf, &n, ws.get(), ws.bytes()), find_call, key);
    }
    pick(perf, n, key, p);
  };
  if (!heuristic_only() && key.dtype == DType::bf16 && key.search != ConvSearch::legacy) {
    bool picked = true;
    try {
      legacy(false);
    } catch (const ConvUnsupported&) {
      picked = false;
    }
    engines(picked);
    if (p.engine) return;
  }
  legacy(!heuristic_only());
}

// Runs a planned convolution: its engine, or its legacy algorithm (also where the tensors are not aligned as the
// engine's descriptors promised). An engine that refuses to run outside a recording is dropped from the plan, which
// runs its legacy algorithm from then on (a plan without one is refused as unsupported: bf16 falls back to f32); in a
// recording the refusal fails the recording (the eager steps decide).
template <class Legacy>
void run_plan(ConvPlan& plan, const PlanKey& key, cudnnHandle_t h, void* x, void* w, void* y, const Legacy& legacy,
              const char* call) {
  if (!plan.conv) throw ConvUnsupported(key.describe() + ": no cuDNN plan (computed in f32)");
  const bool engine = plan.engine && ConvEngine::aligned(x, w, y);
  if (plan.engine && !engine && !plan.legacy_picked)
    throw ConvUnsupported(key.describe() + ": tensors not 16-byte aligned for the plan's engine, and no legacy pick");
  if (engine) {
    cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
    {
      Workspace ws(plan.engine->workspace());
      status = plan.engine->run(h, x, w, y, ws.get());
    }
    if (status == CUDNN_STATUS_SUCCESS) {
      ++plan_stats().engine_calls;
      return;
    }
    if (graph::recording()) check_cudnn_runs(status, "cudnnBackendExecute", key);
    cudaGetLastError();
    const std::string reason = key.describe() + ": " + plan.engine->name() + " failed: " + cudnnGetErrorString(status);
    ++plan_stats().engine_failure_count;
    if (plan_stats().engine_failures.size() < 16) plan_stats().engine_failures.push_back(reason);
    std::fprintf(stderr, "llrtrain: note: %s; the legacy algorithm runs it from now on\n", reason.c_str());
    plan.engine.reset();
    if (!plan.legacy_picked) throw ConvUnsupported(reason);
  }
  Workspace ws(plan.workspace);
  check_cudnn_runs(legacy(plan, ws.get(), ws.bytes()), call, key);
}

void alpha_beta(DType t, const void*& alpha, const void*& beta) {
  static const float f1 = 1.0f, f0 = 0.0f;
  static const double d1 = 1.0, d0 = 0.0;
  alpha = t == DType::f64 ? static_cast<const void*>(&d1) : static_cast<const void*>(&f1);
  beta = t == DType::f64 ? static_cast<const void*>(&d0) : static_cast<const void*>(&f0);
}

struct ConvShapes {
  Shape x, w, y;
};

ConvShapes conv_shapes(const Shape& x, const Shape& w, const Conv2dGeometry& g) {
  return {x, w, {x[0], conv2d_output_size(x[1], w[1], g), conv2d_output_size(x[2], w[2], g), w[0]}};
}

cublasComputeType_t cublas_compute(DType t) {
  if (t == DType::f64) return CUBLAS_COMPUTE_64F;
  if (t == DType::f32 && use_tf32()) return CUBLAS_COMPUTE_32F_FAST_TF32;
  return CUBLAS_COMPUTE_32F;
}

cudaDataType_t cuda_dtype(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::f64: return CUDA_R_64F;
    case DType::bf16: return CUDA_R_16BF;
    default: break;
  }
  LLR_FAIL("cuBLAS: unsupported dtype ", dtype_name(t));
}

// Column-major GEMM C = op(A) op(B) (m x n, inner k) on row-major tensors; see the callers for the mapping. A and B
// share a dtype, whose compute type the product takes; C is in it too, or (bf16 operands) in f32.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a, int64_t lda, const Tensor& b,
          int64_t ldb, Tensor& c, int64_t ldc) {
  const void *alpha, *beta;
  alpha_beta(a.dtype(), alpha, beta);
  cudaDataType_t t = cuda_dtype(a.dtype());
  LLR_CUBLAS_CHECK(cublasGemmEx(context().cublas(), trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, int(m), int(n), int(k), alpha, a.raw_data(), t,
                                int(lda), b.raw_data(), t, int(ldb), beta, c.raw_data(), cuda_dtype(c.dtype()),
                                int(ldc), cublas_compute(a.dtype()), CUBLAS_GEMM_DEFAULT));
}

// ---------------------------------------------------------------------------------------------------------------
// The rewrites of engine/conv_rewrites.h.
//   Products: cuBLAS products with the operands, shapes and transposes of matmul_nt, matmul_nn and matmul_tn (below;
//   the CPU test of the decomposition uses those), and unless the filter is 1x1 with padding 0 at stride 1 the two
//   copies (unfold, and fold for the backward-data), 16 bytes at a time where the channels are whole packs.
//   Transposed: the filter's transpose (a small copy per call: a recording replays it after every weight update), then
//   the backward-data with its own plan.
// ---------------------------------------------------------------------------------------------------------------
struct conv_unfold_k {};
struct conv_fold_k {};

// The unfolded input [M, J] (engine/conv_rewrites.h). With C a multiple of kPack, a pack lies in one tap of one row:
// kPack consecutive channels of one pixel, or padding.
template <class T>
Tensor unfold_as(const Tensor& x, const conv_rewrites::Unfold u) {
  const int64_t M = u.N * u.P * u.Q, J = u.R * u.S * u.C;
  Tensor cols = Tensor::empty({M, J}, x.dtype(), Layout::plain, Device::cuda);
  const T* px = ptr<T>(x);
  T* po = ptr<T>(cols);
  const bool whole_packs = u.C % kPack == 0;
  for_each_pack<conv_unfold_k>(cols.numel(), [=] __device__(int64_t i, int count) {
    if (whole_packs) {
      const int64_t from = conv_rewrites::unfold_source(i / J, i % J, u);
      Pack<T> v{};
      if (from >= 0) v = load_pack(px, from, count);
      store_pack(po, i, v, count);
      return;
    }
    for (int k = 0; k < count; ++k) {
      const int64_t e = i + k, from = conv_rewrites::unfold_source(e / J, e % J, u);
      st(po, e, from < 0 ? acc_t<T>(0) : ld(px, from));
    }
  });
  return cols;
}

// The backward-data's fold: each element of x's shape sums, over the filter's taps, the column that holds it. The
// columns come in T's accumulation type (f32 for bf16), so a bf16 sum is rounded once, as cuDNN's.
template <class T>
Tensor fold_as(const Tensor& t, const Shape& x_shape, const conv_rewrites::Unfold u) {
  const int64_t J = u.R * u.S * u.C, C = u.C;
  Tensor dx = Tensor::empty(x_shape, dtype_of_storage<T>(), Layout::nhwc, Device::cuda);
  const acc_t<T>* pt = ptr<acc_t<T>>(t);
  T* po = ptr<T>(dx);
  const bool whole_packs = C % kPack == 0;
  for_each_pack<conv_fold_k>(dx.numel(), [=] __device__(int64_t i, int count) {
    if (whole_packs) {
      const int64_t row = i / C, c = i % C;
      Pack<T> sum{};
      for (int64_t r = 0; r < u.R; ++r)
        for (int64_t s = 0; s < u.S; ++s) {
          const int64_t m = conv_rewrites::fold_row(row, r, s, u);
          if (m < 0) continue;
          const Pack<acc_t<T>> v = load_pack(pt, m * J + (r * u.S + s) * C + c, count);
#pragma unroll
          for (int k = 0; k < kPack; ++k) sum[k] += v[k];
        }
      store_pack(po, i, sum, count);
      return;
    }
    for (int k = 0; k < count; ++k) {
      const int64_t e = i + k, row = e / C, c = e % C;
      acc_t<T> sum = 0;
      for (int64_t r = 0; r < u.R; ++r)
        for (int64_t s = 0; s < u.S; ++s) {
          const int64_t m = conv_rewrites::fold_row(row, r, s, u);
          if (m >= 0) sum += ld(pt, m * J + (r * u.S + s) * C + c);
        }
      st(po, e, sum);
    }
  });
  return dx;
}

template <class T>
Tensor transposed_filter_as(const Tensor& w) {
  const int64_t K = w.dim(0), R = w.dim(1), S = w.dim(2), C = w.dim(3);
  Tensor out = Tensor::empty({C, R, S, K}, w.dtype(), Layout::krsc, Device::cuda);
  const T* pw = ptr<T>(w);
  T* po = ptr<T>(out);
  for_each(out.numel(),
           [=] __device__(int64_t i) { po[i] = pw[conv_rewrites::transposed_filter_source(i, K, R, S, C)]; });
  return out;
}

conv_rewrites::Unfold unfold_geometry(const Shape& x, const Shape& w, const Conv2dGeometry& g) {
  return {x[0], x[1], x[2], x[3], w[1], w[2], conv2d_output_size(x[1], w[1], g), conv2d_output_size(x[2], w[2], g),
          g.stride, g.padding};
}

// x's unfolded input [M, J]; x itself for a 1x1 filter with padding 0 at stride 1.
Tensor unfolded(const Tensor& x, const conv_rewrites::Unfold& u) {
  if (conv_rewrites::unfold_is_identity(u)) return x;
  return LLR_CUDA_DISPATCH(x.dtype(), "conv2d unfold", unfold_as, x, u);
}

Tensor products_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) {
  const conv_rewrites::Unfold u = unfold_geometry(x.shape(), w.shape(), g);
  const int64_t M = u.N * u.P * u.Q, J = u.R * u.S * u.C, K = w.dim(0);
  Tensor cols = unfolded(x, u);
  Tensor y = Tensor::empty({u.N, u.P, u.Q, K}, x.dtype(), Layout::nhwc, Device::cuda);
  gemm(true, false, K, M, J, w, J, cols, J, y, K);  // y[M, K] = cols[M, J] w[K, J]^T: matmul_nt(cols, w)
  return y;
}

Tensor products_backward_data(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g) {
  const conv_rewrites::Unfold u = unfold_geometry(x_shape, w.shape(), g);
  const int64_t M = u.N * u.P * u.Q, J = u.R * u.S * u.C, K = w.dim(0);
  const bool identity = conv_rewrites::unfold_is_identity(u);
  // The columns to fold in the accumulation type (f32 for bf16), so that the fold rounds once.
  Tensor t = identity ? Tensor::empty(x_shape, gy.dtype(), Layout::nhwc, Device::cuda)
                      : Tensor::empty({M, J}, gy.dtype() == DType::bf16 ? DType::f32 : gy.dtype(), Layout::plain,
                                      Device::cuda);
  gemm(false, false, J, M, K, w, J, gy, K, t, J);  // t[M, J] = gy[M, K] w[K, J]: matmul_nn(gy, w)
  if (identity) return t;
  return LLR_CUDA_DISPATCH(gy.dtype(), "conv2d fold", fold_as, t, x_shape, u);
}

Tensor products_backward_filter(const Tensor& x, const Tensor& gy, const Shape& w_shape, const Conv2dGeometry& g) {
  const conv_rewrites::Unfold u = unfold_geometry(x.shape(), w_shape, g);
  const int64_t M = u.N * u.P * u.Q, J = u.R * u.S * u.C, K = w_shape[0];
  Tensor cols = unfolded(x, u);
  Tensor dw = Tensor::empty(w_shape, x.dtype(), Layout::krsc, Device::cuda);
  gemm(false, true, J, K, M, cols, J, gy, K, dw, J);  // dw[K, J] = gy[M, K]^T cols[M, J]: matmul_tn(gy, cols)
  return dw;
}

Tensor transposed_forward(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) {
  Tensor wt = LLR_CUDA_DISPATCH(w.dtype(), "conv2d transposed filter", transposed_filter_as, w);
  return conv2d_backward_data_planned(x, wt, {x.dim(0), x.dim(1), x.dim(2), w.dim(0)}, g);
}

// Elements of an unfolded input up to which a plan may run as products (128 MiB in bf16), unless the filter is 1x1
// with padding 0 (no copy, or a copy smaller than the input).
constexpr int64_t kUnfoldMaxElements = int64_t(1) << 26;

// Whether a plan may run as the products: a filter engine/conv_rewrites.h offers, dimensions cuBLAS takes as int, and
// an unfolded input of bounded size.
bool products_candidate(const PlanKey& key) {
  if (key.rewrites != ConvRewrites::timed && key.rewrites != ConvRewrites::products) return false;
  const int64_t R = key.w[1], S = key.w[2], C = key.x[3];
  if (!conv_rewrites::products_apply(R, S, C, key.padding)) return false;
  const Conv2dGeometry g{key.stride, key.padding};
  const int64_t rows = key.x[0] * std::max(key.x[1] * key.x[2], conv2d_output_size(key.x[1], R, g) *
                                                                   conv2d_output_size(key.x[2], S, g));
  const int64_t J = R * S * C;
  return rows < int64_t(INT32_MAX) && J < int64_t(INT32_MAX) && key.w[0] < int64_t(INT32_MAX) &&
         ((R == 1 && S == 1 && key.padding == 0) || rows * J <= kUnfoldMaxElements);
}

bool transposed_candidate(const PlanKey& key) {
  return (key.rewrites == ConvRewrites::timed || key.rewrites == ConvRewrites::transposed) &&
         key.direction == Direction::forward &&
         conv_rewrites::transposed_applies(key.w[1], key.w[2], key.stride, key.padding);
}

// The "products" and "transposed" modes: that rewrite where it applies, without a cuDNN search.
bool rewritten_without_search(const PlanKey& key, ConvPlan& p) {
  if (key.rewrites == ConvRewrites::products && products_candidate(key))
    p.rewrite = Rewrite::products;
  else if (key.rewrites == ConvRewrites::transposed && transposed_candidate(key))
    p.rewrite = Rewrite::transposed;
  return p.rewrite != Rewrite::none;
}

// After a cuDNN search, where rewrites apply: each (products; transposed for a forward) run by run_rewrite and timed
// against the plan's pick (its engine or legacy algorithm: run_pick(workspace)) on the planning call's tensors; the
// plan runs the fastest if it beats the pick.
template <class RunPick, class RunRewrite>
void consider_rewrites(const PlanKey& key, ConvPlan& p, const RunPick& run_pick, const RunRewrite& run_rewrite) {
  std::vector<std::pair<Rewrite, const char*>> candidates;
  if (products_candidate(key)) candidates.emplace_back(Rewrite::products, "cuBLAS products");
  if (transposed_candidate(key)) candidates.emplace_back(Rewrite::transposed, "transposed backward-data");
  if (candidates.empty() || heuristic_only()) return;
  double pick_ms = INFINITY;
  {
    Workspace ws(p.engine ? p.engine->workspace() : p.workspace);
    pick_ms = fastest_ms([&] { return run_pick(ws.get()); });
  }
  double best = pick_ms;
  Rewrite chosen = Rewrite::none;
  std::ostringstream line;
  line << "plan " << key.describe() << ": " << (p.engine ? p.engine->name() : std::string("legacy")) << ' '
       << std::fixed << std::setprecision(3) << pick_ms << " ms";
  for (const auto& [rewrite, name] : candidates) {
    const double ms = fastest_ms(
        [&, rewrite = rewrite] {
          try {
            run_rewrite(rewrite);
            return CUDNN_STATUS_SUCCESS;
          } catch (const Error&) {  // cuBLAS refused, no memory for the copies now, or no plan for the transpose
            return CUDNN_STATUS_EXECUTION_FAILED;
          }
        },
        3 * best);
    line << "; " << name << ' ' << ms << " ms";
    if (ms * kTimeTie < best) {
      best = ms;
      chosen = rewrite;
    }
  }
  if (print_plans())
    std::fprintf(stderr, "%s -> %s\n", line.str().c_str(),
                 chosen == Rewrite::products ? "products" : chosen == Rewrite::transposed ? "transposed" : "cuDNN");
  p.rewrite = chosen;
}

// A rewritten plan's run (run_rewrite(p.rewrite)), or an undefined tensor when the rewrite fails outside a recording
// (the transpose's backward-data has fallen back to f32, no memory for the copies now, cuBLAS refused) and the plan
// has a cuDNN pick of its own, which then runs from now on. Without one (the "products" and "transposed" modes), or
// inside a recording, the failure goes on (a refusal to the bf16 fallback, as any other).
template <class RunRewrite>
Tensor rewrite_or_undefined(ConvPlan& p, const PlanKey& key, const RunRewrite& run_rewrite) {
  const bool products = p.rewrite == Rewrite::products;
  try {
    Tensor out = run_rewrite(p.rewrite);
    ++(products ? plan_stats().product_calls : plan_stats().transposed_calls);
    return out;
  } catch (const Error& e) {
    if (graph::recording() || (!p.legacy_picked && !p.engine)) throw;
    cudaGetLastError();  // a failed launch or allocation is not sticky (a sticky error stays, and the pick reports it)
    p.rewrite = Rewrite::none;
    std::fprintf(stderr, "llrtrain: note: %s: the %s failed (%s); cuDNN's pick runs it from now on\n",
                 key.describe().c_str(), products ? "cuBLAS products" : "transpose's backward-data", e.what());
    return Tensor();
  }
}

// What differs between the three directions of a convolution: cuDNN's calls and their perf type, and which of the
// tensors (x, w, y in ConvEngine::run's order: x or dx, w or dw, y or dy) the call writes.
struct ForwardApi {
  using Perf = cudnnConvolutionFwdAlgoPerf_t;
  static constexpr int kCount = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  static constexpr int kOut = 2;
  static constexpr const char* kHeuristic = "cudnnGetConvolutionForwardAlgorithm_v7";
  static constexpr const char* kFind = "cudnnFindConvolutionForwardAlgorithmEx";
  static constexpr const char* kRun = "cudnnConvolutionForward";
  static cudnnStatus_t heuristic(cudnnHandle_t h, const ConvPlan& p, Perf* perf, int* n) {
    return cudnnGetConvolutionForwardAlgorithm_v7(h, *p.x, *p.w, *p.conv, *p.y, kCount, n, perf);
  }
  static cudnnStatus_t find(cudnnHandle_t h, const ConvPlan& p, void* const* io, Perf* perf, int* n, void* ws,
                            size_t bytes) {
    return cudnnFindConvolutionForwardAlgorithmEx(h, *p.x, io[0], *p.w, io[1], *p.conv, *p.y, io[2], kCount, n, perf,
                                                  ws, bytes);
  }
  static cudnnStatus_t run(cudnnHandle_t h, const ConvPlan& p, void* const* io, void* ws, size_t bytes,
                           const void* alpha, const void* beta) {
    return cudnnConvolutionForward(h, alpha, *p.x, io[0], *p.w, io[1], *p.conv, cudnnConvolutionFwdAlgo_t(p.algo), ws,
                                   bytes, beta, *p.y, io[2]);
  }
};

struct BackwardDataApi {
  using Perf = cudnnConvolutionBwdDataAlgoPerf_t;
  static constexpr int kCount = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  static constexpr int kOut = 0;
  static constexpr const char* kHeuristic = "cudnnGetConvolutionBackwardDataAlgorithm_v7";
  static constexpr const char* kFind = "cudnnFindConvolutionBackwardDataAlgorithmEx";
  static constexpr const char* kRun = "cudnnConvolutionBackwardData";
  static cudnnStatus_t heuristic(cudnnHandle_t h, const ConvPlan& p, Perf* perf, int* n) {
    return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, *p.w, *p.y, *p.conv, *p.x, kCount, n, perf);
  }
  static cudnnStatus_t find(cudnnHandle_t h, const ConvPlan& p, void* const* io, Perf* perf, int* n, void* ws,
                            size_t bytes) {
    return cudnnFindConvolutionBackwardDataAlgorithmEx(h, *p.w, io[1], *p.y, io[2], *p.conv, *p.x, io[0], kCount, n,
                                                       perf, ws, bytes);
  }
  static cudnnStatus_t run(cudnnHandle_t h, const ConvPlan& p, void* const* io, void* ws, size_t bytes,
                           const void* alpha, const void* beta) {
    return cudnnConvolutionBackwardData(h, alpha, *p.w, io[1], *p.y, io[2], *p.conv,
                                        cudnnConvolutionBwdDataAlgo_t(p.algo), ws, bytes, beta, *p.x, io[0]);
  }
};

struct BackwardFilterApi {
  using Perf = cudnnConvolutionBwdFilterAlgoPerf_t;
  static constexpr int kCount = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
  static constexpr int kOut = 1;
  static constexpr const char* kHeuristic = "cudnnGetConvolutionBackwardFilterAlgorithm_v7";
  static constexpr const char* kFind = "cudnnFindConvolutionBackwardFilterAlgorithmEx";
  static constexpr const char* kRun = "cudnnConvolutionBackwardFilter";
  static cudnnStatus_t heuristic(cudnnHandle_t h, const ConvPlan& p, Perf* perf, int* n) {
    return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, *p.x, *p.y, *p.conv, *p.w, kCount, n, perf);
  }
  static cudnnStatus_t find(cudnnHandle_t h, const ConvPlan& p, void* const* io, Perf* perf, int* n, void* ws,
                            size_t bytes) {
    return cudnnFindConvolutionBackwardFilterAlgorithmEx(h, *p.x, io[0], *p.y, io[2], *p.conv, *p.w, io[1], kCount, n,
                                                         perf, ws, bytes);
  }
  static cudnnStatus_t run(cudnnHandle_t h, const ConvPlan& p, void* const* io, void* ws, size_t bytes,
                           const void* alpha, const void* beta) {
    return cudnnConvolutionBackwardFilter(h, alpha, *p.x, io[0], *p.y, io[2], *p.conv,
                                          cudnnConvolutionBwdFilterAlgo_t(p.algo), ws, bytes, beta, *p.w, io[1]);
  }
};

// One convolution of the direction Api, with the inputs `in` (x, w, y in ConvEngine::run's order; null in the output's
// slot): its plan looked up once, made on a first call (cuDNN's search, the graph-API engines, the rewrites), and
// run. run_rewrite(r) computes the convolution by the rewrite r (for a rewritten plan, and to time the rewrites).
template <class Api, class RunRewrite>
Tensor convolve(Direction d, const ConvShapes& s, const Conv2dGeometry& g, DType dtype,
                const std::array<const Tensor*, 3>& in, const RunRewrite& run_rewrite) {
  const PlanKey key = plan_key(d, s.x, s.w, g, dtype);
  auto it = plan_cache().find(key);
  ConvPlan* cached = it == plan_cache().end() ? nullptr : &it->second;
  if (cached && cached->rewrite != Rewrite::none)
    if (Tensor out = rewrite_or_undefined(*cached, key, run_rewrite); out.defined()) return out;
  const Shape& out_shape = Api::kOut == 0 ? s.x : Api::kOut == 1 ? s.w : s.y;
  Tensor out = Tensor::empty(out_shape, dtype, Api::kOut == 1 ? Layout::krsc : Layout::nhwc, Device::cuda);
  void* io[3];
  for (int k = 0; k < 3; ++k) io[k] = k == Api::kOut ? out.raw_data() : const_cast<void*>(in[k]->raw_data());
  cudnnHandle_t h = context().cudnn();
  const void *alpha, *beta;
  alpha_beta(dtype, alpha, beta);
  auto legacy = [&](const ConvPlan& p, void* ws, size_t bytes) { return Api::run(h, p, io, ws, bytes, alpha, beta); };
  if (!cached) {
    cached = &plan_for(key, s.x, s.w, s.y, g, out, [&](ConvPlan& p) {
      if (rewritten_without_search(key, p)) return;
      search_plan<typename Api::Perf, Api::kCount>(
          key, p, Api::kHeuristic,
          [&](typename Api::Perf* perf, int* n) { return Api::heuristic(h, p, perf, n); }, Api::kFind,
          [&](typename Api::Perf* perf, int* n, void* ws, size_t bytes) {
            return Api::find(h, p, io, perf, n, ws, bytes);
          },
          [&](bool picked) { consider_engines(key, s.y, p, h, io[0], io[1], io[2], legacy, picked); });
      consider_rewrites(
          key, p,
          [&](void* ws) {
            return p.engine ? p.engine->run(h, io[0], io[1], io[2], ws) : legacy(p, ws, p.workspace);
          },
          [&](Rewrite r) { run_rewrite(r); });
    });
    if (cached->rewrite != Rewrite::none)
      if (Tensor rewritten = rewrite_or_undefined(*cached, key, run_rewrite); rewritten.defined()) return rewritten;
  }
  run_plan(*cached, key, h, io[0], io[1], io[2], legacy, Api::kRun);
  return out;
}

}  // namespace

Tensor conv2d_forward_as(const Tensor& x, const Tensor& w, const Conv2dGeometry& g);
Tensor conv2d_backward_data_as(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g);
Tensor conv2d_backward_filter_as(const Tensor& x, const Tensor& gy, const Shape& w_shape, const Conv2dGeometry& g);

namespace {
// cuDNN may offer no bf16 algorithm for a shape (e.g. a 3-channel NHWC stem). Such a convolution is computed in f32
// and converted back rather than failing the run; the decision is cached with the shape's plan and reported once.
template <class F>
Tensor with_bf16_fallback(Direction d, const Shape& x, const Shape& w, const Conv2dGeometry& g, DType dtype,
                          F run_in) {
  if (dtype != DType::bf16) return run_in(dtype);
  if (conv_in_f32_forced(d)) return run_in(DType::f32).to(DType::bf16);
  PlanKey key = plan_key(d, x, w, g, dtype);
  auto it = plan_cache().find(key);
  if (it == plan_cache().end() || !it->second.f32_fallback) {
    try {
      return run_in(DType::bf16);
    } catch (const ConvUnsupported& e) {
      if (graph::recording()) throw;  // a failed capture decides nothing for the eager steps
      ConvPlan fallback;
      fallback.f32_fallback = true;
      plan_cache()[key] = fallback;
      plan_stats().bf16_fallbacks.push_back(e.what());
      std::fprintf(stderr, "llrtrain: note: %s; this bf16 convolution is computed in f32 from now on\n", e.what());
    }
  }
  ++plan_stats().bf16_fallback_calls;
  return run_in(DType::f32).to(DType::bf16);
}
}  // namespace

// The plan counts from the cached plans (what each runs now); the call and failure counts as kept.
ConvPlanStats conv_plan_stats() {
  ConvPlanStats s = plan_stats();
  for (const auto& [key, p] : plan_cache()) {
    s.product_plans += p.rewrite == Rewrite::products;
    s.transposed_plans += p.rewrite == Rewrite::transposed;
    if (p.rewrite == Rewrite::none && p.engines_timed) ++(p.engine ? s.engine_plans : s.legacy_plans);
  }
  return s;
}
ConvSearch conv_search() { return search_mode(); }
void set_conv_search(ConvSearch s) { search_mode() = s; }
ConvRewrites conv_rewrites() { return rewrites_mode(); }
void set_conv_rewrites(ConvRewrites m) { rewrites_mode() = m; }

Tensor CudaBackend::conv2d_forward(const Tensor& x_in, const Tensor& w_in, const Conv2dGeometry& g) {
  return with_bf16_fallback(Direction::forward, x_in.shape(), w_in.shape(), g, x_in.dtype(), [&](DType t) {
    return conv2d_forward_as(x_in.dtype() == t ? x_in : x_in.to(t), w_in.dtype() == t ? w_in : w_in.to(t), g);
  });
}

Tensor CudaBackend::conv2d_backward_data(const Tensor& gy_in, const Tensor& w_in, const Shape& x_shape,
                                         const Conv2dGeometry& g) {
  return with_bf16_fallback(Direction::backward_data, x_shape, w_in.shape(), g, gy_in.dtype(), [&](DType t) {
    return conv2d_backward_data_as(gy_in.dtype() == t ? gy_in : gy_in.to(t), w_in.dtype() == t ? w_in : w_in.to(t),
                                   x_shape, g);
  });
}

Tensor CudaBackend::conv2d_backward_filter(const Tensor& x_in, const Tensor& gy_in, const Shape& w_shape,
                                           const Conv2dGeometry& g) {
  return with_bf16_fallback(Direction::backward_filter, x_in.shape(), w_shape, g, x_in.dtype(), [&](DType t) {
    return conv2d_backward_filter_as(x_in.dtype() == t ? x_in : x_in.to(t), gy_in.dtype() == t ? gy_in : gy_in.to(t),
                                     w_shape, g);
  });
}

Tensor conv2d_forward_as(const Tensor& x, const Tensor& w, const Conv2dGeometry& g) {
  ++op_counters().conv2d_forward;
  return convolve<ForwardApi>(Direction::forward, conv_shapes(x.shape(), w.shape(), g), g, x.dtype(), {&x, &w, nullptr},
                              [&](Rewrite r) {
                                return r == Rewrite::products ? products_forward(x, w, g) : transposed_forward(x, w, g);
                              });
}

Tensor conv2d_backward_data_as(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g) {
  ++op_counters().conv2d_backward_data;
  return conv2d_backward_data_planned(gy, w, x_shape, g);
}

Tensor conv2d_backward_data_planned(const Tensor& gy, const Tensor& w, const Shape& x_shape, const Conv2dGeometry& g) {
  return convolve<BackwardDataApi>(Direction::backward_data, conv_shapes(x_shape, w.shape(), g), g, gy.dtype(),
                                   {nullptr, &w, &gy},
                                   [&](Rewrite) { return products_backward_data(gy, w, x_shape, g); });
}

Tensor conv2d_backward_filter_as(const Tensor& x, const Tensor& gy, const Shape& w_shape, const Conv2dGeometry& g) {
  ++op_counters().conv2d_backward_filter;
  return convolve<BackwardFilterApi>(Direction::backward_filter, conv_shapes(x.shape(), w_shape, g), g, x.dtype(),
                                     {&x, nullptr, &gy},
                                     [&](Rewrite) { return products_backward_filter(x, gy, w_shape, g); });
}

// Row-major C[M,N] = A[M,K] B[N,K]^T  <=>  column-major C^T = B A^T: gemm(T, N, N, M, K, B, K, A, K, C, N).
Tensor CudaBackend::matmul_nt(const Tensor& a, const Tensor& b) {
  ++op_counters().matmul;
  int64_t m = a.dim(0), k = a.dim(1), n = b.dim(0);
  Tensor c = Tensor::empty({m, n}, a.dtype(), Layout::plain, Device::cuda);
  gemm(true, false, n, m, k, b, k, a, k, c, n);
  return c;
}

// Row-major C[M,N] = A[M,K] B[K,N]  <=>  C^T = B^T A^T: gemm(N, N, N, M, K, B, N, A, K, C, N).
Tensor CudaBackend::matmul_nn(const Tensor& a, const Tensor& b) {
  ++op_counters().matmul;
  int64_t m = a.dim(0), k = a.dim(1), n = b.dim(1);
  Tensor c = Tensor::empty({m, n}, a.dtype(), Layout::plain, Device::cuda);
  gemm(false, false, n, m, k, b, n, a, k, c, n);
  return c;
}

// Row-major C[M,N] = A[K,M]^T B[K,N]  <=>  C^T = B^T A: gemm(N, T, N, M, K, B, N, A, M, C, N).
Tensor CudaBackend::matmul_tn(const Tensor& a, const Tensor& b) {
  ++op_counters().matmul;
  int64_t k = a.dim(0), m = a.dim(1), n = b.dim(1);
  Tensor c = Tensor::empty({m, n}, a.dtype(), Layout::plain, Device::cuda);
  gemm(false, true, n, m, k, b, n, a, m, c, n);
  return c;
}

}  // namespace llr::cuda
