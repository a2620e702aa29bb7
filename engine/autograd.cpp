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
  node->order = {2 * node->position, node->position};
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

namespace {

// grad() over the nodes recorded at `first` and after only: tensors recorded before count as leaves (a segment's
// recomputation inside a vjp, whose inputs were recorded by the pass being reversed).
std::vector<Tensor> grad_from(size_t first, const std::vector<Tensor>& outputs, const std::vector<Tensor>& cotangents,
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
  for (size_t p = first; p < end; ++p) {
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

  // The relevant nodes, last first by their order (a topological order; see Node::order).
  std::vector<size_t> sequence;
  for (size_t p = first; p < end; ++p)
    if (relevant[p]) sequence.push_back(p);
  std::sort(sequence.begin(), sequence.end(),
            [&nodes](size_t a, size_t b) { return nodes[a]->order > nodes[b]->order; });
  for (size_t p : sequence) {
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

}  // namespace

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& cotangents,
                         const std::vector<Tensor>& inputs, Retain retain) {
  return grad_from(0, outputs, cotangents, inputs, retain);
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

namespace {

// Orders a node recorded for the tangent of nominal node p right after p (first key 2p + 1), or after the latest
// node it reads from if that comes later (a seed tangent recorded after p, a tangent of an earlier replay over a
// pass recorded later): every node's order then exceeds its inputs' producers' and stays at most 2 x its position.
void order_after(Node& node, size_t p) {
  size_t key = 2 * p + 1;
  for (const Tensor& in : node.inputs) {
    if (!in.defined() || !in.impl()->recorded) continue;
    if (std::shared_ptr<Node> made = in.impl()->node.lock()) key = std::max(key, made->order.first);
  }
  node.order = {key, node.position};
}

// The tangents of the nodes at `positions` (in tape order) from those in `tan` (by primal id), each node's jvp
// recorded; adds the new ones to `tan`.
void propagate(const std::vector<size_t>& positions, std::unordered_map<uint64_t, Tensor>& tan) {
  const auto& nodes = Tape::current().nodes();
  for (size_t p : positions) {
    const Node& node = *nodes[p];
    if (node.released) throw_freed(node.name, false);
    std::vector<Tensor> tin;
    bool any = false;
    for (const Tensor& in : node.inputs) {
      auto it = in.defined() ? tan.find(in.id()) : tan.end();
      tin.push_back(it != tan.end() ? it->second : Tensor());
      any = any || it != tan.end();
    }
    if (!any) continue;
    std::vector<Tensor> tout;
    const size_t before = nodes.size();
    {
      TangentSuppressGuard guard;
      tout = node.jvp(tin);
      ++op_counters().jvp_calls;
    }
    for (size_t q = before; q < nodes.size(); ++q) order_after(*nodes[q], p);
    for (size_t k = 0; k < node.output_ids.size(); ++k)
      if (k < tout.size() && tout[k].defined()) tan[node.output_ids[k]] = tout[k];
  }
}

// One segment of a checkpointed tangent pass (see tangent_forward): the nominal nodes it replays, the tangents it
// receives (by primal id, with the tensors that carry them) and those it hands on.
struct Segment {
  std::vector<size_t> positions;
  std::vector<uint64_t> wants, in_ids, out_ids;  // candidates to receive; received; handed on
};

// Replays a segment's jvps once with recording, to learn what its computation reads from outside (the tensors a
// checkpoint node must list as inputs to return their cotangents), keeps the tangents it hands on and frees the
// rest; then records the segment as one node whose vjp replays it again and reverses that replay.
void run_segment(const Segment& seg, std::unordered_map<uint64_t, Tensor>& tan) {
  std::unordered_map<uint64_t, Tensor> local;
  std::vector<Tensor> tangents_in;
  for (uint64_t id : seg.in_ids) local[id] = tan.at(id), tangents_in.push_back(tan.at(id));
  std::vector<Tensor> inputs;  // everything the recorded replay reads from outside and that requires grad
  std::vector<Tensor> outs;
  std::vector<uint64_t> out_ids;
  {
    TapeScope scope;
    const size_t first = Tape::current().size();
    propagate(seg.positions, local);
    std::unordered_set<uint64_t> made, listed;
    // The tangents it receives first: a segment may hand one on unchanged (a jvp that returns its input tangent
    // records nothing), and the reverse pass must still reach the segment that made it.
    for (const Tensor& t : tangents_in)
      if (t.requires_grad() && is_floating(t.dtype()) && listed.insert(t.id()).second) inputs.push_back(t);
    const auto& nodes = Tape::current().nodes();
    for (size_t p = first; p < nodes.size(); ++p) {
      for (const Tensor& in : nodes[p]->inputs)
        if (in.defined() && !made.count(in.id()) && in.requires_grad() && is_floating(in.dtype()) &&
            listed.insert(in.id()).second)
          inputs.push_back(in);
      for (uint64_t id : nodes[p]->output_ids) made.insert(id);
    }
    // The candidates that received a tangent (which primal tensors do is known only now).
    for (uint64_t id : seg.out_ids) {
      auto it = local.find(id);
      if (it != local.end()) out_ids.push_back(id), outs.push_back(it->second.detach());
    }
  }
  std::vector<size_t> positions = seg.positions;
  std::vector<uint64_t> in_ids = seg.in_ids;
  VjpFn vjp = [positions, in_ids, out_ids, tangents_in, inputs](const std::vector<Tensor>& out_cot,
                                                                const std::vector<bool>& needs) {
    std::vector<Tensor> wanted;
    std::vector<size_t> where;
    for (size_t i = 0; i < inputs.size(); ++i)
      if (needs[i]) wanted.push_back(inputs[i]), where.push_back(i);
    std::vector<Tensor> result(inputs.size());
    if (wanted.empty()) return result;
    GradModeGuard record(true);
    TapeScope scope;
    const size_t first = Tape::current().size();
    std::unordered_map<uint64_t, Tensor> again;
    for (size_t k = 0; k < in_ids.size(); ++k) again[in_ids[k]] = tangents_in[k];
    propagate(positions, again);
    std::vector<Tensor> replayed, cot;
    for (size_t k = 0; k < out_ids.size(); ++k) {
      const Tensor& t = again.at(out_ids[k]);
      if (t.requires_grad()) replayed.push_back(t), cot.push_back(out_cot[k]);
    }
    std::vector<Tensor> g = replayed.empty()
                                ? std::vector<Tensor>()
                                : grad_from(first, replayed, cot, wanted, Retain::no);
    for (size_t k = 0; k < wanted.size(); ++k)
      result[where[k]] = g.empty() ? backend::zeros(wanted[k].shape(), wanted[k].dtype(), wanted[k].layout(),
                                                    wanted[k].device())
                                   : g[k];
    return result;
  };
  JvpFn jvp = [](const std::vector<Tensor>&) -> std::vector<Tensor> {
    LLR_FAIL("a checkpointed tangent segment has no tangent of its own (second-order tangents are not computed)");
  };
  std::vector<Tensor> recorded = outs;
  const size_t before = Tape::current().size();
  {
    TangentSuppressGuard no_tangents;  // inputs carrying eager tangents must not ask the segment for its own
    detail::finish_op("tangent_segment", inputs, recorded, std::move(vjp), std::move(jvp));
  }
  // Reversed right after the segment's last node, as its own tangents would be.
  if (Tape::current().size() > before) order_after(*Tape::current().nodes().back(), positions.back());
  for (size_t k = 0; k < out_ids.size(); ++k) tan[out_ids[k]] = recorded[k];
}

// Cuts the replayed nodes (`needed`, in tape order) into at most k runs (see tangent_forward): near every n/k-th
// node, at the point whose crossing tensors (made before it, read after it) are fewest in bytes, so cuts fall between
// residual blocks rather than inside them. Each run lists the primal tensors whose tangents it may receive (made
// earlier, or seeds) and those it hands on (read by a later run or the caller). Which primal tensors carry a tangent
// is known only as the pass runs, so the lists name every candidate.
std::vector<Segment> plan_segments(const std::vector<size_t>& needed, size_t k, const std::vector<Tensor>& seeds_primal,
                                   const std::vector<Tensor>& outputs) {
  const auto& nodes = Tape::current().nodes();
  const size_t n = needed.size();
  k = std::min(k, std::max<size_t>(n, 1));
  std::vector<double> crossing(n + 1, 0.0);  // crossing[c]: bytes that cross a cut before needed index c
  {
    std::unordered_map<uint64_t, size_t> made_at;
    std::unordered_map<uint64_t, double> size_of;
    for (size_t i = 0; i < n; ++i) {
      const Node& node = *nodes[needed[i]];
      for (size_t o = 0; o < node.output_ids.size(); ++o) {
        made_at[node.output_ids[o]] = i;
        const TensorMeta& m = node.output_meta[o];
        size_of[node.output_ids[o]] = double(shape_numel(m.shape)) * double(dtype_size(m.dtype));
      }
    }
    std::unordered_map<uint64_t, size_t> last_read;
    for (size_t i = 0; i < n; ++i)
      for (const Tensor& in : nodes[needed[i]]->inputs)
        if (in.defined() && made_at.count(in.id())) last_read[in.id()] = i;
    for (const Tensor& out : outputs)
      if (made_at.count(out.id())) last_read[out.id()] = n;
    std::vector<double> delta(n + 2, 0.0);
    for (const auto& [id, last] : last_read) {
      size_t made = made_at.at(id);
      if (last <= made) continue;
      delta[made + 1] += size_of.at(id);  // crosses the cuts before indices made + 1 .. last
      delta[last + 1] -= size_of.at(id);
    }
    double run = 0;
    for (size_t c = 0; c <= n; ++c) crossing[c] = run += delta[c];
  }
  std::vector<size_t> starts{0};
  for (size_t s = 1; s < k; ++s) {
    const size_t ideal = s * n / k, half = std::max<size_t>(n / (2 * k), 1);
    size_t best = std::max(ideal, starts.back() + 1);
    for (size_t c = std::max(ideal > half ? ideal - half : 0, starts.back() + 1); c <= std::min(ideal + half, n - 1);
         ++c)
      if (crossing[c] < crossing[best]) best = c;
    if (best >= n) break;
    starts.push_back(best);
  }
  std::vector<Segment> segs(starts.size());
  const size_t count = segs.size();
  std::unordered_map<uint64_t, size_t> made_in;  // primal id -> the segment whose node produced it
  for (size_t i = 0, s = 0; i < n; ++i) {
    while (s + 1 < count && i >= starts[s + 1]) ++s;
    segs[s].positions.push_back(needed[i]);
    for (uint64_t id : nodes[needed[i]]->output_ids) made_in[id] = s;
  }
  std::unordered_set<uint64_t> seeds;
  for (const Tensor& t : seeds_primal) seeds.insert(t.id());
  for (size_t s = 0; s < count; ++s) {
    std::unordered_set<uint64_t> wants;
    for (size_t p : segs[s].positions)
      for (const Tensor& in : nodes[p]->inputs) {
        if (!in.defined()) continue;
        auto it = made_in.find(in.id());
        // Seeds too, even on a tensor this segment makes: their tangent is given, not computed before.
        if (it == made_in.end() || it->second < s || seeds.count(in.id())) wants.insert(in.id());
        if (it != made_in.end() && it->second < s) segs[it->second].out_ids.push_back(in.id());
      }
    segs[s].wants.assign(wants.begin(), wants.end());
  }
  for (const Tensor& out : outputs) {
    auto it = made_in.find(out.id());
    if (it != made_in.end()) segs[it->second].out_ids.push_back(out.id());
  }
  for (Segment& seg : segs) {
    std::sort(seg.out_ids.begin(), seg.out_ids.end());
    seg.out_ids.erase(std::unique(seg.out_ids.begin(), seg.out_ids.end()), seg.out_ids.end());
  }
  return segs;
}

}  // namespace

std::vector<Tensor> tangent_forward(const std::vector<Tensor>& seeds_primal, const std::vector<Tensor>& seeds_tangent,
                                    const std::vector<Tensor>& outputs, int segments) {
  LLR_CHECK(seeds_primal.size() == seeds_tangent.size(), "tangent_forward(): ", seeds_primal.size(),
            " seeds but ", seeds_tangent.size(), " tangents");
  LLR_CHECK(segments >= 1, "tangent_forward(): segments must be at least 1, got ", segments);
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
  std::vector<size_t> needed;
  for (size_t p = end; p-- > 0;) {
    const Node& node = *nodes[p];
    bool hit = false;
    for (uint64_t id : node.output_ids) hit = hit || ancestors.count(id);
    if (!hit) continue;
    if (node.released) throw_freed(node.name, false);
    needed.push_back(p);
    for (const Tensor& in : node.inputs)
      if (in.defined()) ancestors.insert(in.id());
  }
  std::reverse(needed.begin(), needed.end());

  if (segments == 1 || !GradMode::enabled()) {
    propagate(needed, tan);
  } else {
    for (Segment& seg : plan_segments(needed, static_cast<size_t>(segments), seeds_primal, outputs)) {
      // The tangents it receives: the candidates that have one by now (earlier segments have run).
      for (uint64_t id : seg.wants)
        if (tan.count(id)) seg.in_ids.push_back(id);
      run_segment(seg, tan);
    }
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
