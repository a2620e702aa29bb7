#include "engine/autograd.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "engine/backend.h"

namespace llr {

namespace {
thread_local bool grad_mode_enabled = true;
// What detail::take_addend() offers the vjp being called by grad(), and which of it the vjp took.
thread_local std::vector<Tensor>* offered_addends = nullptr;
thread_local std::vector<char>* taken_addends = nullptr;

// Offers `addends` to the vjps called while it lives (and restores what an enclosing grad() offered).
class OfferAddends {
 public:
  OfferAddends(std::vector<Tensor>& addends, std::vector<char>& taken)
      : outer_offered_(offered_addends), outer_taken_(taken_addends) {
    offered_addends = &addends;
    taken_addends = &taken;
  }
  ~OfferAddends() { offered_addends = outer_offered_, taken_addends = outer_taken_; }
  OfferAddends(const OfferAddends&) = delete;
  OfferAddends& operator=(const OfferAddends&) = delete;

 private:
  std::vector<Tensor>* outer_offered_;
  std::vector<char>* outer_taken_;
};
thread_local bool tangents_suppressed = false;

[[noreturn]] void throw_freed(const std::string& node_name, bool tape_cleared) {
  if (tape_cleared)
    LLR_FAIL("backward through a freed graph: the tape that recorded this tensor was cleared");
  LLR_FAIL("backward through a freed graph: node '", node_name,
           "' was released by an earlier backward (pass Retain::yes to differentiate it again)");
}

// The node that produced `t`, or nullptr for a leaf; throws if the node is gone.
std::shared_ptr<Node> producer(const Tensor& t) {
  if (!t.impl()->recorded) return nullptr;
  std::shared_ptr<Node> n = t.impl()->node.lock();
  if (!n) throw_freed("", true);
  if (n->released) throw_freed(n->name, false);
  return n;
}

void accumulate(std::unordered_map<uint64_t, Tensor>& map, uint64_t id, const Tensor& value) {
  auto it = map.find(id);
  if (it == map.end()) {
    map.emplace(id, value);
    return;
  }
  // In the wider dtype: a batch norm's f32 dx part and bf16 parts are summed before any rounding.
  emulate_bf16::Suspend unrounded;
  it->second = backend::add_widening(it->second, value);
}

// A cotangent in the dtype of the tensor it belongs to (rounded once, after all its parts were summed).
Tensor as_dtype_of(const Tensor& cotangent, DType dtype) {
  if (cotangent.dtype() != dtype) return backend::convert(cotangent, dtype);
  return emulate_bf16::active() ? emulate_bf16::cotangent_as_used(cotangent) : cotangent;
}

void release(Node& node) {
  node.vjp = nullptr;
  node.jvp = nullptr;
  node.inputs.clear();
  node.released = true;
}
}  // namespace

Tape& Tape::current() {
  thread_local Tape tape;
  return tape;
}

void Tape::clear() { nodes_.clear(); }

void Tape::truncate(size_t size) {
  if (size < nodes_.size()) nodes_.resize(size);
}

std::shared_ptr<Node> Tape::push(std::shared_ptr<Node> node) {
  node->position = nodes_.size();
  nodes_.push_back(node);
  return node;
}

bool GradMode::enabled() { return grad_mode_enabled; }
void GradMode::set(bool on) { grad_mode_enabled = on; }

TangentSuppressGuard::TangentSuppressGuard() : prev_(tangents_suppressed) { tangents_suppressed = true; }
TangentSuppressGuard::~TangentSuppressGuard() { tangents_suppressed = prev_; }
bool TangentSuppressGuard::active() { return tangents_suppressed; }

OpCounters& op_counters() {
  static OpCounters counters;
  return counters;
}

namespace detail {

Tensor take_addend(size_t i) {
  if (!offered_addends || i >= offered_addends->size() || emulate_bf16::active()) return Tensor();
  if ((*taken_addends)[i] || !(*offered_addends)[i].defined()) return Tensor();
  (*taken_addends)[i] = 1;
  return (*offered_addends)[i];
}

void finish_op(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor>& outputs, VjpFn vjp,
               JvpFn jvp) {
  bool any_requires = false;
  bool any_tangent = false;
  for (const Tensor& in : inputs) {
    if (!in.defined()) continue;
    any_requires = any_requires || in.requires_grad();
    any_tangent = any_tangent || in.has_tangent();
  }
  if (GradMode::enabled() && any_requires) {
    auto node = std::make_shared<Node>();
    node->name = name;
    node->inputs = inputs;
    for (const Tensor& out : outputs) {
      node->output_ids.push_back(out.id());
      node->output_meta.push_back({out.shape(), out.dtype(), out.device(), out.layout()});
    }
    node->vjp = std::move(vjp);
    node->jvp = jvp;
    Tape::current().push(node);
    for (Tensor& out : outputs) {
      out.impl()->recorded = true;
      out.impl()->node = node;
    }
  }
  if (any_tangent && !TangentSuppressGuard::active()) {
    std::vector<Tensor> tin;
    tin.reserve(inputs.size());
    for (const Tensor& in : inputs) tin.push_back(in.defined() && in.has_tangent() ? in.tangent() : Tensor());
    std::vector<Tensor> tout;
    {
      TangentSuppressGuard guard;
      tout = jvp(tin);
      ++op_counters().jvp_calls;
    }
    LLR_CHECK(tout.size() == outputs.size(), name, ": jvp returned ", tout.size(), " tangents for ", outputs.size(),
              " outputs");
    for (size_t k = 0; k < outputs.size(); ++k)
      if (tout[k].defined()) outputs[k].set_tangent(tout[k]);
  }
}

}  // namespace detail

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& cotangents,
                         const std::vector<Tensor>& inputs, Retain retain) {
  LLR_CHECK(outputs.size() == cotangents.size(), "grad(): ", outputs.size(), " outputs but ", cotangents.size(),
            " cotangents");
  NoGradGuard no_grad;
  TangentSuppressGuard no_tangents;
  const auto& nodes = Tape::current().nodes();

  size_t end = 0;
  for (size_t k = 0; k < outputs.size(); ++k) {
    const Tensor& out = outputs[k];
    LLR_CHECK(out.defined() && cotangents[k].defined(), "grad(): undefined output or cotangent ", k);
    LLR_CHECK(cotangents[k].shape() == out.shape() && cotangents[k].dtype() == out.dtype(), "grad(): cotangent ",
              cotangents[k].describe(), " does not match output ", out.describe());
    LLR_CHECK(out.requires_grad(), "grad(): output ", k, " (", out.describe(),
              ") does not require grad: nothing recorded it");
    if (auto n = producer(out)) end = std::max(end, n->position + 1);
  }
  LLR_CHECK(end <= nodes.size(), "grad(): output recorded on another tape");

  std::unordered_set<uint64_t> requested;
  for (const Tensor& in : inputs) {
    LLR_CHECK(in.defined(), "grad(): undefined input");
    requested.insert(in.id());
  }
  // Nodes downstream of the requested inputs; everything else is skipped.
  std::unordered_set<uint64_t> reach = requested;
  std::vector<char> relevant(end, 0);
  for (size_t p = 0; p < end; ++p) {
    const Node& node = *nodes[p];
    bool hit = false;
    for (const Tensor& in : node.inputs)
      if (in.defined() && reach.count(in.id())) hit = true;
    // A released node has lost its inputs; treat it as relevant if any of its outputs is later needed, so that
    // reaching it throws instead of silently giving zeros.
    if (node.released) hit = true;
    if (hit) {
      relevant[p] = 1;
      for (uint64_t id : node.output_ids) reach.insert(id);
    }
  }

  std::unordered_map<uint64_t, Tensor> cot;
  for (size_t k = 0; k < outputs.size(); ++k) accumulate(cot, outputs[k].id(), cotangents[k]);

  for (size_t p = end; p-- > 0;) {
    if (!relevant[p]) continue;
    Node& node = *nodes[p];
    bool any = false;
    for (uint64_t id : node.output_ids) any = any || cot.count(id);
    if (!any) continue;
    if (node.released) throw_freed(node.name, false);
    std::vector<Tensor> out_cot;
    out_cot.reserve(node.output_ids.size());
    for (size_t k = 0; k < node.output_ids.size(); ++k) {
      auto it = cot.find(node.output_ids[k]);
      if (it != cot.end()) {
        out_cot.push_back(as_dtype_of(it->second, node.output_meta[k].dtype));
      } else {
        const TensorMeta& m = node.output_meta[k];
        out_cot.push_back(backend::zeros(m.shape, m.dtype, m.layout, m.device));
      }
    }
    std::vector<bool> needs(node.inputs.size(), false);
    bool any_need = false;
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      const Tensor& in = node.inputs[i];
      needs[i] = in.defined() && is_floating(in.dtype()) && reach.count(in.id()) > 0;
      any_need = any_need || needs[i];
    }
    if (any_need) {
      // Each needed input's accumulated cotangent, offered once (an input listed twice gets it at its first place).
      std::vector<Tensor> addends(node.inputs.size());
      std::vector<char> taken(node.inputs.size(), 0);
      for (size_t i = 0; i < node.inputs.size(); ++i) {
        if (!needs[i]) continue;
        bool first = true;
        for (size_t j = 0; j < i; ++j) first = first && !(needs[j] && node.inputs[j].id() == node.inputs[i].id());
        auto it = cot.find(node.inputs[i].id());
        if (first && it != cot.end()) addends[i] = it->second;
      }
      std::vector<Tensor> in_cot;
      {
        OfferAddends offer(addends, taken);
        in_cot = node.vjp(out_cot, needs);
      }
      ++op_counters().vjp_calls;
      LLR_CHECK(in_cot.size() == node.inputs.size(), node.name, ": vjp returned ", in_cot.size(),
                " cotangents for ", node.inputs.size(), " inputs");
      for (size_t i = 0; i < node.inputs.size(); ++i) {
        if (!needs[i]) continue;
        LLR_CHECK(in_cot[i].defined(), node.name, ": vjp gave no cotangent for needed input ", i);
        LLR_CHECK(in_cot[i].shape() == node.inputs[i].shape(), node.name, ": vjp cotangent ", in_cot[i].describe(),
                  " does not match input ", node.inputs[i].describe());
        if (taken[i])
          cot[node.inputs[i].id()] = in_cot[i];  // it holds the accumulated cotangent already
        else
          accumulate(cot, node.inputs[i].id(), in_cot[i]);
      }
    }
    for (uint64_t id : node.output_ids)
      if (!requested.count(id)) cot.erase(id);
    if (retain == Retain::no) release(node);
  }

  std::vector<Tensor> result;
  result.reserve(inputs.size());
  for (const Tensor& in : inputs) {
    auto it = cot.find(in.id());
    result.push_back(it != cot.end() ? as_dtype_of(it->second, in.dtype())
                                     : backend::zeros(in.shape(), in.dtype(), in.layout(), in.device()));
  }
  return result;
}

