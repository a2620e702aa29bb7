// CPU backend: per-example softmax cross-entropy, margin loss and KL divergence on logits (N, K), their vjps and
// tangents, and the column gather/scatter of targeted losses.
#include <cmath>
#include <limits>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/cpu_common.h"

namespace llr {

namespace {

struct LogitsView {
  int64_t n, k;
};

LogitsView logits_view(const char* op, const Tensor& z, const Tensor& labels) {
  cpu::require_in_range(op, "label", labels, z.dim(1));
  return {z.dim(0), z.dim(1)};
}

// Softmax of one row, computed in double.
template <class T>
void softmax_row(const T* z, int64_t k, double* p) {
  double mx = z[0];
  for (int64_t j = 1; j < k; ++j) mx = std::max(mx, double(z[j]));
  double s = 0;
  for (int64_t j = 0; j < k; ++j) s += (p[j] = std::exp(double(z[j]) - mx));
  for (int64_t j = 0; j < k; ++j) p[j] /= s;
}

// The best class other than y (the first on ties).
template <class T>
int64_t best_other(const T* z, int64_t k, int32_t y) {
  int64_t best = -1;
  for (int64_t j = 0; j < k; ++j)
    if (j != y && (best < 0 || z[j] > z[best])) best = j;
  return best;
}

template <class T>
void log_softmax_row(const T* z, int64_t k, double* out) {
  double mx = z[0];
  for (int64_t j = 1; j < k; ++j) mx = std::max(mx, double(z[j]));
  double s = 0;
  for (int64_t j = 0; j < k; ++j) s += std::exp(double(z[j]) - mx);
  double lse = mx + std::log(s);
  for (int64_t j = 0; j < k; ++j) out[j] = double(z[j]) - lse;
}

// KL(softmax(a) || softmax(b)) of one row; fills the rows' log-softmax values.
template <class T>
double row_kl(const T* a, const T* b, int64_t k, double* lp, double* lq) {
  log_softmax_row(a, k, lp);
  log_softmax_row(b, k, lq);
  double kl = 0;
  for (int64_t j = 0; j < k; ++j) kl += std::exp(lp[j]) * (lp[j] - lq[j]);
  return kl;
}

}  // namespace

Tensor CpuBackend::cross_entropy(const Tensor& z, const Tensor& labels) {
  auto v = logits_view("cross_entropy", z, labels);
  return dispatch_floating(z.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({v.n}, z.dtype());
    const int32_t* y = labels.data<int32_t>();
    for (int64_t i = 0; i < v.n; ++i) {
      const T* zi = z.data<T>() + i * v.k;
      double mx = zi[0];
      for (int64_t j = 1; j < v.k; ++j) mx = std::max(mx, double(zi[j]));
      double s = 0;
      for (int64_t j = 0; j < v.k; ++j) s += std::exp(double(zi[j]) - mx);
      out.data<T>()[i] = static_cast<T>(mx + std::log(s) - double(zi[y[i]]));
    }
    return out;
  });
}

Tensor CpuBackend::cross_entropy_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  auto v = logits_view("cross_entropy_backward", z, labels);
  return dispatch_floating(z.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor dz = Tensor::empty(z.shape(), z.dtype());
    const int32_t* y = labels.data<int32_t>();
    std::vector<double> p(v.k);
    for (int64_t i = 0; i < v.n; ++i) {
      softmax_row(z.data<T>() + i * v.k, v.k, p.data());
      double gi = g.data<T>()[i];
      for (int64_t j = 0; j < v.k; ++j) dz.data<T>()[i * v.k + j] = static_cast<T>(gi * (p[j] - (j == y[i])));
    }
    return dz;
  });
}

Tensor CpuBackend::cross_entropy_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  auto v = logits_view("cross_entropy_tangent", z, labels);
  return dispatch_floating(z.dtype(), "cross_entropy_tangent", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({v.n}, z.dtype());
    const int32_t* y = labels.data<int32_t>();
    std::vector<double> p(v.k);
    for (int64_t i = 0; i < v.n; ++i) {
      softmax_row(z.data<T>() + i * v.k, v.k, p.data());
      const T* zd = zdot.data<T>() + i * v.k;
      double acc = 0;
      for (int64_t j = 0; j < v.k; ++j) acc += (p[j] - (j == y[i])) * double(zd[j]);
      out.data<T>()[i] = static_cast<T>(acc);
    }
    return out;
  });
}

// t_i = <p_i - e_y, zdot_i>: d zdot = g (p - e_y); d z = g H zdot = g p * (zdot - <p, zdot>).
std::pair<Tensor, Tensor> CpuBackend::cross_entropy_tangent_backward(const Tensor& z, const Tensor& labels, const Tensor& zdot,
                                                         const Tensor& g) {
  auto v = logits_view("cross_entropy_tangent_backward", z, labels);
  return dispatch_floating(z.dtype(), "cross_entropy_tangent_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor dz = Tensor::empty(z.shape(), z.dtype());
    Tensor dzd = Tensor::empty(z.shape(), z.dtype());
    const int32_t* y = labels.data<int32_t>();
    std::vector<double> p(v.k);
    for (int64_t i = 0; i < v.n; ++i) {
      softmax_row(z.data<T>() + i * v.k, v.k, p.data());
      const T* zd = zdot.data<T>() + i * v.k;
      double gi = g.data<T>()[i];
      double pz = 0;
      for (int64_t j = 0; j < v.k; ++j) pz += p[j] * double(zd[j]);
      for (int64_t j = 0; j < v.k; ++j) {
        dzd.data<T>()[i * v.k + j] = static_cast<T>(gi * (p[j] - (j == y[i])));
        dz.data<T>()[i * v.k + j] = static_cast<T>(gi * p[j] * (double(zd[j]) - pz));
      }
    }
    return std::make_pair(dz, dzd);
  });
}

