#include "engine/gradcheck.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/rng.h"

namespace llr::gradcheck {

double relative_error(double a, double b) {
  return std::fabs(a - b) / std::max({std::fabs(a), std::fabs(b), 1.0});
}

namespace {

std::vector<Tensor> clone_all(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(x.clone());
  return out;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.at(i) * b.at(i);
  return s;
}

void record(Report& r, double analytic, double numeric, const std::string& where) {
  ++r.checked;
  double e = relative_error(analytic, numeric);
  if (r.worst.empty() || e > r.max_rel_error) {
    r.max_rel_error = e;
    std::ostringstream os;
    os.precision(12);
    os << where << ": analytic " << analytic << " numeric " << numeric << " (rel. error " << e << ")";
    r.worst = os.str();
  }
}

bool is_kink(double fwd, double bwd, double tolerance) {
  return std::fabs(fwd - bwd) > tolerance * std::max({1.0, std::fabs(fwd), std::fabs(bwd)});
}

std::vector<int64_t> sample_indices(int64_t n, int64_t max_count, Generator& gen) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  if (max_count < 0 || max_count >= n) return idx;
  for (int64_t i = 0; i < max_count; ++i) std::swap(idx[i], idx[i + gen.next_int(n - i)]);
  idx.resize(static_cast<size_t>(max_count));
  return idx;
}

void require_f64(const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable) {
  LLR_CHECK(inputs.size() == differentiable.size(), "gradcheck: ", inputs.size(), " inputs but ",
            differentiable.size(), " differentiable flags");
  for (size_t i = 0; i < inputs.size(); ++i)
    if (differentiable[i])
      LLR_CHECK(inputs[i].dtype() == DType::f64, "gradcheck: input ", i, " is ", inputs[i].describe(),
                "; finite differences need f64");
}

}  // namespace

Report check_vjp(const Function& f, const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable,
                 const Options& options) {
  require_f64(inputs, differentiable);
  Generator gen(options.seed);

  // Analytic: one reverse pass with a random cotangent u.
  std::vector<Tensor> xs = clone_all(inputs);
  std::vector<Tensor> wrt;
  for (size_t i = 0; i < xs.size(); ++i)
    if (differentiable[i]) wrt.push_back(xs[i].requires_grad_());
  Tensor y = f(xs);
  Tensor u = gen.normal(y.shape(), 0.0, 1.0, y.dtype(), y.layout());
  std::vector<Tensor> grads;
  if (y.requires_grad()) {
    grads = grad({y}, {u}, wrt);
  } else {
    for (const Tensor& w : wrt) grads.push_back(backend::zeros(w.shape(), w.dtype(), w.layout(), w.device()));
  }
  Tape::current().clear();

  // Numeric: central differences of s(x) = <u, f(x)>.
  NoGradGuard no_grad;
  auto s_at = [&](std::vector<Tensor>& args) { return dot(u, f(args)); };
  std::vector<Tensor> args = clone_all(inputs);
  double s0 = s_at(args);
  Report report;
  size_t k = 0;
  const double h = options.step;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!differentiable[i]) continue;
    const Tensor& g = grads[k++];
    for (int64_t j : sample_indices(inputs[i].numel(), options.max_elements_per_input, gen)) {
      double x0 = args[i].at(j);
      args[i].set(j, x0 + h);
      double sp = s_at(args);
      args[i].set(j, x0 - h);
      double sm = s_at(args);
      args[i].set(j, x0);
      if (is_kink((sp - s0) / h, (s0 - sm) / h, options.kink_tolerance)) {
        ++report.skipped_kinks;
        continue;
      }
      std::ostringstream where;
      where << "input " << i << " element " << j;
      record(report, g.at(j), (sp - sm) / (2 * h), where.str());
    }
  }
  return report;
}

Report check_jvp(const Function& f, const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable,
                 const Options& options) {
  require_f64(inputs, differentiable);
  Generator gen(options.seed + 7919);
  std::vector<Tensor> tangents(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i)
    if (differentiable[i])
      tangents[i] = gen.normal(inputs[i].shape(), 0.0, 1.0, inputs[i].dtype(), inputs[i].layout());

  NoGradGuard no_grad;
  std::vector<Tensor> xs = clone_all(inputs);
  for (size_t i = 0; i < xs.size(); ++i)
    if (tangents[i].defined()) xs[i].set_tangent(tangents[i]);
  Tensor y = f(xs);
  Tensor ydot = y.has_tangent() ? y.tangent() : backend::zeros(y.shape(), y.dtype(), y.layout(), y.device());

  auto shifted = [&](double h) {
    std::vector<Tensor> a = clone_all(inputs);
    for (size_t i = 0; i < a.size(); ++i)
      if (tangents[i].defined()) a[i] = backend::add(a[i], backend::scale(tangents[i], h));
    return f(a);
  };
  const double h = options.step;
  Tensor yp = shifted(h), ym = shifted(-h), y0 = shifted(0.0);
  Report report;
  for (int64_t j = 0; j < y.numel(); ++j) {
    double fwd = (yp.at(j) - y0.at(j)) / h, bwd = (y0.at(j) - ym.at(j)) / h;
    if (is_kink(fwd, bwd, options.kink_tolerance)) {
      ++report.skipped_kinks;
      continue;
    }
    std::ostringstream where;
    where << "output element " << j;
    record(report, ydot.at(j), (yp.at(j) - ym.at(j)) / (2 * h), where.str());
  }
  Tape::current().clear();
  return report;
}

Report check_jvp_vjp(const Function& f, const std::vector<Tensor>& inputs, const std::vector<bool>& differentiable,
                     const Options& options) {
  require_f64(inputs, differentiable);
  Generator gen(options.seed + 104729);
  // The jvp map g(x, t) = f'(x) t, taking the primal inputs followed by one tangent per differentiable input.
  std::vector<Tensor> g_inputs = inputs;
  std::vector<bool> g_diff = differentiable;
  std::vector<size_t> tangent_of;
  for (size_t i = 0; i < inputs.size(); ++i)
    if (differentiable[i]) {
      g_inputs.push_back(gen.normal(inputs[i].shape(), 0.0, 1.0, inputs[i].dtype(), inputs[i].layout()));
      g_diff.push_back(true);
      tangent_of.push_back(i);
    }
  const size_t n = inputs.size();
  Function jvp_map = [&f, n, tangent_of](const std::vector<Tensor>& a) {
    std::vector<Tensor> xs(a.begin(), a.begin() + static_cast<long>(n));
    for (size_t k = 0; k < tangent_of.size(); ++k) xs[tangent_of[k]].set_tangent(a[n + k]);
    Tensor y = f(xs);
    for (size_t k = 0; k < tangent_of.size(); ++k) xs[tangent_of[k]].clear_tangent();
    return y.has_tangent() ? y.tangent() : backend::zeros(y.shape(), y.dtype(), y.layout(), y.device());
  };
  return check_vjp(jvp_map, g_inputs, g_diff, options);
}

}  // namespace llr::gradcheck
