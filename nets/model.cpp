#include "nets/model.h"

#include <charconv>
#include <cmath>
#include <regex>

#include "engine/backend.h"
#include "engine/graph.h"

namespace llr::nets {

Tensor Registry::add(const std::string& name, Tensor t, TensorKind kind, bool conv_filter) {
  for (const NamedTensor& e : entries_) LLR_CHECK(e.name != name, "duplicate tensor name ", name);
  if (kind != TensorKind::buffer) t.requires_grad_();
  entries_.push_back(
      {name, t, kind, conv_filter, kind == TensorKind::weight ? std::make_shared<ComputeCopy>() : nullptr});
  return t;
}

std::vector<Tensor> Registry::parameters() const {
  std::vector<Tensor> out;
  for (const NamedTensor& e : entries_)
    if (e.kind != TensorKind::buffer) out.push_back(e.tensor);
  return out;
}

Tensor ComputeCopy::of(const Tensor& master, DType compute) const {
  if (master.dtype() == compute) return master;
  const uint64_t here = graph::lasting_recording_id();
  const bool current = current_for(master) && copy_.dtype() == compute;
  // (A maintained copy was made eagerly: written() requires it, and refreshing keeps made_in_.)
  if (current && (made_in_ == here || maintained_)) return cast_reusing(master, copy_);
  Tensor c = cast(master, compute);
  // A cast in a scoped recording has not run yet (and may never, if the recording fails): it is not kept.
  if (graph::recording() && here == 0) return c;
  if (maintained_) {
    // The optimiser's target and what recordings read: refreshed in place, never replaced. A lasting recording casts
    // for itself.
    if (here != 0 || copy_.dtype() != compute || !copy_of(master)) return c;
    copy_into(copy_, c.detach());
    version_ = master.value_version();
    return c;
  }
  copy_ = c.detach();
  master_ = master.impl()->storage;
  version_ = master.value_version();
  made_in_ = here;
  return c;
}

bool ComputeCopy::copy_of(const Tensor& master) const {
  const std::shared_ptr<Storage> s = master_.lock();
  return s && s == master.impl()->storage;
}

bool ComputeCopy::current_for(const Tensor& master) const {
  return copy_.defined() && copy_of(master) && version_ == master.value_version();
}

Tensor ComputeCopy::target() const { return copy_.defined() && made_in_ == 0 ? copy_ : Tensor(); }

void ComputeCopy::written(const Tensor& master) {
  LLR_CHECK(copy_.defined() && made_in_ == 0 && copy_of(master),
            "ComputeCopy::written: no eager copy of ", master.describe(), " to have written");
  version_ = master.value_version();
  maintained_ = true;
}

Conv2d::Conv2d(Registry& r, const std::string& name, int64_t in, int64_t out, int kernel, int stride, int padding,
               Init init)
    : stride_(stride), padding_(padding) {
  // He initialisation with fan-out, as the Wide-ResNet and torchvision code do.
  double sd = std::sqrt(2.0 / double(kernel * kernel * out));
  weight_ = r.add(name + ".weight",
                  init.place(init.gen->normal({out, kernel, kernel, in}, 0.0, sd, init.dtype, Layout::krsc)),
                  TensorKind::weight, true);
  weight_compute_ = r.entries().back().compute;
}

Tensor Conv2d::forward(const Tensor& x, const ForwardContext& ctx) const {
  return conv2d(x, weight_compute_->of(weight_, ctx.compute), {}, {stride_, padding_});
}

BatchNorm::BatchNorm(Registry& r, const std::string& name, int64_t channels, Init init) {
  auto fill = [&](double v) { return Tensor::full({channels}, v, init.dtype, Layout::plain, init.device); };
  weight_ = r.add(name + ".weight", fill(1.0), TensorKind::no_decay);
  bias_ = r.add(name + ".bias", fill(0.0), TensorKind::no_decay);
  running_mean_ = r.add(name + ".running_mean", fill(0.0), TensorKind::buffer);
  running_var_ = r.add(name + ".running_var", fill(1.0), TensorKind::buffer);
  r.counters().push_back({name + ".num_batches_tracked", num_batches_tracked_.get()});
}

BatchStats BatchNorm::given_statistics(ForwardContext& ctx) {
  switch (ctx.bn) {
    case BnMode::eval:
      return {running_mean_, running_var_};
    case BnMode::shared: {
      LLR_CHECK(ctx.use && ctx.next < ctx.use->size(), "batch norm in shared mode: no recorded statistics for layer ",
                ctx.next);
      return (*ctx.use)[ctx.next++];
    }
    case BnMode::train:
      break;
  }
  LLR_FAIL("batch norm: no given statistics in this mode");
}

void BatchNorm::note_batch_statistics(const BatchStats& s, const Tensor& x, ForwardContext& ctx) {
  if (ctx.record) ctx.record->push_back(s);
  if (ctx.update_running) {
    update_running_stats(running_mean_, running_var_, {s.mean.detach(), s.var.detach()}, momentum_,
                         x.numel() / x.dim(-1));
    ++*num_batches_tracked_;
  }
}

Tensor BatchNorm::forward(const Tensor& x, ForwardContext& ctx) {
  if (ctx.bn == BnMode::train) return forward_act(x, ctx, Act::identity);
  BatchStats s = given_statistics(ctx);
  return batch_norm(x, s.mean, s.var, weight_, bias_, eps_);
}

Tensor BatchNorm::forward_act(const Tensor& x, ForwardContext& ctx, Act act) {
  if (ctx.bn == BnMode::train) {  // statistics and normalisation as one op (one reduction in its vjp)
    BatchNormActTrain out = batch_norm_act_train(x, weight_, bias_, eps_, act);
    note_batch_statistics(out.stats, x, ctx);
    return out.y;
  }
  BatchStats s = given_statistics(ctx);
  return batch_norm_act(x, s.mean, s.var, weight_, bias_, eps_, act);
}

Linear::Linear(Registry& r, const std::string& name, int64_t in, int64_t out, Init init) {
  // PyTorch's default for the weight; the Wide-ResNet code zeroes the bias.
  double bound = 1.0 / std::sqrt(double(in));
  weight_ = r.add(name + ".weight", init.place(init.gen->uniform({out, in}, -bound, bound, init.dtype)),
                  TensorKind::weight);
  weight_compute_ = r.entries().back().compute;
  bias_ = r.add(name + ".bias", Tensor::full({out}, 0.0, init.dtype, Layout::plain, init.device), TensorKind::no_decay);
}

// The classifier computes in the statistics dtype (f32 for bf16 activations): losses and gamma (about 1e-2) are
// differences of losses, which bf16 logits would round by about 0.03.
Tensor Linear::forward(const Tensor& x, const ForwardContext& ctx) const {
  DType out = stat_dtype(ctx.compute);
  return linear(x.dtype() == out ? x : cast(x, out), weight_compute_->of(weight_, out), bias_);
}

int64_t Model::parameter_count() const {
  int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

Tensor Model::normalize_input(const Tensor& x, const ForwardContext& ctx) const {
  const double eps = 1e-5;
  DType sd = stat_dtype(ctx.compute);
  Device dev = x.device();
  auto cached = input_norm_.find({dev, sd});
  if (cached == input_norm_.end()) {
    const double* mean = norm_mean_;
    const double* stdev = norm_std_;
    InputNormalization n;
    n.mean = Tensor::from_vector({mean[0], mean[1], mean[2]}, {3}, sd);
    n.var = Tensor::from_vector({stdev[0] * stdev[0] - eps, stdev[1] * stdev[1] - eps, stdev[2] * stdev[2] - eps},
                                {3}, sd);
    n.one = Tensor::full({3}, 1.0, sd);
    n.zero = Tensor::full({3}, 0.0, sd);
    if (dev != Device::cpu)
      for (Tensor* t : {&n.mean, &n.var, &n.one, &n.zero}) *t = t->to(dev);
    cached = input_norm_.emplace(std::make_pair(dev, sd), n).first;
  }
  const InputNormalization& n = cached->second;
  Tensor xc = x.dtype() == ctx.compute ? x : cast(x, ctx.compute);
  return batch_norm(xc, n.mean, n.var, n.one, n.zero, eps);
}

Act parse_act(const std::string& s) {
  if (s == "relu") return Act::relu;
  if (s == "softplus") return Act::softplus;
  LLR_FAIL("unknown activation '", s, "' (relu or softplus)");
}

const char* act_name(Act a) {
  switch (a) {
    case Act::relu: return "relu";
    case Act::softplus: return "softplus";
    case Act::abs: return "abs";
    case Act::identity: return "identity";
  }
  return "?";
}

std::unique_ptr<Model> make_wide_resnet(int depth, int widen, Act act, int64_t classes, Init init);
std::unique_ptr<Model> make_preact_resnet18(Act act, int64_t classes, Init init);
std::unique_ptr<Model> make_bottleneck_resnet(int depth, Act act, int64_t classes, Init init);

std::unique_ptr<Model> make_model(const std::string& name, Act act, int64_t classes, uint64_t seed, Device device,
                                  DType dtype) {
  LLR_CHECK(dtype == DType::f32 || dtype == DType::f64, "model parameters are f32 or f64, got ", dtype_name(dtype));
  Generator gen(seed);
  Init init{&gen, dtype, device};
  std::unique_ptr<Model> m;
  std::smatch match;
  if (std::regex_match(name, match, std::regex("wrn-(\\d+)-(\\d+)"))) {
    // The largest Wide-ResNets in the robustness literature are WRN-106-16 and WRN-70-16; far larger numbers are
    // typing mistakes that would otherwise end in a failed multi-terabyte allocation (or an int overflow).
    auto number = [&](const std::string& digits, int most, const char* what) {
      int value = 0;
      std::errc ec = std::from_chars(digits.data(), digits.data() + digits.size(), value).ec;
      LLR_CHECK(ec == std::errc() && value <= most, "model '", name, "': ", what, " ", digits, " is too large (at most ",
                most, ")");
      return value;
    };
    m = make_wide_resnet(number(match[1], 1000, "depth"), number(match[2], 64, "widen factor"), act, classes, init);
  } else if (name == "preact-rn18") {
    m = make_preact_resnet18(act, classes, init);
  } else if (std::regex_match(name, match, std::regex("resnet-(50|101|152)"))) {
    m = make_bottleneck_resnet(std::stoi(match[1]), act, classes, init);
  } else {
    LLR_FAIL("unknown model '", name, "' (wrn-D-K such as wrn-28-10, preact-rn18, resnet-50, resnet-152)");
  }
  return m;
}

}  // namespace llr::nets