void backward(const Tensor& loss, Retain retain) {
  LLR_CHECK(loss.defined() && loss.requires_grad(), "backward(): the loss does not require grad");
  std::vector<Tensor> leaves;
  std::unordered_set<uint64_t> seen;
  if (auto n = producer(loss)) {
    const auto& nodes = Tape::current().nodes();
    std::unordered_set<uint64_t> ancestors(n->output_ids.begin(), n->output_ids.end());
    for (size_t p = n->position + 1; p-- > 0;) {
      const Node& node = *nodes[p];
      bool is_ancestor = false;
      for (uint64_t id : node.output_ids) is_ancestor = is_ancestor || ancestors.count(id);
      if (!is_ancestor) continue;
      if (node.released) throw_freed(node.name, false);
      for (const Tensor& in : node.inputs) {
        if (!in.defined()) continue;
        ancestors.insert(in.id());
        if (in.is_leaf() && in.requires_grad() && seen.insert(in.id()).second) leaves.push_back(in);
      }
    }
  } else {
    leaves.push_back(loss);
  }
  std::vector<Tensor> grads = grad({loss}, {backend::full_like(loss, 1.0)}, leaves, retain);
  for (size_t i = 0; i < leaves.size(); ++i) {
    TensorImpl* impl = leaves[i].impl();
    impl->grad = impl->grad ? backend::add(Tensor(impl->grad), grads[i]).impl_ptr() : grads[i].impl_ptr();
  }
}

