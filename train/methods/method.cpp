#include "train/methods/method.h"

#include <algorithm>

#include "engine/backend.h"

namespace llr {

#define LLR_METHOD(factory) std::unique_ptr<Method> factory();
#include "train/methods/methods.def"
#undef LLR_METHOD

MethodSet::MethodSet() {
#define LLR_METHOD(factory) methods_.push_back(factory());
#include "train/methods/methods.def"
#undef LLR_METHOD
}

MethodSet::MethodSet(const MethodSet& other) {
  for (const auto& m : other.methods_) methods_.push_back(m->clone());
}

MethodSet& MethodSet::operator=(const MethodSet& other) {
  if (this != &other) {
    methods_.clear();
    for (const auto& m : other.methods_) methods_.push_back(m->clone());
  }
  return *this;
}

Method& MethodSet::get(const std::string& name) const {
  for (const auto& m : methods_)
    if (name == m->name()) return *m;
  std::string known;
  for (const auto& m : methods_) known += (known.empty() ? "" : ", ") + std::string(m->name());
  LLR_FAIL("unknown method '", name, "' (", known, ")");
}

void MethodSet::visit(SettingVisitor& v) {
  for (auto& m : methods_) m->visit(v);
}

std::vector<std::string> MethodSet::names() const {
  std::vector<std::string> out;
  for (const auto& m : methods_) out.push_back(m->name());
  return out;
}

double Method::definition(nets::Model& model, const Tensor& x, const Tensor& y, const RobustSettings& robust,
                          const StepContext& ctx) const {
  NoGradGuard no_grad;
  TapeScope scope;
  return host_value(build(model, x.detach(), y, robust, ctx).loss);
}

std::vector<Tensor> objective_gradients(const ObjectiveResult& r, const std::vector<Tensor>& params) {
  std::vector<Tensor> grads = grad(r.outputs, r.cotangents, params);
  if (!r.partial_grads.empty()) {
    LLR_CHECK(r.partial_grads.size() == grads.size(), "objective_gradients: ", r.partial_grads.size(),
              " partial gradients for ", grads.size(), " parameters (pass model.parameters())");
    for (size_t k = 0; k < grads.size(); ++k) grads[k] = backend::add(grads[k], r.partial_grads[k]);
  }
  return grads;
}

double eps_at(double eps, int64_t warmup, uint64_t step) {
  if (warmup <= 0) return eps;
  return eps * std::min(1.0, double(step) / double(warmup));
}

double host_value(const Tensor& t) {
  Tensor h = (t.dtype() == DType::bf16 ? t.to(DType::f32) : t).to(Device::cpu);
  return h.item();
}

}  // namespace llr
