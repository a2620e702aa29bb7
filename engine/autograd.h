// The tape: a Wengert list of recorded nodes, reverse-mode grad() over it, and forward-mode tangents.
//
// Every differentiable op records one Node holding a vjp rule (reverse mode, written with raw backend functions, never
// itself recorded) and a jvp rule (forward mode, written with differentiable ops, so the tangent computation is
// recorded on the tape like any other). Tangents reach an op in two ways:
//  - eagerly: an input carries a tangent (Tensor::set_tangent), and the op attaches its output tangent;
//  - by replay: tangent_forward() propagates seed tangents through already-recorded nodes with their jvp rules. LLR
//    uses this to push v = (c_i δ_i) through the nominal pass after the γ search has chosen δ.
// Either way one reverse pass then differentiates through nominal and tangent computations together: the tape is
// never differentiated twice.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace llr {

// out_cotangents: one per output (zeros where nothing flowed); needs: which inputs want a cotangent.
// Returns one cotangent per input (undefined where not needed).
using VjpFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& out_cotangents,
                                                const std::vector<bool>& needs)>;
// in_tangents: one per input (undefined = zero). Returns one tangent per output (undefined = zero).
using JvpFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& in_tangents)>;

struct TensorMeta {
  Shape shape;
  DType dtype;
  Device device;
  Layout layout;
};

struct Node {
  std::string name;
  size_t position = 0;            // index on the tape
  // Where the reverse pass takes it (largest first): by default (2 position, position); a tangent replayed through
  // the node at position p gets (2 p + 1, position), or the first key of the latest node it reads from if that is
  // larger, so the reverse pass reverses each layer's tangent computation right before the layer itself, and the
  // cotangents it hands the layer are used and freed at once.
  std::pair<size_t, size_t> order{0, 0};
  std::vector<Tensor> inputs;     // strong references; the rules capture what they need
  std::vector<uint64_t> output_ids;
  std::vector<TensorMeta> output_meta;
  VjpFn vjp;
  JvpFn jvp;
  bool released = false;  // its rules were freed by a backward without Retain::yes
};

enum class Retain { no, yes };

class Tape {
 public:
  static Tape& current();  // one tape per thread
  void clear();            // frees every node; tensors that pointed at them can no longer be differentiated
  void truncate(size_t size);  // frees the nodes recorded after the first `size`
  size_t size() const { return nodes_.size(); }
  const std::vector<std::shared_ptr<Node>>& nodes() const { return nodes_; }
  std::shared_ptr<Node> push(std::shared_ptr<Node> node);

 private:
  std::vector<std::shared_ptr<Node>> nodes_;
};

// Frees, when it ends, every node recorded on the current tape during its lifetime; nodes recorded before it stay. A
// training step, each iteration of a perturbation search and each evaluation batch run in one, so nothing is ever
// cleared by hand and a search inside a step keeps the step's nominal pass.
class TapeScope {
 public:
  TapeScope() : mark_(Tape::current().size()) {}
  ~TapeScope() { Tape::current().truncate(mark_); }
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;

 private:
  size_t mark_;
};

// Gradient recording on/off (evaluation, bookkeeping).
class GradMode {
 public:
  static bool enabled();
  static void set(bool on);
};
// Sets gradient recording on or off for a scope (e.g. an input-gradient pass inside code that runs under no-grad).
class GradModeGuard {
 public:
  explicit GradModeGuard(bool on) : prev_(GradMode::enabled()) { GradMode::set(on); }
  ~GradModeGuard() { GradMode::set(prev_); }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool prev_;
};

// No recording for a scope (evaluation, bookkeeping).
class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};

// While active, ops ignore their inputs' tangents. Set while a jvp rule runs (its ops see the primal inputs, which
// may carry tangents themselves: that would be a second-order tangent, which the engine does not compute).
class TangentSuppressGuard {
 public:
  TangentSuppressGuard();
  ~TangentSuppressGuard();
  TangentSuppressGuard(const TangentSuppressGuard&) = delete;
  TangentSuppressGuard& operator=(const TangentSuppressGuard&) = delete;
  static bool active();

 private:
  bool prev_;
};

// Reverse mode: cotangent of sum_k <cotangents[k], outputs[k]> with respect to each of `inputs`. Only nodes that
// lie between the inputs and the outputs run, and each vjp is told which of its inputs need a cotangent (asking
// for an input gradient computes no filter gradient). Inputs that the outputs do not depend on get zeros.
// With Retain::no the traversed nodes are released and a second backward through them throws.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& cotangents,
                         const std::vector<Tensor>& inputs, Retain retain = Retain::no);

// Reverse mode into the .grad() of every leaf that requires grad (accumulating); seed: ones like `loss`.
void backward(const Tensor& loss, Retain retain = Retain::no);

// Forward mode by replay: tangents of `outputs` when each seeds_primal[k] moves along seeds_tangent[k], propagated
// through the recorded nodes between them with the ops' jvp rules. The jvp computations are recorded.
// segments > 1 (with gradient recording on) trades time for memory: the replayed nodes are cut into that many runs
// of about equal length, and each run is recorded as one node that keeps only the tangents later runs or the caller
// read; its vjp computes the run's tangents again and reverses them. The reverse pass then holds one run's tangents
// at a time instead of all of them, for one more tangent pass in all; the gradient is the same.
std::vector<Tensor> tangent_forward(const std::vector<Tensor>& seeds_primal, const std::vector<Tensor>& seeds_tangent,
                                    const std::vector<Tensor>& outputs, int segments = 1);

namespace detail {
// Called by every differentiable op after computing its outputs: records the node when gradient mode is on and an
// input requires grad, and attaches output tangents when an input carries one (and tangents are not suppressed).
void finish_op(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor>& outputs, VjpFn vjp,
               JvpFn jvp);

// Inside a vjp called by grad(): the cotangent accumulated so far for input `i` (undefined if there is none, or if
// it was taken already). A vjp that takes it must add it into its cotangent for input i, which then replaces the
// accumulated one instead of being summed with it afterwards: a pass fewer (the batch norm's vjps do this).
// Under bf16 emulation none is offered, so the emulated sums stay those of separate additions.
Tensor take_addend(size_t i);
}  // namespace detail

// Counters of backend work, so tests can assert what a backward did or did not compute.
struct OpCounters {
  uint64_t conv2d_forward = 0;
  uint64_t conv2d_backward_data = 0;
  uint64_t conv2d_backward_filter = 0;
  uint64_t matmul = 0;
  uint64_t bn_channel_reductions = 0;  // batch-norm backwards that reduced per channel (for statistics or parameters)
  uint64_t casts = 0;                  // dtype conversions by the cast op (weights to the compute dtype, ...)
  uint64_t vjp_calls = 0;
  uint64_t jvp_calls = 0;
};
OpCounters& op_counters();

}  // namespace llr
