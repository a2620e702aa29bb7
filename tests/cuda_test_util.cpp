#include "tests/cuda_test_util.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "kernels/allocator.h"
#include "kernels/context.h"
#include "kernels/device_info.h"

namespace llr::test {

bool gpu_ready(const char* what) {
  if (!cuda::available()) {
    std::printf("SKIPPED %s: %s\n", what, cuda::device_summary().c_str());
    MESSAGE("skipped (no CUDA device): ", std::string(what));
    return false;
  }
  cuda::init();
  cuda::allocator().set_poison(true);
  return true;
}

double round_to_bf16(double v) {
  float f = static_cast<float>(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
  u &= 0xFFFF0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

Tensor rounded(const Tensor& t, DType d) {
  if (t.dtype() == DType::i32) return t;
  if (d == DType::f64) return t.clone();
  Tensor r = t.to(DType::f32).to(DType::f64);
  if (d == DType::bf16) {
    double* p = r.data<double>();
    for (int64_t i = 0; i < r.numel(); ++i) p[i] = round_to_bf16(p[i]);
  }
  return r;
}

Tensor upload(const Tensor& t, DType d) {
  if (t.dtype() == DType::i32) return t.to(Device::cuda);
  if (d == DType::f64) return t.to(Device::cuda);
  Tensor g = t.to(DType::f32).to(Device::cuda);
  return d == DType::bf16 ? g.to(DType::bf16) : g;
}

Tensor host_f64(const Tensor& t) {
  Tensor h = t.dtype() == DType::bf16 ? t.to(DType::f32) : t;
  h = h.to(Device::cpu);
  return h.dtype() == DType::f64 ? h : h.to(DType::f64);
}

DType input_dtype(const Tensor& t, DType data) { return t.rank() <= 1 ? stat_dtype(data) : data; }

std::string index_str(const Shape& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.size());
  for (size_t k = shape.size(); k-- > 0;) {
    idx[k] = shape[k] ? flat % shape[k] : 0;
    flat = shape[k] ? flat / shape[k] : 0;
  }
  std::ostringstream os;
  os << '[';
  for (size_t k = 0; k < idx.size(); ++k) os << (k ? "," : "") << idx[k];
  os << ']';
  return os.str();
}

bool check_close(const char* what, const std::string& name, const Mode& m, const Tensor& got, const Tensor& ref) {
  Tensor g = host_f64(got), r = host_f64(ref);
  REQUIRE(g.shape() == r.shape());
  const double* pg = g.data<double>();
  const double* pr = r.data<double>();
  const int64_t n = g.numel();
  double scale = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(pr[i]));
  if (scale == 0) scale = 1;
  const double atol = m.tol * scale;
  double worst_violation = 0;
  int64_t worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    double v = std::fabs(pg[i] - pr[i]) / (atol + m.tol * std::fabs(pr[i]));
    if (std::isnan(v)) v = INFINITY;
    if (v > worst_violation) worst_violation = v, worst = i;
  }
  bool ok = worst_violation <= 1.0;
  std::ostringstream detail;
  detail.precision(9);
  detail << name << " [" << m.name << "] " << what << ": worst element " << index_str(g.shape(), worst) << " of "
         << shape_str(g.shape()) << " (flat " << worst << "): got " << (n ? pg[worst] : 0.0) << ", reference "
         << (n ? pr[worst] : 0.0) << "; |got - ref| is " << worst_violation
         << " times the allowed tol (max|ref| + |ref|) with tol " << m.tol << ", max|ref| " << scale;
  if (!ok) std::printf("  mismatch: %s\n", detail.str().c_str());
  INFO(detail.str());
  CHECK(ok);
  return ok;
}

double relative_l2(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    Tensor x = host_f64(a[k]), y = host_f64(b[k]);
    REQUIRE(x.shape() == y.shape());
    const double *px = x.data<double>(), *py = y.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      num += (px[i] - py[i]) * (px[i] - py[i]);
      den += py[i] * py[i];
    }
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void run_case(const OpCase& c, const Mode& m, int& failures) {
  cuda::context().set_tf32(m.tf32);
  const uint64_t seed = 4242;
  Generator gen(seed);
  std::vector<Tensor> in64 = c.make_inputs(gen);
  std::vector<DType> dt;
  for (const Tensor& t : in64) dt.push_back(input_dtype(t, m.data));
  auto fresh = [&](bool on_gpu) {
    std::vector<Tensor> v;
    for (size_t i = 0; i < in64.size(); ++i) {
      Tensor t = on_gpu ? upload(in64[i], dt[i]) : rounded(in64[i], dt[i]);
      if (c.differentiable[i]) t.requires_grad_();
      v.push_back(t);
    }
    return v;
  };
  bool ok = true;
  // Forward and vjp.
  {
    std::vector<Tensor> dev = fresh(true), ref = fresh(false);
    Tensor y_dev = c.fn(dev), y_ref = c.fn(ref);
    ok &= check_close("forward", c.name, m, y_dev, y_ref);
    Tensor u64 = gen.normal(y_ref.shape(), 0, 1, DType::f64, y_ref.layout());
    std::vector<Tensor> wrt_dev, wrt_ref;
    for (size_t i = 0; i < in64.size(); ++i)
      if (c.differentiable[i]) wrt_dev.push_back(dev[i]), wrt_ref.push_back(ref[i]);
    std::vector<Tensor> g_dev = grad({y_dev}, {upload(u64, y_dev.dtype())}, wrt_dev);
    std::vector<Tensor> g_ref = grad({y_ref}, {rounded(u64, y_dev.dtype())}, wrt_ref);
    for (size_t k = 0; k < g_dev.size(); ++k) {
      CHECK(g_dev[k].dtype() == wrt_dev[k].dtype());
      ok &= check_close("vjp", c.name, m, g_dev[k], g_ref[k]);
    }
    Tape::current().clear();
  }
  // jvp with eager tangents.
  if (!c.is_tangent_op) {
    NoGradGuard no_grad;
    std::vector<Tensor> dev = fresh(true), ref = fresh(false);
    for (size_t i = 0; i < in64.size(); ++i) {
      if (!c.differentiable[i]) continue;
      Tensor t64 = gen.normal(in64[i].shape(), 0, 1, DType::f64, in64[i].layout());
      dev[i].set_tangent(upload(t64, dt[i]));
      ref[i].set_tangent(rounded(t64, dt[i]));
    }
    Tensor y_dev = c.fn(dev), y_ref = c.fn(ref);
    REQUIRE(y_dev.has_tangent() == y_ref.has_tangent());
    if (y_ref.has_tangent()) ok &= check_close("jvp", c.name, m, y_dev.tangent(), y_ref.tangent());
  }
  std::printf("cuda vs cpu %-6s %-52s %s\n", m.name, c.name.c_str(), ok ? "ok" : "MISMATCH");
  std::fflush(stdout);
  if (!ok) ++failures;
}

}  // namespace llr::test