Tensor CpuBackend::margin_loss(const Tensor& z, const Tensor& labels) {
  auto v = logits_view("margin_loss", z, labels);
  return dispatch_floating(z.dtype(), "margin_loss", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({v.n}, z.dtype());
    const int32_t* y = labels.data<int32_t>();
    for (int64_t i = 0; i < v.n; ++i) {
      const T* zi = z.data<T>() + i * v.k;
      out.data<T>()[i] = zi[y[i]] - zi[best_other(zi, v.k, y[i])];
    }
    return out;
  });
}

// Also the vjp of margin_loss_tangent with respect to zdot: the same scatter of g to (y, j*).
Tensor CpuBackend::margin_loss_backward(const Tensor& z, const Tensor& labels, const Tensor& g) {
  auto v = logits_view("margin_loss_backward", z, labels);
  return dispatch_floating(z.dtype(), "margin_loss_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor dz = Tensor::zeros(z.shape(), z.dtype());
    const int32_t* y = labels.data<int32_t>();
    for (int64_t i = 0; i < v.n; ++i) {
      const T* zi = z.data<T>() + i * v.k;
      dz.data<T>()[i * v.k + y[i]] += g.data<T>()[i];
      dz.data<T>()[i * v.k + best_other(zi, v.k, y[i])] -= g.data<T>()[i];
    }
    return dz;
  });
}

Tensor CpuBackend::margin_loss_tangent(const Tensor& z, const Tensor& labels, const Tensor& zdot) {
  auto v = logits_view("margin_loss_tangent", z, labels);
  return dispatch_floating(z.dtype(), "margin_loss_tangent", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({v.n}, z.dtype());
    const int32_t* y = labels.data<int32_t>();
    for (int64_t i = 0; i < v.n; ++i) {
      const T* zi = z.data<T>() + i * v.k;
      const T* zd = zdot.data<T>() + i * v.k;
      out.data<T>()[i] = zd[y[i]] - zd[best_other(zi, v.k, y[i])];
    }
    return out;
  });
}

Tensor CpuBackend::kl_div(const Tensor& zp, const Tensor& zq) {
  return dispatch_floating(zp.dtype(), "kl_div", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = zp.dim(0), k = zp.dim(1);
    Tensor out = Tensor::empty({n}, zp.dtype());
    std::vector<double> lp(k), lq(k);
    for (int64_t i = 0; i < n; ++i)
      out.data<T>()[i] = static_cast<T>(row_kl(zp.data<T>() + i * k, zq.data<T>() + i * k, k, lp.data(), lq.data()));
    return out;
  });
}

// KL = sum p (log p - log q): d/dzp_k = p_k (log p_k - log q_k - KL), d/dzq_k = q_k - p_k.
std::pair<Tensor, Tensor> CpuBackend::kl_div_backward(const Tensor& zp, const Tensor& zq, const Tensor& g) {
  return dispatch_floating(zp.dtype(), "kl_div_backward", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = zp.dim(0), k = zp.dim(1);
    Tensor dp = Tensor::empty(zp.shape(), zp.dtype()), dq = Tensor::empty(zp.shape(), zp.dtype());
    std::vector<double> lp(k), lq(k);
    for (int64_t i = 0; i < n; ++i) {
      double kl = row_kl(zp.data<T>() + i * k, zq.data<T>() + i * k, k, lp.data(), lq.data());
      double gi = g.data<T>()[i];
      for (int64_t j = 0; j < k; ++j) {
        double p = std::exp(lp[j]), q = std::exp(lq[j]);
        dp.data<T>()[i * k + j] = static_cast<T>(gi * p * (lp[j] - lq[j] - kl));
        dq.data<T>()[i * k + j] = static_cast<T>(gi * (q - p));
      }
    }
    return std::make_pair(dp, dq);
  });
}

Tensor CpuBackend::gather_columns(const Tensor& z, const Tensor& idx) {
  int64_t n = z.dim(0), k = z.dim(1);
  cpu::require_in_range("gather_columns", "column", idx, k);
  return dispatch_floating(z.dtype(), "gather_columns", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::empty({n}, z.dtype());
    for (int64_t i = 0; i < n; ++i) out.data<T>()[i] = z.data<T>()[i * k + idx.data<int32_t>()[i]];
    return out;
  });
}

Tensor CpuBackend::scatter_columns(const Tensor& g, const Tensor& idx, int64_t k) {
  int64_t n = g.dim(0);
  cpu::require_in_range("scatter_columns", "column", idx, k);
  return dispatch_floating(g.dtype(), "scatter_columns", [&](auto tag) {
    using T = decltype(tag);
    Tensor out = Tensor::zeros({n, k}, g.dtype());
    for (int64_t i = 0; i < n; ++i) out.data<T>()[i * k + idx.data<int32_t>()[i]] = g.data<T>()[i];
    return out;
  });
}

}  // namespace llr
