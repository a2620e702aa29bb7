// The CPU side of the perturbation kernels (robust_kernels.def): plain loops over the per-element math of
// perturbation_math.h, which the CUDA kernels (kernels/robust.cu) share. Arguments were checked by the dispatch. The
// per-step kernels of every attack and search run on all cores (examples or elements split among them; each
// example's sums in one thread, in order, so results do not depend on the thread count).
#include <cmath>
#include <cstring>

#include "engine/cpu/cpu_common.h"
#include "engine/elementwise_math.h"
#include "train/robust/fab_math.h"
#include "train/robust/robust_kernels.h"
#include "train/robust/square_math.h"

namespace llr {

namespace {

class CpuRobustKernels final : public RobustKernels {
 public:
#define LLR_KERNEL LLR_DECLARE_OVERRIDE
#include "train/robust/robust_kernels.def"
#undef LLR_KERNEL
};

int64_t row_elements(const Tensor& t) { return t.dim(0) == 0 ? 0 : t.numel() / t.dim(0); }

// A length with its device radius read now (when the kernel runs: at each replay of a recording).
double length_now(const EpsLength& l) {
  return perturbation_math::DeviceLength{l.value(), l.scale, l.eps.defined() ? l.eps.data<double>() : nullptr}.now();
}

// A random counter with its device step read now (when the kernel runs: at each replay of a recording).
uint64_t counter_now(const RandomCounter& c) {
  return perturbation_math::counter_at(c.base, c.per_step, c.step.defined() ? c.step.data<double>() : nullptr);
}

// out[i] = f(i) for the per-example vectors of a kernel, in the dtype of `like`.
template <class F>
Tensor per_example(int64_t n, DType dtype, F f) {
  Tensor out = Tensor::empty({n}, dtype);
  dispatch_floating(dtype, "per-example kernel", [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < n; ++i) out.data<T>()[i] = static_cast<T>(f(tag, i));
    return 0;
  });
  return out;
}

// The two ways fab_math visits an example's n elements, as plain loops.
struct ExampleLoops {
  int64_t n;
  template <class F, class C>
  fab_math::Partial operator()(F f, C combine) const {
    fab_math::Partial acc{{0, 0, 0, 0, 0, 0}};
    for (int64_t i = 0; i < n; ++i) acc = combine(acc, f(i));
    return acc;
  }
  template <class F>
  void operator()(F f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
};

}  // namespace

namespace {
// The CPU's perturbation kernels as an open CPU recording reaches them (engine/graph.h).
class RecordingCpuRobustKernels final : public RobustKernels {
 public:
  explicit RecordingCpuRobustKernels(RobustKernels& inner) : inner_(inner) {}
  template <class R>
  static void after_replay(const char*, R&) {}
#define LLR_KERNEL LLR_DECLARE_RECORDED
#include "train/robust/robust_kernels.def"
#undef LLR_KERNEL

