// Convolutions through cuDNN's graph API (the backend descriptors): the execution plans its heuristics offer for one
// convolution, for kernels/conv.cu to time against the legacy API's algorithm and keep the fastest. The legacy API
// (cudnnFind*AlgorithmEx) offers two tensor-core algorithms for an NHWC bf16 convolution; the graph API reaches
// cuDNN's whole engine list (the kernels frameworks built on cuDNN's frontend pick from).
#pragma once

#include <cudnn.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace llr::cuda {

enum class ConvDirection { forward, backward_data, backward_filter };

// cuDNN's data type of a tensor dtype (f32, f64, bf16), for the legacy descriptors and the graph API alike.
cudnnDataType_t cudnn_dtype(DType t);

// One convolution: NHWC x and y, KRSC w, symmetric padding, no dilation; f32 accumulation.
struct ConvProblem {
  ConvDirection direction = ConvDirection::forward;
  std::array<int64_t, 4> x{}, w{}, y{};
  int stride = 1, padding = 0;
  DType dtype = DType::bf16;
};

// A finalized execution plan for one problem (it keeps the descriptors it was built from).
class ConvEngine {
 public:
  struct Parts;
  explicit ConvEngine(std::shared_ptr<Parts> parts);
  ~ConvEngine();
  ConvEngine(const ConvEngine&) = delete;
  ConvEngine& operator=(const ConvEngine&) = delete;

  size_t workspace() const;
  // "engine 12 (knobs 3=2 17=1)": cuDNN's global engine index and knob choices, for the plan printout.
  const std::string& name() const;
  // Runs on the handle's stream. x, w, y are the problem's three tensors whatever the direction: for backward-data x
  // is dx and y is dy, for backward-filter w is dw and y is dy. All three must be 16-byte aligned (the descriptors
  // promise it; aligned() tells).
  cudnnStatus_t run(cudnnHandle_t h, void* x, void* w, void* y, void* workspace) const;
  static bool aligned(const void* x, const void* w, const void* y);

 private:
  std::shared_ptr<Parts> parts_;
};

struct ConvEngineOffer {
  std::vector<std::unique_ptr<ConvEngine>> engines;
  std::string skipped;  // what was left out and why (engine configs that failed to finalize, notes), for printouts
};

// Up to `limit` execution plans cuDNN's heuristics offer for the problem (mode A's list, or the fallback list when
// mode A offers none), in their order, leaving out engines that compile at run time (seconds of NVRTC at planning),
// that depend on cuBLASLt, that convert their inputs down or reduce in reduced precision (the legacy path accumulates
// in f32), and those that need more than workspace_limit bytes. Throws Error when the graph API cannot describe the
// problem at all.
ConvEngineOffer conv_engines(cudnnHandle_t h, const ConvProblem& p, size_t workspace_limit, int limit);

}  // namespace llr::cuda
