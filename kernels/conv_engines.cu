// cuDNN's graph API for single convolutions (conv_engines.h). Every descriptor is owned by one Desc and destroyed with
// it; an execution plan keeps the tensors, operation, graph and engine configuration it was finalized from.
#include "kernels/conv_engines.h"

#include <algorithm>
#include <sstream>
#include <utility>

#include "engine/error.h"

namespace llr::cuda {

cudnnDataType_t cudnn_dtype(DType t) {
  switch (t) {
    case DType::f32: return CUDNN_DATA_FLOAT;
    case DType::f64: return CUDNN_DATA_DOUBLE;
    case DType::bf16: return CUDNN_DATA_BFLOAT16;
    default: break;
  }
  LLR_FAIL("cuDNN: unsupported dtype ", dtype_name(t));
}

namespace {

// A backend descriptor, owned.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) { check(cudnnBackendCreateDescriptor(type, &d_), "create"); }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }

  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const void* values) {
    check(cudnnBackendSetAttribute(d_, name, type, count, values), "set attribute");
    return *this;
  }
  Desc& set(cudnnBackendAttributeName_t name, const Desc& value) {
    cudnnBackendDescriptor_t v = value.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
  }
  Desc& set_int64(cudnnBackendAttributeName_t name, std::initializer_list<int64_t> values) {
    std::vector<int64_t> v(values);
    return set(name, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data());
  }
  void finalize(const char* what) { check(cudnnBackendFinalize(d_), what); }
  // Status instead of an exception, for the engine configurations that may legitimately refuse.
  cudnnStatus_t try_finalize() { return cudnnBackendFinalize(d_); }

 private:
  static void check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS) LLR_FAIL("cuDNN graph API: ", what, ": ", cudnnGetErrorString(s));
  }
  cudnnBackendDescriptor_t d_ = nullptr;
};

// The tensors' unique ids in the variant pack.
constexpr int64_t kUidX = 1, kUidW = 2, kUidY = 3;
constexpr int64_t kAlignment = 16;

// A channels-last 4-D tensor [a, b, c, d] (NHWC activations, KRSC filters) as cuDNN's logical [a, d, b, c] with the
// strides of the memory layout.
std::unique_ptr<Desc> tensor(int64_t uid, const std::array<int64_t, 4>& s, DType t) {
  auto d = std::make_unique<Desc>(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  cudnnDataType_t dt = cudnn_dtype(t);
  int64_t align = kAlignment;
  d->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt)
      .set_int64(CUDNN_ATTR_TENSOR_DIMENSIONS, {s[0], s[3], s[1], s[2]})
      .set_int64(CUDNN_ATTR_TENSOR_STRIDES, {s[1] * s[2] * s[3], 1, s[2] * s[3], s[3]})
      .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid)
      .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
  d->finalize("finalize tensor");
  return d;
}

// The engine's notes of one kind, as ints (the note enums are ints in size); false if cuDNN cannot say.
static_assert(sizeof(cudnnBackendNumericalNote_t) == sizeof(int) && sizeof(cudnnBackendBehaviorNote_t) == sizeof(int),
              "notes are read into an int array");
bool notes(const Desc& engine, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int max,
           std::vector<int>* out) {
  std::vector<int> v(static_cast<size_t>(max), -1);
  int64_t count = 0;
  if (cudnnBackendGetAttribute(engine.get(), name, type, max, &count, v.data()) != CUDNN_STATUS_SUCCESS) return false;
  v.resize(static_cast<size_t>(std::clamp<int64_t>(count, 0, max)));
  *out = std::move(v);
  return true;
}

bool has(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

struct ConvEngine::Parts {
  // The tensors, convolution, operation and graph the plan was built from, shared by a problem's engines.
  std::shared_ptr<std::vector<std::unique_ptr<Desc>>> shared;
  std::unique_ptr<Desc> config, plan;
  size_t workspace = 0;
  std::string name;
};

ConvEngine::ConvEngine(std::shared_ptr<Parts> parts) : parts_(std::move(parts)) {}
ConvEngine::~ConvEngine() = default;
size_t ConvEngine::workspace() const { return parts_->workspace; }
const std::string& ConvEngine::name() const { return parts_->name; }

bool ConvEngine::aligned(const void* x, const void* w, const void* y) {
  auto ok = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlignment == 0; };
  return ok(x) && ok(w) && ok(y);
}