 private:
  RobustKernels& inner_;
};
}  // namespace

RobustKernels& robust_kernels_for(Device device) {
  static CpuRobustKernels cpu;
  static RecordingCpuRobustKernels recording(cpu);
  return dispatch::for_device<RobustKernels>(device, cpu, recording, "perturbation kernels");
}

void CpuRobustKernels::perturbation_step(Tensor& delta, const Tensor& x, const Tensor& grad_weighted, const Tensor& gx,
                                         const Tensor& sign_g, Tensor& m, Tensor& v, Tensor& dots,
                                         Tensor& adam_steps, const PerturbationParams& p) {
  if (delta.dim(0) == 0) return;  // an empty batch: no step (and no step counted)
  bool llr = gx.defined();
  bool adam = p.update == PerturbationUpdate::adam;
  bool ball = p.projection == Projection::ball_and_box;
  // Adam's step count: the counter's steps taken + 1 (counted on below).
  const double t = adam ? adam_steps.data<double>()[0] + 1 : 1.0;
  dispatch_floating(delta.dtype(), "perturbation_step", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = delta.dim(0), inner = delta.numel() / n;
    T* d = delta.data<T>();
    const T *px = x.data<T>(), *pg = grad_weighted.data<T>();
    const T* pgx = llr ? gx.data<T>() : nullptr;
    const T* ps = llr ? sign_g.data<T>() : nullptr;
    T* pm = adam ? m.data<T>() : nullptr;
    T* pv = adam ? v.data<T>() : nullptr;
    T bias1 = perturbation_math::adam_bias_correction(T(p.beta1), t),
      bias2 = perturbation_math::adam_bias_correction(T(p.beta2), t);
    T* pdots = llr ? dots.data<T>() : nullptr;
    const T step_size = T(length_now(p.step_size)), eps = T(length_now(p.eps)), beta1 = T(p.beta1), beta2 = T(p.beta2),
            adam_eps = T(p.adam_eps);
    // The update rule as a compile-time constant, so the sign step's loop has no branch on it and vectorises.
    auto run = [&](auto adam_c) {
      constexpr bool kAdam = decltype(adam_c)::value;
#pragma omp parallel for schedule(static) if (delta.numel() > cpu::kParallelMin)
      for (int64_t e = 0; e < n; ++e) {
        double acc = 0;
        for (int64_t j = 0; j < inner; ++j) {
          int64_t i = e * inner + j;
          T dir = llr ? perturbation_math::direction(pg[i], pgx[i], ps[e]) : pg[i];
          T mm = 0, vv = 0;
          T* mp = kAdam ? pm + i : &mm;
          T* vp = kAdam ? pv + i : &vv;
          d[i] = perturbation_math::step<T>(d[i], px[i], dir, mp, vp, step_size, eps, ball, kAdam, beta1, beta2,
                                            adam_eps, bias1, bias2);
          if (llr) acc += double(d[i]) * double(pgx[i]);
        }
        if (llr) pdots[e] = static_cast<T>(acc);
      }
    };
    if (adam)
      run(std::true_type{});
    else
      run(std::false_type{});
    return 0;
  });
  if (adam) adam_steps.data<double>()[0] = t;
}

LlrCoefficients CpuRobustKernels::llr_coefficients(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom,
                                             double lambda, double mu) {
  return dispatch_floating(l.dtype(), "llr_coefficients", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = l.numel();
    LlrCoefficients c;
    for (Tensor* t : {&c.nominal_weight, &c.perturbed_weight, &c.tangent_weight, &c.abs_g, &c.sign_g})
      *t = Tensor::empty({n}, l.dtype());
    for (int64_t i = 0; i < n; ++i) {
      T g = lp.data<T>()[i] - l.data<T>()[i] - d.data<T>()[i];
      T sg = perturbation_math::sign_of(g), sd = perturbation_math::sign_of(d.data<T>()[i]);
      c.nominal_weight.data<T>()[i] = T(w_nom) - T(lambda) * sg;
      c.perturbed_weight.data<T>()[i] = T(lambda) * sg;
      c.tangent_weight.data<T>()[i] = T(mu) * sd - T(lambda) * sg;
      c.abs_g.data<T>()[i] = std::fabs(g);
      c.sign_g.data<T>()[i] = sg;
    }
    return c;
  });
}

Tensor CpuRobustKernels::perturbation_init(const Tensor& x, const EpsLength& radius, double normal_scale,
                                           uint64_t seed, const RandomCounter& c) {
  const uint64_t counter = counter_now(c);
  const double eps = length_now(radius);
  return dispatch_floating(x.dtype(), "perturbation_init", [&](auto tag) {
    using T = decltype(tag);
    Tensor d = Tensor::empty(x.shape(), x.dtype(), x.layout());
    T* pd = d.data<T>();
    const T* px = x.data<T>();
    const int64_t n_ = x.numel();
#pragma omp parallel for schedule(static) if (n_ > cpu::kParallelMin)
    for (int64_t i = 0; i < n_; ++i)
      pd[i] = perturbation_math::project<T>(perturbation_math::initial<T>(seed, counter + i, T(eps), T(normal_scale)),
                                            px[i], T(eps));
    return d;
  });
}

