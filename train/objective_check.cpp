#include "train/objective_check.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/gradcheck.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"

namespace llr {

ObjectiveCheckReport check_objective_gradient(const Method& method, const RobustSettings& robust,
                                              const ObjectiveCheckOptions& opt) {
  auto model = nets::make_model(opt.model, opt.act, 10, opt.seed, Device::cpu, DType::f64);
  // Scales and shifts away from 1 and 0, so the check sees every parameter's role.
  Generator gen(opt.seed + 101);
  for (nets::NamedTensor& e : model->registry().entries()) {
    if (e.name.find(".weight") != std::string::npos && e.tensor.rank() == 1)
      for (int64_t i = 0; i < e.tensor.numel(); ++i) e.tensor.set(i, 0.6 + 0.8 * gen.next_uniform());
    if (e.name.find(".bias") != std::string::npos)
      for (int64_t i = 0; i < e.tensor.numel(); ++i) e.tensor.set(i, 0.2 * (gen.next_uniform() - 0.5));
  }
  Tensor x = gen.uniform({opt.batch, opt.image, opt.image, 3}, 0.0, 1.0, DType::f64, Layout::nhwc);
  Tensor y = gen.randint({opt.batch}, 0, 10);

  StepContext ctx;
  ctx.compute = DType::f64;
  ctx.seed = opt.seed;
  ctx.update_running = false;
  ctx.eps = robust.eps;
  // The perturbation: the method's own attack or search at these parameters, then held fixed.
  Tensor delta;
  {
    TapeScope scope;
    delta = method.build(*model, x, y, robust, ctx).delta;
  }
  delta = delta.defined() ? delta.detach() : backend::full_like(x, 0.0);
  ctx.fixed_delta = &delta;

  std::vector<nets::NamedTensor*> entries;
  std::vector<Tensor> params;
  for (nets::NamedTensor& e : model->registry().entries())
    if (e.kind != nets::TensorKind::buffer) {
      entries.push_back(&e);
      params.push_back(e.tensor);
    }
  std::vector<Tensor> grads;
  std::map<std::string, Tensor> drawn;
  {
    TapeScope scope;
    ObjectiveResult r = method.build(*model, x, y, robust, ctx);
    grads = objective_gradients(r, params);
    for (const auto& [name, t] : r.drawn) drawn[name] = t.detach();
  }

  ObjectiveCheckReport rep;
  rep.tensors = static_cast<int64_t>(params.size());
  rep.objective = method.definition(*model, x, y, robust, ctx);
  const double h = opt.step;
  for (size_t k = 0; k < params.size(); ++k) {
    Tensor p = params[k];
    int64_t n = p.numel();
    std::vector<int64_t> idx;
    for (int64_t s = 0; s < std::min(n, opt.samples_per_tensor); ++s)
      idx.push_back(n <= opt.samples_per_tensor ? s : gen.next_int(n));
    for (int64_t j : idx) {
      double p0 = p.at(j);
      p.set(j, p0 + h);
      double fp = method.definition(*model, x, y, robust, ctx);
      p.set(j, p0 - h);
      double fm = method.definition(*model, x, y, robust, ctx);
      p.set(j, p0);
      double fwd = (fp - rep.objective) / h, bwd = (rep.objective - fm) / h;
      if (std::fabs(fwd - bwd) > opt.kink_tolerance * std::max({1.0, std::fabs(fwd), std::fabs(bwd)})) {
        ++rep.skipped_kinks;  // a sign of g_i or d_i (or a ReLU) flips within the step
        continue;
      }
      double numeric = (fp - fm) / (2 * h), analytic = grads[k].at(j);
      double e = gradcheck::relative_error(analytic, numeric);
      ++rep.checked;
      if (rep.worst.empty() || e > rep.max_rel_error) {
        rep.max_rel_error = e;
        std::ostringstream os;
        os.precision(12);
        os << entries[k]->name << "[" << j << "]: analytic " << analytic << " numeric " << numeric;
        rep.worst = os.str();
      }
    }
  }

  if (!opt.dump.empty()) {
    io::TensorMap t;
    for (size_t k = 0; k < params.size(); ++k) {
      t.emplace_back("param." + entries[k]->name, ckpt::to_stored(params[k], entries[k]->conv_filter));
      t.emplace_back("grad." + entries[k]->name, ckpt::to_stored(grads[k], entries[k]->conv_filter));
    }
    t.emplace_back("x_nhwc", ckpt::to_stored(x, false));
    t.emplace_back("labels", ckpt::to_stored(y, false));
    t.emplace_back("delta_nhwc", ckpt::to_stored(delta, false));
    for (const auto& [name, d] : drawn) t.emplace_back("drawn." + name, ckpt::to_stored(d, false));
    std::ostringstream obj;
    obj.precision(17);
    obj << rep.objective;
    // The method's and the shared robust settings, for the reference to rebuild the same objective.
    nlohmann::json settings = nlohmann::json::object();
    RobustSettings rs = robust;
    write_json(rs, settings);
    std::unique_ptr<Method> m = method.clone();
    write_json(*m, settings);
    io::Metadata meta{{"model", opt.model}, {"act", nets::act_name(opt.act)}, {"method", method.name()},
                      {"objective", obj.str()}};
    for (auto it = settings.begin(); it != settings.end(); ++it)
      meta[it.key()] = it->is_string() ? it->get<std::string>() : it->dump();
    io::write_safetensors(opt.dump, t, meta);
  }
  return rep;
}

}  // namespace llr
