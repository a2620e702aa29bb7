// CPU backend: the raw functions attacks need (column gather/scatter, division, the APGD step, row selection).
#include "engine/cpu/cpu_backend.h"
#include <cstring>

#include "engine/cpu/cpu_common.h"

namespace llr {

namespace {
void check_columns(const char* op, int64_t n, int64_t k, const Tensor& idx) {
  LLR_CHECK(idx.dtype() == DType::i32 && idx.rank() == 1 && idx.dim(0) == n, op, ": indices must be i32 [", n,
            "], got ", idx.describe());
  for (int64_t i = 0; i < n; ++i)
    LLR_CHECK(idx.data<int32_t>()[i] >= 0 && idx.data<int32_t>()[i] < k, op, ": column ", idx.data<int32_t>()[i],
              " of row ", i, " outside [0, ", k, ")");
}
}  // namespace

Tensor CpuBackend::gather_columns(const Tensor& z, const Tensor& idx) {
  cpu::require_cpu_floating("gather_columns", {&z});
  LLR_CHECK(z.rank() == 2, "gather_columns: expected [N, K], got ", z.describe());
  int64_t n = z.dim(0), k = z.dim(1);
  check_columns("gather_columns", n, k, idx);
  return dispatch_floating(z.dtype(), "gather_columns", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({n}, z.dtype());
    for (int64_t i = 0; i < n; ++i) out.data<T>()[i] = z.data<T>()[i * k + idx.data<int32_t>()[i]];
    return out;
  });
}

Tensor CpuBackend::scatter_columns(const Tensor& g, const Tensor& idx, int64_t k) {
  cpu::require_cpu_floating("scatter_columns", {&g});
  LLR_CHECK(g.rank() == 1, "scatter_columns: expected [N], got ", g.describe());
  int64_t n = g.dim(0);
  check_columns("scatter_columns", n, k, idx);
  return dispatch_floating(g.dtype(), "scatter_columns", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::zeros({n, k}, g.dtype());
    for (int64_t i = 0; i < n; ++i) out.data<T>()[i * k + idx.data<int32_t>()[i]] = g.data<T>()[i];
    return out;
  });
}

Tensor CpuBackend::div(const Tensor& a, const Tensor& b) {
  cpu::require_cpu_floating("div", {&a, &b});
  cpu::require_same_shape("div", a, b);
  return dispatch_floating(a.dtype(), "div", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty(a.shape(), a.dtype(), a.layout());
    for (int64_t i = 0, n_ = a.numel(); i < n_; ++i) out.data<T>()[i] = a.data<T>()[i] / b.data<T>()[i];
    return out;
  });
}

void CpuBackend::apgd_step(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
                           double alpha, double eps) {
  cpu::require_cpu_floating("apgd_step", {&delta, &delta_prev, &x, &grad, &eta});
  cpu::require_same_shape("apgd_step", delta, delta_prev);
  cpu::require_same_shape("apgd_step", delta, x);
  cpu::require_same_shape("apgd_step", delta, grad);
  LLR_CHECK(eta.shape() == Shape({delta.dim(0)}), "apgd_step: eta must be [N], got ", eta.describe());
  dispatch_floating(delta.dtype(), "apgd_step", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = delta.dim(0), inner = delta.numel() / n;
    T *d = delta.data<T>(), *dp = delta_prev.data<T>();
    for (int64_t i = 0, n_ = delta.numel(); i < n_; ++i) {
      T old = d[i];
      d[i] = perturbation_math::apgd<T>(d[i], dp[i], x.data<T>()[i], grad.data<T>()[i], eta.data<T>()[i / inner],
                                        T(alpha), T(eps));
      dp[i] = old;
    }
    return 0;
  });
}

Tensor CpuBackend::select_rows(const Tensor& a, const Tensor& b, const Tensor& mask) {
  cpu::require_same_shape("select_rows", a, b);
  LLR_CHECK(a.dtype() == b.dtype() && a.device() == Device::cpu && b.device() == Device::cpu,
            "select_rows: a and b must be CPU tensors of one dtype");
  LLR_CHECK(mask.rank() == 1 && mask.dim(0) == a.dim(0) && mask.device() == Device::cpu,
            "select_rows: mask must be a CPU vector of length ", a.dim(0), ", got ", mask.describe());
  int64_t n = a.dim(0), row = a.numel() / n * static_cast<int64_t>(dtype_size(a.dtype()));
  Tensor out = a.clone();
  for (int64_t i = 0; i < n; ++i)
    if (mask.at(i) != 0)
      std::memcpy(static_cast<uint8_t*>(out.raw_data()) + i * row, static_cast<const uint8_t*>(b.raw_data()) + i * row,
                  row);
  return out;
}

}  // namespace llr