GradientAlignment CpuRobustKernels::gradient_alignment(const Tensor& g1, const Tensor& g2, double guard) {
  return dispatch_floating(g1.dtype(), "gradient_alignment", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = g1.dim(0), inner = row_elements(g1);
    GradientAlignment r;
    r.cos = Tensor::empty({n}, g1.dtype());
    r.d_cos_d_g1 = Tensor::empty(g1.shape(), g1.dtype(), g1.layout());
    r.d_cos_d_g2 = Tensor::empty(g2.shape(), g2.dtype(), g2.layout());
    const T *a = g1.data<T>(), *b = g2.data<T>();
    T *da = r.d_cos_d_g1.data<T>(), *db = r.d_cos_d_g2.data<T>(), *pcos = r.cos.data<T>();
#pragma omp parallel for schedule(static) if (g1.numel() > cpu::kParallelMin)
    for (int64_t e = 0; e < n; ++e) {
      double dot = 0, aa = 0, bb = 0;
      for (int64_t j = e * inner; j < (e + 1) * inner; ++j) {
        dot += double(a[j]) * double(b[j]);
        aa += double(a[j]) * double(a[j]);
        bb += double(b[j]) * double(b[j]);
      }
      T na = perturbation_math::guarded_norm(T(aa), T(guard)), nb = perturbation_math::guarded_norm(T(bb), T(guard));
      bool a_above = na > T(guard), b_above = nb > T(guard);
      T cos = T(dot) / (na * nb);
      pcos[e] = cos;
      for (int64_t j = e * inner; j < (e + 1) * inner; ++j) {
        da[j] = perturbation_math::cosine_derivative(a[j], b[j], na, nb, cos, a_above);
        db[j] = perturbation_math::cosine_derivative(b[j], a[j], nb, na, cos, b_above);
      }
    }
    return r;
  });
}

ElleTriplets CpuRobustKernels::elle_triplets(const Tensor& x, const Tensor& labels, const EpsLength& radius,
                                             uint64_t seed, const RandomCounter& c) {
  const uint64_t counter = counter_now(c);
  const double eps = length_now(radius);
  return dispatch_floating(x.dtype(), "elle_triplets", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = x.dim(0), inner = row_elements(x), numel = x.numel();
    Shape s = x.shape();
    s[0] = 3 * n;
    ElleTriplets r;
    r.points = Tensor::empty(s, x.dtype(), x.layout());
    r.alpha = Tensor::empty({n}, x.dtype());
    r.labels = Tensor::empty({3 * n}, DType::i32);
    for (int which = 0; which < 3; ++which)
      std::memcpy(r.labels.data<int32_t>() + which * n, labels.data<int32_t>(), size_t(n) * sizeof(int32_t));
    const T* px = x.data<T>();
    T* pa = r.alpha.data<T>();
    for (int64_t i = 0; i < n; ++i)
      pa[i] = perturbation_math::triplet_weight<T>(seed, counter, uint64_t(numel), uint64_t(i));
    for (int which = 0; which < 3; ++which) {
      T* out = r.points.data<T>() + which * numel;
      for (int64_t j = 0; j < numel; ++j)
        out[j] = perturbation_math::triplet_point<T>(seed, counter, uint64_t(numel), uint64_t(j), px[j], T(eps), which,
                                                     pa[j / inner]);
    }
    return r;
  });
}

ElleCoefficients CpuRobustKernels::elle_coefficients(const Tensor& losses, const Tensor& alpha, double lambda) {
  return dispatch_floating(losses.dtype(), "elle_coefficients", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = alpha.numel();
    ElleCoefficients c;
    c.residual = Tensor::empty({n}, losses.dtype());
    c.loss_weight = Tensor::empty({3 * n}, losses.dtype());
    const T *l = losses.data<T>(), *a = alpha.data<T>();
    T scale = T(2.0 * lambda / double(n));
    for (int64_t i = 0; i < n; ++i) {
      T r = perturbation_math::triplet_residual(l[i], l[n + i], l[2 * n + i], a[i]);
      c.residual.data<T>()[i] = r;
      for (int which = 0; which < 3; ++which)
        c.loss_weight.data<T>()[which * n + i] = perturbation_math::triplet_loss_weight(r, a[i], which, scale);
    }
    return c;
  });
}

void CpuRobustKernels::apgd_step(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
                           double alpha, double eps) {
  dispatch_floating(delta.dtype(), "apgd_step", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = delta.dim(0), inner = delta.numel() / n;
    T *d = delta.data<T>(), *dp = delta_prev.data<T>();
    const T *px = x.data<T>(), *pg = grad.data<T>(), *pe = eta.data<T>();
    for (int64_t i = 0, n_ = delta.numel(); i < n_; ++i) {
      T old = d[i];
      d[i] = perturbation_math::apgd<T>(d[i], dp[i], px[i], pg[i], pe[i / inner], T(alpha), T(eps));
      dp[i] = old;
    }
    return 0;
  });
}