cudnnStatus_t ConvEngine::run(cudnnHandle_t h, void* x, void* w, void* y, void* workspace) const {
  cudnnBackendDescriptor_t pack = nullptr;
  cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
  if (s != CUDNN_STATUS_SUCCESS) return s;
  void* pointers[3] = {x, w, y};
  const int64_t uids[3] = {kUidX, kUidW, kUidY};
  s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, pointers);
  if (s == CUDNN_STATUS_SUCCESS)
    s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids);
  if (s == CUDNN_STATUS_SUCCESS)
    s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(pack);
  if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendExecute(h, parts_->plan->get(), pack);
  cudnnBackendDestroyDescriptor(pack);
  return s;
}

ConvEngineOffer conv_engines(cudnnHandle_t h, const ConvProblem& p, size_t workspace_limit, int limit) {
  auto built = std::make_shared<std::vector<std::unique_ptr<Desc>>>();
  std::unique_ptr<Desc> x = tensor(kUidX, p.x, p.dtype), w = tensor(kUidW, p.w, p.dtype),
                        y = tensor(kUidY, p.y, p.dtype);

  auto conv = std::make_unique<Desc>(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  cudnnDataType_t compute = p.dtype == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  int64_t spatial = 2;
  conv->set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute)
      .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode)
      .set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial)
      .set_int64(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, {p.padding, p.padding})
      .set_int64(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, {p.padding, p.padding})
      .set_int64(CUDNN_ATTR_CONVOLUTION_DILATIONS, {1, 1})
      .set_int64(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, {p.stride, p.stride});
  conv->finalize("finalize convolution");

  // alpha 1, beta 0: the output is overwritten. A double-precision convolution takes double scalars.
  const float alpha_f = 1.0f, beta_f = 0.0f;
  const double alpha_d = 1.0, beta_d = 0.0;
  const bool dbl = p.dtype == DType::f64;
  const cudnnBackendAttributeType_t scalar = dbl ? CUDNN_TYPE_DOUBLE : CUDNN_TYPE_FLOAT;
  const void* alpha = dbl ? static_cast<const void*>(&alpha_d) : static_cast<const void*>(&alpha_f);
  const void* beta = dbl ? static_cast<const void*>(&beta_d) : static_cast<const void*>(&beta_f);

  // The operation's descriptor type and the attribute names of its x, w and y tensors (dx, w, dy for backward-data;
  // x, dw, dy for backward-filter), convolution, alpha and beta, in ConvDirection's order.
  struct OpNames {
    cudnnBackendDescriptorType_t type;
    cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
  };
  static const OpNames kOps[] = {
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA},
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA},
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA},
  };
  const OpNames& names = kOps[static_cast<int>(p.direction)];
  auto op = std::make_unique<Desc>(names.type);
  op->set(names.x, *x)
      .set(names.w, *w)
      .set(names.y, *y)
      .set(names.conv, *conv)
      .set(names.alpha, scalar, 1, alpha)
      .set(names.beta, scalar, 1, beta);
  op->finalize("finalize operation");

  auto graph = std::make_unique<Desc>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  cudnnBackendDescriptor_t ops = op->get();
  graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ops)
      .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
  graph->finalize("finalize operation graph");

  const Desc& graph_ref = *graph;
  built->push_back(std::move(x));
  built->push_back(std::move(w));
  built->push_back(std::move(y));
  built->push_back(std::move(conv));
  built->push_back(std::move(op));
  built->push_back(std::move(graph));

  ConvEngineOffer offer;
  std::ostringstream skipped;
  int left_out = 0;
  // The fallback list (slow, general kernels) only when mode A offers nothing usable.
  for (cudnnBackendHeurMode_t heur : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    if (!offer.engines.empty()) break;
    Desc heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    heuristics.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph_ref)
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &heur);
    if (heuristics.try_finalize() != CUDNN_STATUS_SUCCESS) {
      skipped << " heuristics mode " << int(heur) << " unavailable;";
      continue;
    }
    int64_t count = 0;
    if (cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                 &count, nullptr) != CUDNN_STATUS_SUCCESS ||
        count <= 0)
      continue;
    std::vector<std::unique_ptr<Desc>> configs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      configs.push_back(std::make_unique<Desc>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
      raw.push_back(configs.back()->get());
    }
    int64_t returned = 0;
    if (cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 count, &returned, raw.data()) != CUDNN_STATUS_SUCCESS)
      continue;
    for (int64_t i = 0; i < std::min(returned, count) && static_cast<int>(offer.engines.size()) < limit; ++i) {
      std::unique_ptr<Desc>& config = configs[static_cast<size_t>(i)];
      Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
      cudnnBackendDescriptor_t engine_raw = engine.get();
      int64_t n = 0;
      if (cudnnBackendGetAttribute(config->get(), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                   &engine_raw) != CUDNN_STATUS_SUCCESS) {
        ++left_out;
        continue;
      }
      // An engine whose notes cannot be read is left out: it might be one of those below.
      std::vector<int> numerical, behavior;
      if (!notes(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE, CUDNN_NUMERICAL_NOTE_TYPE_COUNT,
                 &numerical) ||
          !notes(engine, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT,
                 &behavior) ||
          has(behavior, CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) ||
          has(behavior, CUDNN_BEHAVIOR_NOTE_CUBLASLT_DEPENDENCY) ||
          has(numerical, CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) ||
          has(numerical, CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION)) {
        ++left_out;
        continue;
      }
      int64_t index = -1;
      cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index);
      std::ostringstream name;
      name << "engine " << index;
      {
        // The knob choices name the configuration (tile sizes, split-k, ...).
        std::vector<std::unique_ptr<Desc>> knobs;
        std::vector<cudnnBackendDescriptor_t> knobs_raw;
        for (int k = 0; k < CUDNN_KNOB_TYPE_COUNTS; ++k) {
          knobs.push_back(std::make_unique<Desc>(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
          knobs_raw.push_back(knobs.back()->get());
        }
        int64_t knob_count = 0;
        if (cudnnBackendGetAttribute(config->get(), CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                     CUDNN_KNOB_TYPE_COUNTS, &knob_count, knobs_raw.data()) == CUDNN_STATUS_SUCCESS &&
            knob_count > 0) {
          name << " (knobs";
          for (int64_t k = 0; k < std::min<int64_t>(knob_count, CUDNN_KNOB_TYPE_COUNTS); ++k) {
            cudnnBackendKnobType_t type = CUDNN_KNOB_TYPE_COUNTS;
            int64_t value = -1;
            cudnnBackendGetAttribute(knobs_raw[static_cast<size_t>(k)], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                                     CUDNN_TYPE_KNOB_TYPE, 1, &n, &type);
            cudnnBackendGetAttribute(knobs_raw[static_cast<size_t>(k)], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE,
                                     CUDNN_TYPE_INT64, 1, &n, &value);
            name << ' ' << int(type) << '=' << value;
          }
          name << ')';
        }
      }
      auto plan = std::make_unique<Desc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      cudnnBackendDescriptor_t config_raw = config->get();
      if (cudnnBackendSetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h) !=
              CUDNN_STATUS_SUCCESS ||
          cudnnBackendSetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                   1, &config_raw) != CUDNN_STATUS_SUCCESS ||
          plan->try_finalize() != CUDNN_STATUS_SUCCESS) {
        ++left_out;
        continue;
      }
      int64_t workspace = 0;
      if (cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                   &workspace) != CUDNN_STATUS_SUCCESS ||
          workspace < 0 || static_cast<size_t>(workspace) > workspace_limit) {
        ++left_out;
        continue;
      }
      auto parts = std::make_shared<ConvEngine::Parts>();
      parts->shared = built;
      parts->config = std::move(config);
      parts->plan = std::move(plan);
      parts->workspace = static_cast<size_t>(workspace);
      parts->name = name.str();
      offer.engines.push_back(std::make_unique<ConvEngine>(std::move(parts)));
    }
  }
  if (left_out) skipped << ' ' << left_out << " engine configurations left out (notes, finalize or workspace)";
  offer.skipped = skipped.str();
  return offer;
}

}  // namespace llr::cuda