std::vector<Tensor> tangent_forward(const std::vector<Tensor>& seeds_primal, const std::vector<Tensor>& seeds_tangent,
                                    const std::vector<Tensor>& outputs) {
  LLR_CHECK(seeds_primal.size() == seeds_tangent.size(), "tangent_forward(): ", seeds_primal.size(),
            " seeds but ", seeds_tangent.size(), " tangents");
  const auto& nodes = Tape::current().nodes();
  std::unordered_map<uint64_t, Tensor> tan;
  for (size_t k = 0; k < seeds_primal.size(); ++k) {
    LLR_CHECK(seeds_primal[k].defined() && seeds_tangent[k].defined(), "tangent_forward(): undefined seed ", k);
    LLR_CHECK(seeds_primal[k].shape() == seeds_tangent[k].shape() &&
                  seeds_primal[k].dtype() == seeds_tangent[k].dtype(),
              "tangent_forward(): tangent ", seeds_tangent[k].describe(), " does not match seed ",
              seeds_primal[k].describe());
    tan[seeds_primal[k].id()] = seeds_tangent[k];
  }
  size_t end = 0;
  std::unordered_set<uint64_t> ancestors;
  for (const Tensor& out : outputs) {
    LLR_CHECK(out.defined(), "tangent_forward(): undefined output");
    ancestors.insert(out.id());
    if (auto n = producer(out)) end = std::max(end, n->position + 1);
  }
  std::vector<char> needed(end, 0);
  for (size_t p = end; p-- > 0;) {
    const Node& node = *nodes[p];
    bool hit = false;
    for (uint64_t id : node.output_ids) hit = hit || ancestors.count(id);
    if (!hit) continue;
    if (node.released) throw_freed(node.name, false);
    needed[p] = 1;
    for (const Tensor& in : node.inputs)
      if (in.defined()) ancestors.insert(in.id());
  }
  for (size_t p = 0; p < end; ++p) {
    if (!needed[p]) continue;
    const Node& node = *nodes[p];
    std::vector<Tensor> tin;
    bool any = false;
    for (const Tensor& in : node.inputs) {
      auto it = in.defined() ? tan.find(in.id()) : tan.end();
      tin.push_back(it != tan.end() ? it->second : Tensor());
      any = any || it != tan.end();
    }
    if (!any) continue;
    std::vector<Tensor> tout;
    {
      TangentSuppressGuard guard;
      tout = node.jvp(tin);
      ++op_counters().jvp_calls;
    }
    for (size_t k = 0; k < node.output_ids.size(); ++k)
      if (k < tout.size() && tout[k].defined()) tan[node.output_ids[k]] = tout[k];
  }
  std::vector<Tensor> result;
  for (const Tensor& out : outputs) {
    auto it = tan.find(out.id());
    result.push_back(it != tan.end() ? it->second
                                     : backend::zeros(out.shape(), out.dtype(), out.layout(), out.device()));
  }
  return result;
}

}  // namespace llr