Tensor CpuRobustKernels::apgd_track(const Tensor& loss, Tensor& best, Tensor& last, Tensor& successes, bool first) {
  return per_example(loss.numel(), loss.dtype(), [&](auto tag, int64_t i) {
    using T = decltype(tag);
    return perturbation_math::apgd_track<T>(loss.data<T>()[i], best.data<T>() + i, last.data<T>() + i,
                                            successes.data<T>() + i, first);
  });
}

Tensor CpuRobustKernels::apgd_checkpoint(Tensor& successes, Tensor& eta, Tensor& eta_at_checkpoint,
                                         Tensor& best_at_checkpoint, const Tensor& best, double threshold) {
  return per_example(eta.numel(), eta.dtype(), [&](auto tag, int64_t i) {
    using T = decltype(tag);
    return perturbation_math::apgd_checkpoint<T>(successes.data<T>() + i, eta.data<T>() + i,
                                                 eta_at_checkpoint.data<T>() + i, best_at_checkpoint.data<T>() + i,
                                                 best.data<T>()[i], T(threshold));
  });
}

Tensor CpuRobustKernels::select_rows(const Tensor& a, const Tensor& b, const Tensor& mask) {
  int64_t n = a.dim(0), row = row_elements(a) * static_cast<int64_t>(dtype_size(a.dtype()));
  Tensor out = a.clone();
  for (int64_t i = 0; i < n; ++i)
    if (mask.at(i) != 0)
      std::memcpy(static_cast<uint8_t*>(out.raw_data()) + i * row, static_cast<const uint8_t*>(b.raw_data()) + i * row,
                  row);
  return out;
}

Tensor CpuRobustKernels::take_rows(const Tensor& t, const Tensor& idx) {
  Shape s = t.shape();
  s[0] = idx.numel();
  Tensor out = Tensor::empty(s, t.dtype(), t.layout());
  size_t row = static_cast<size_t>(row_elements(t)) * dtype_size(t.dtype());
  const int32_t* pi = idx.data<int32_t>();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    LLR_CHECK(pi[i] >= 0 && pi[i] < t.dim(0), "take_rows: row ", pi[i], " outside [0, ", t.dim(0), ")");
    std::memcpy(static_cast<uint8_t*>(out.raw_data()) + i * row,
                static_cast<const uint8_t*>(t.raw_data()) + pi[i] * row, row);
  }
  return out;
}

void CpuRobustKernels::put_rows(Tensor& dst, const Tensor& src, const Tensor& idx) {
  size_t row = static_cast<size_t>(row_elements(dst)) * dtype_size(dst.dtype());
  const int32_t* pi = idx.data<int32_t>();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    LLR_CHECK(pi[i] >= 0 && pi[i] < dst.dim(0), "put_rows: row ", pi[i], " outside [0, ", dst.dim(0), ")");
    std::memcpy(static_cast<uint8_t*>(dst.raw_data()) + pi[i] * row,
                static_cast<const uint8_t*>(src.raw_data()) + i * row, row);
  }
}

Tensor CpuRobustKernels::predicted_correct(const Tensor& z, const Tensor& labels) {
  int64_t k = z.dim(1);
  const int32_t* y = labels.data<int32_t>();
  return per_example(z.dim(0), z.dtype(), [&](auto tag, int64_t i) {
    using T = decltype(tag);
    const T* row = z.data<T>() + i * k;
    return math::row_argmax<T>([row](int64_t j) { return row[j]; }, k) == y[i] ? 1.0 : 0.0;
  });
}

Tensor CpuRobustKernels::class_at_rank(const Tensor& z, const Tensor& labels, int rank) {
  int64_t n = z.dim(0), k = z.dim(1);
  Tensor out = Tensor::empty({n}, DType::i32);
  dispatch_floating(z.dtype(), "class_at_rank", [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < n; ++i) {
      const T* row = z.data<T>() + i * k;
      int64_t exclude = labels.defined() ? labels.data<int32_t>()[i] : -1;
      out.data<int32_t>()[i] = perturbation_math::class_at_rank([row](int64_t j) { return row[j]; }, k, exclude, rank);
    }
    return 0;
  });
  return out;
}

void CpuRobustKernels::fab_step(Tensor& delta, const Tensor& x0, const Tensor& grad, const Tensor& f, double overshoot,
                                double alpha_max) {
  dispatch_floating(delta.dtype(), "fab_step", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = delta.dim(0), inner = row_elements(delta);
    for (int64_t e = 0; e < n; ++e) {
      ExampleLoops loops{inner};
      fab_math::step<T>(delta.data<T>() + e * inner, x0.data<T>() + e * inner, grad.data<T>() + e * inner,
                        f.data<T>()[e], T(overshoot), T(alpha_max), loops, loops);
    }
    return 0;
  });
}

void CpuRobustKernels::fab_track(Tensor& delta, const Tensor& correct, Tensor& best_delta, Tensor& best_norm,
                                 Tensor& robust, double backstep, double eps) {
  dispatch_floating(delta.dtype(), "fab_track", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = delta.dim(0), inner = row_elements(delta);
    for (int64_t e = 0; e < n; ++e) {
      ExampleLoops loops{inner};
      fab_math::Best<T> b{best_norm.data<T>()[e], robust.data<T>()[e]};
      b = fab_math::track<T>(delta.data<T>() + e * inner, correct.data<T>()[e], best_delta.data<T>() + e * inner, b,
                             T(backstep), T(eps), loops, loops);
      best_norm.data<T>()[e] = b.norm;
      robust.data<T>()[e] = b.robust;
    }
    return 0;
  });
}

Tensor CpuRobustKernels::square_start(const Tensor& x, const Tensor& ids, int64_t, double eps, uint64_t seed,
                                      uint64_t counter) {
  return dispatch_floating(x.dtype(), "square_start", [&](auto tag) {
    using T = decltype(tag);
    int64_t h = x.dim(1), w = x.dim(2), c = x.dim(3);
    Tensor d = Tensor::empty(x.shape(), x.dtype(), x.layout());
    const int32_t* id = ids.data<int32_t>();
    T* pd = d.data<T>();
    const T* px = x.data<T>();
    for (int64_t i = 0, total = x.numel(); i < total; ++i) {
      square_math::Place at = square_math::place_of(i, h, w, c);
      pd[i] = square_math::stripe_start<T>(px[i], id[at.example], at, w, c, T(eps), seed, counter);
    }
    return d;
  });
}

Tensor CpuRobustKernels::square_proposal(const Tensor& best, const Tensor& x, const Tensor& ids, int64_t examples,
                                         int64_t query, int64_t side, double eps, uint64_t seed, uint64_t counter) {
  return dispatch_floating(x.dtype(), "square_proposal", [&](auto tag) {
    using T = decltype(tag);
    int64_t h = x.dim(1), w = x.dim(2), c = x.dim(3);
    Tensor d = Tensor::empty(x.shape(), x.dtype(), x.layout());
    const int32_t* id = ids.data<int32_t>();
    T* pd = d.data<T>();
    const T *pb = best.data<T>(), *px = x.data<T>();
    for (int64_t i = 0, total = x.numel(); i < total; ++i) {
      square_math::Place at = square_math::place_of(i, h, w, c);
      pd[i] = square_math::proposal<T>(pb[i], px[i], at, id[at.example], query, examples, h, w, c, side, T(eps), seed,
                                       counter);
    }
    return d;
  });
}

Tensor CpuRobustKernels::square_accept(const Tensor& z, const Tensor& labels, Tensor& best_margin, Tensor& robust) {
  int64_t k = z.dim(1);
  const int32_t* y = labels.data<int32_t>();
  return per_example(z.dim(0), z.dtype(), [&](auto tag, int64_t i) {
    using T = decltype(tag);
    const T* row = z.data<T>() + i * k;
    return square_math::accept<T>([row](int64_t j) { return row[j]; }, k, y[i], best_margin.data<T>() + i,
                                  robust.data<T>() + i);
  });
}

void CpuRobustKernels::update_max(Tensor& acc, const Tensor& v) {
  dispatch_floating(acc.dtype(), "update_max", [&](auto tag) {
    using T = decltype(tag);
    T* a = acc.data<T>();
    const T* pv = v.data<T>();
    for (int64_t i = 0, n = acc.numel(); i < n; ++i)
      if (pv[i] > a[i]) a[i] = pv[i];
    return 0;
  });
}

}  // namespace llr
