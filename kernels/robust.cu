// The CUDA side of the perturbation kernels (train/robust/robust_kernels.def): the fused perturbation step (one block
// per example: ascent direction, Adam or sign update, projection onto the eps-ball and [0, 1], and
// d_i = <delta_i, gx_i> in one kernel), the LLR per-example coefficients, GradAlign's cosine and its derivatives (one
// block per example), ELLE's triplets and coefficients, APGD's step and bookkeeping, FAB's step and bookkeeping (one
// block per example), Square's start, queries and acceptance, and the row and class selections of the search.
// Per-element math: train/robust/perturbation_math.h, fab_math.h and square_math.h, shared with the CPU side.
#include <cmath>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"
#include "train/robust/fab_math.h"
#include "train/robust/square_math.h"

namespace llr::cuda {

namespace {

// A random counter's step on the device, or null (perturbation_math::counter_at).
const double* device_step(const RandomCounter& c) { return c.step.defined() ? ptr<double>(c.step) : nullptr; }

// A length as the kernels read it, with its device radius if it has one (perturbation_math::DeviceLength).
perturbation_math::DeviceLength device_length(const EpsLength& l) {
  return {l.value(), l.scale, l.eps.defined() ? ptr<double>(l.eps) : nullptr};
}

// One block per example. Adam's bias corrections come from the counter of steps taken (`steps`), read here and
// counted on by the launch after.
template <class T>
__global__ void perturbation_kernel(int64_t inner, T* delta, const T* x, const T* grad, const T* gx,
                                    const T* sign_g, T* m, T* v, perturbation_math::DeviceLength step_length,
                                    perturbation_math::DeviceLength eps_length, bool ball, bool adam, T beta1,
                                    T beta2, T adam_eps, const double* steps, T* dots) {
  int64_t e = blockIdx.x;
  const T step_size = T(step_length.now()), eps = T(eps_length.now());
  T bias1 = 1, bias2 = 1;
  if (adam) {
    const double t = *steps + 1;
    bias1 = perturbation_math::adam_bias_correction(beta1, t);
    bias2 = perturbation_math::adam_bias_correction(beta2, t);
  }
  T acc = 0;
  for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) {
    int64_t i = e * inner + j;
    T dir = gx ? perturbation_math::direction(grad[i], gx[i], sign_g[e]) : grad[i];
    T mm = 0, vv = 0;
    T* mp = adam ? m + i : &mm;
    T* vp = adam ? v + i : &vv;
    T d = perturbation_math::step<T>(delta[i], x[i], dir, mp, vp, step_size, eps, ball, adam, beta1, beta2, adam_eps,
                                     bias1, bias2);
    delta[i] = d;
    if (gx) acc += d * gx[i];
  }
  if (dots) {
    acc = block_sum(acc);
    if (threadIdx.x == 0) dots[e] = acc;
  }
}

template <class T>
void perturbation_impl(Tensor& delta, const Tensor& x, const Tensor& grad, const Tensor& gx, const Tensor& sign_g,
                       Tensor& m, Tensor& v, Tensor& dots, Tensor& adam_steps, const PerturbationParams& p) {
  int64_t n = delta.dim(0);
  if (n == 0) return;  // an empty batch: no step (and no step counted)
  int64_t inner = delta.numel() / n;
  bool llr = gx.defined(), adam = p.update == PerturbationUpdate::adam;
  double* steps = adam ? ptr<double>(adam_steps) : nullptr;
  perturbation_kernel<T><<<static_cast<unsigned>(n), 256, 0, context().stream()>>>(
      inner, ptr<T>(delta), ptr<T>(x), ptr<T>(grad), llr ? ptr<T>(gx) : nullptr, llr ? ptr<T>(sign_g) : nullptr,
      adam ? ptr<T>(m) : nullptr, adam ? ptr<T>(v) : nullptr, device_length(p.step_size), device_length(p.eps),
      p.projection == Projection::ball_and_box, adam, T(p.beta1), T(p.beta2), T(p.adam_eps), steps,
      llr ? ptr<T>(dots) : nullptr);
  LLR_CUDA_LAUNCH_CHECK();
  if (adam) for_each(1, [=] __device__(int64_t) { *steps += 1; });
}

template <class S>
LlrCoefficients llr_coefficients_impl(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom, double lambda,
                                      double mu) {
  int64_t n = l.numel();
  LlrCoefficients c;
  for (Tensor* t : {&c.nominal_weight, &c.perturbed_weight, &c.tangent_weight, &c.abs_g, &c.sign_g})
    *t = Tensor::empty({n}, l.dtype(), Layout::plain, Device::cuda);
  const S *pl = ptr<S>(l), *pp = ptr<S>(lp), *pd = ptr<S>(d);
  S *a = ptr<S>(c.nominal_weight), *b = ptr<S>(c.perturbed_weight), *tw = ptr<S>(c.tangent_weight),
    *ag = ptr<S>(c.abs_g), *sgn = ptr<S>(c.sign_g);
  S w = S(w_nom), lam = S(lambda), m = S(mu);
  for_each(n, [=] __device__(int64_t i) {
    S g = pp[i] - pl[i] - pd[i];
    S sg = perturbation_math::sign_of(g), sd = perturbation_math::sign_of(pd[i]);
    a[i] = w - lam * sg;
    b[i] = lam * sg;
    tw[i] = m * sd - lam * sg;
    ag[i] = fabs(g);
    sgn[i] = sg;
  });
  return c;
}

// One block per example: the three per-example sums, then both derivatives.
template <class T>
__global__ void gradient_alignment_kernel(int64_t inner, const T* g1, const T* g2, T guard, T* cos, T* d1, T* d2) {
  int64_t e = blockIdx.x;
  const T *a = g1 + e * inner, *b = g2 + e * inner;
  T dot = 0, aa = 0, bb = 0;
  for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) {
    dot += a[j] * b[j];
    aa += a[j] * a[j];
    bb += b[j] * b[j];
  }
  __shared__ T sums[3];
  dot = block_sum(dot);
  if (threadIdx.x == 0) sums[0] = dot;
  aa = block_sum(aa);
  if (threadIdx.x == 0) sums[1] = aa;
  bb = block_sum(bb);
  if (threadIdx.x == 0) sums[2] = bb;
  __syncthreads();
  T na = perturbation_math::guarded_norm(sums[1], guard), nb = perturbation_math::guarded_norm(sums[2], guard);
  bool a_above = na > guard, b_above = nb > guard;
  T c = sums[0] / (na * nb);
  if (threadIdx.x == 0) cos[e] = c;
  for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) {
    d1[e * inner + j] = perturbation_math::cosine_derivative(a[j], b[j], na, nb, c, a_above);
    d2[e * inner + j] = perturbation_math::cosine_derivative(b[j], a[j], nb, na, c, b_above);
  }
}

template <class T>
GradientAlignment gradient_alignment_impl(const Tensor& g1, const Tensor& g2, double guard) {
  int64_t n = g1.dim(0), inner = g1.numel() / n;
  GradientAlignment r;
  r.cos = Tensor::empty({n}, g1.dtype(), Layout::plain, Device::cuda);
  r.d_cos_d_g1 = new_like(g1);
  r.d_cos_d_g2 = new_like(g2);
  if (n == 0) return r;
  gradient_alignment_kernel<T><<<static_cast<unsigned>(n), 256, 0, context().stream()>>>(
      inner, ptr<T>(g1), ptr<T>(g2), T(guard), ptr<T>(r.cos), ptr<T>(r.d_cos_d_g1), ptr<T>(r.d_cos_d_g2));
  LLR_CUDA_LAUNCH_CHECK();
  return r;
}

template <class T>
ElleTriplets elle_triplets_impl(const Tensor& x, const Tensor& labels, const EpsLength& eps, uint64_t seed,
                               const RandomCounter& c) {
  int64_t n = x.dim(0), numel = x.numel(), inner = n == 0 ? 0 : numel / n;
  Shape s = x.shape();
  s[0] = 3 * n;
  ElleTriplets r;
  r.points = Tensor::empty(s, x.dtype(), x.layout(), Device::cuda);
  r.alpha = Tensor::empty({n}, x.dtype(), Layout::plain, Device::cuda);
  r.labels = Tensor::empty({3 * n}, DType::i32, Layout::plain, Device::cuda);
  const int32_t* y = ptr<int32_t>(labels);
  int32_t* y3 = ptr<int32_t>(r.labels);
  for_each(3 * n, [=] __device__(int64_t k) { y3[k] = y[k % n]; });
  const T* px = ptr<T>(x);
  T *pp = ptr<T>(r.points), *pa = ptr<T>(r.alpha);
  const perturbation_math::DeviceLength radius = device_length(eps);
  uint64_t total = uint64_t(numel);
  const uint64_t base = c.base, per_step = c.per_step;
  const double* step = device_step(c);
  for_each(n, [=] __device__(int64_t i) {
    uint64_t counter = perturbation_math::counter_at(base, per_step, step);
    pa[i] = perturbation_math::triplet_weight<T>(seed, counter, total, uint64_t(i));
  });
  for_each(3 * numel, [=] __device__(int64_t k) {
    uint64_t counter = perturbation_math::counter_at(base, per_step, step);
    int which = static_cast<int>(k / numel);
    int64_t j = k % numel;
    T alpha = perturbation_math::triplet_weight<T>(seed, counter, total, uint64_t(j / inner));
    pp[k] = perturbation_math::triplet_point<T>(seed, counter, total, uint64_t(j), px[j], T(radius.now()), which,
                                                alpha);
  });
  return r;
}

template <class T>
ElleCoefficients elle_coefficients_impl(const Tensor& losses, const Tensor& alpha, double lambda) {
  int64_t n = alpha.numel();
  ElleCoefficients c;
  c.residual = Tensor::empty({n}, losses.dtype(), Layout::plain, Device::cuda);
  c.loss_weight = Tensor::empty({3 * n}, losses.dtype(), Layout::plain, Device::cuda);
  const T *l = ptr<T>(losses), *a = ptr<T>(alpha);
  T *r = ptr<T>(c.residual), *w = ptr<T>(c.loss_weight);
  T scale = T(2.0 * lambda / double(n));
  for_each(n, [=] __device__(int64_t i) {
    T res = perturbation_math::triplet_residual(l[i], l[n + i], l[2 * n + i], a[i]);
    r[i] = res;
    for (int which = 0; which < 3; ++which)
      w[which * n + i] = perturbation_math::triplet_loss_weight(res, a[i], which, scale);
  });
  return c;
}

template <class T>
Tensor perturbation_init_impl(const Tensor& x, const EpsLength& eps, double normal_scale, uint64_t seed,
                              const RandomCounter& c) {
  Tensor d = new_like(x);
  const T* px = ptr<T>(x);
  T* o = ptr<T>(d);
  const perturbation_math::DeviceLength radius = device_length(eps);
  T ns = T(normal_scale);
  const uint64_t base = c.base, per_step = c.per_step;
  const double* step = device_step(c);
  for_each(x.numel(), [=] __device__(int64_t i) {
    uint64_t counter = perturbation_math::counter_at(base, per_step, step);
    const T e = T(radius.now());
    o[i] = perturbation_math::project<T>(perturbation_math::initial<T>(seed, counter + i, e, ns), px[i], e);
  });
  return d;
}

template <class T>
void apgd_impl(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
               double alpha, double eps) {
  int64_t inner = delta.numel() / delta.dim(0);
  T *d = ptr<T>(delta), *dp = ptr<T>(delta_prev);
  const T *px = ptr<T>(x), *pg = ptr<T>(grad), *pe = ptr<T>(eta);
  T a = T(alpha), e = T(eps);
  for_each(delta.numel(), [=] __device__(int64_t i) {
    T old = d[i];
    d[i] = perturbation_math::apgd<T>(old, dp[i], px[i], pg[i], pe[i / inner], a, e);
    dp[i] = old;
  });
}

// out[i] = f(i) for a per-example vector of n values of type S.
template <class S, class F>
Tensor per_example(int64_t n, F f) {
  Tensor out = Tensor::empty({n}, dtype_of_storage<S>(), Layout::plain, Device::cuda);
  S* o = ptr<S>(out);
  for_each(n, [=] __device__(int64_t i) { o[i] = f(i); });
  return out;
}

template <class S>
Tensor apgd_track_impl(const Tensor& loss, Tensor& best, Tensor& last, Tensor& successes, bool first) {
  const S* l = ptr<S>(loss);
  S *b = ptr<S>(best), *la = ptr<S>(last), *su = ptr<S>(successes);
  return per_example<S>(loss.numel(), [=] __device__(int64_t i) {
    return perturbation_math::apgd_track<S>(l[i], b + i, la + i, su + i, first);
  });
}

template <class S>
Tensor apgd_checkpoint_impl(Tensor& successes, Tensor& eta, Tensor& eta_at_checkpoint, Tensor& best_at_checkpoint,
                            const Tensor& best, double threshold) {
  S *su = ptr<S>(successes), *e = ptr<S>(eta), *ec = ptr<S>(eta_at_checkpoint), *bc = ptr<S>(best_at_checkpoint);
  const S* b = ptr<S>(best);
  S th = S(threshold);
  return per_example<S>(eta.numel(), [=] __device__(int64_t i) {
    return perturbation_math::apgd_checkpoint<S>(su + i, e + i, ec + i, bc + i, b[i], th);
  });
}

// Row copies move whole rows of `row_bytes`, in 4-byte words when every row is 4-byte aligned (every dtype but u8
// with an odd row), byte by byte otherwise.
template <class W>
void copy_rows(uint8_t* dst, const uint8_t* src, int64_t rows, int64_t row_bytes, const int32_t* dst_idx,
               const int32_t* src_idx, const float* mask32, const double* mask64, int64_t bound) {
  int64_t words = row_bytes / int64_t(sizeof(W));
  W* d = reinterpret_cast<W*>(dst);
  const W* s = reinterpret_cast<const W*>(src);
  for_each(rows * words, [=] __device__(int64_t e) {
    int64_t r = e / words, w = e % words;
    if (mask32 && mask32[r] == 0.f) return;
    if (mask64 && mask64[r] == 0.0) return;
    int64_t dr = dst_idx ? dst_idx[r] : r, sr = src_idx ? src_idx[r] : r;
    if (dr < 0 || dr >= bound || sr < 0 || sr >= bound) return;  // bad index: leave the row, never write outside
    d[dr * words + w] = s[sr * words + w];
  });
}

void copy_rows(void* dst, const void* src, int64_t rows, int64_t row_bytes, const int32_t* dst_idx,
               const int32_t* src_idx, const Tensor& mask, int64_t bound) {
  const float* m32 = mask.defined() && mask.dtype() == DType::f32 ? ptr<float>(mask) : nullptr;
  const double* m64 = mask.defined() && mask.dtype() == DType::f64 ? ptr<double>(mask) : nullptr;
  auto* d = static_cast<uint8_t*>(dst);
  auto* s = static_cast<const uint8_t*>(src);
  if (row_bytes % 4 == 0)
    copy_rows<uint32_t>(d, s, rows, row_bytes, dst_idx, src_idx, m32, m64, bound);
  else
    copy_rows<uint8_t>(d, s, rows, row_bytes, dst_idx, src_idx, m32, m64, bound);
}

int64_t row_bytes(const Tensor& t) {
  return t.dim(0) == 0 ? 0 : t.numel() / t.dim(0) * static_cast<int64_t>(dtype_size(t.dtype()));
}

template <class T>
Tensor predicted_correct_impl(const Tensor& z, const Tensor& labels) {
  using S = acc_t<T>;
  int64_t k = z.dim(1);
  const T* pz = ptr<T>(z);
  const int32_t* y = ptr<int32_t>(labels);
  return per_example<S>(z.dim(0), [=] __device__(int64_t i) {
    auto at = [pz, i, k](int64_t j) { return ld(pz, i * k + j); };
    return math::row_argmax<S>(at, k) == y[i] ? S(1) : S(0);
  });
}

template <class T>
Tensor class_at_rank_impl(const Tensor& z, const Tensor& labels, int rank) {
  int64_t n = z.dim(0), k = z.dim(1);
  Tensor out = Tensor::empty({n}, DType::i32, Layout::plain, Device::cuda);
  const T* pz = ptr<T>(z);
  const int32_t* y = labels.defined() ? ptr<int32_t>(labels) : nullptr;
  int32_t* o = ptr<int32_t>(out);
  for_each(n, [=] __device__(int64_t i) {
    auto at = [pz, i, k](int64_t j) { return ld(pz, i * k + j); };
    o[i] = perturbation_math::class_at_rank(at, k, y ? int64_t(y[i]) : int64_t(-1), rank);
  });
  return out;
}

constexpr int kFabThreads = 256;

// fab_math's two visits of one example's elements by one block: strided over the threads; a reduction goes through
// shared memory and every thread receives its result, so all threads take the same branches of the algorithm.
struct BlockLoops {
  int64_t n;
  fab_math::Partial* shared;  // kFabThreads entries
  template <class F, class C>
  __device__ fab_math::Partial operator()(F f, C combine) const {
    fab_math::Partial acc{{0, 0, 0, 0, 0, 0}};
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc = combine(acc, f(i));
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) shared[threadIdx.x] = combine(shared[threadIdx.x], shared[threadIdx.x + s]);
      __syncthreads();
    }
    fab_math::Partial out = shared[0];
    __syncthreads();  // before the next reduction overwrites shared[0]
    return out;
  }
  template <class F>
  __device__ void operator()(F f) const {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
  }
};

template <class T>
__global__ void fab_step_kernel(int64_t inner, T* delta, const T* x0, const T* grad, const T* f, T overshoot,
                                T alpha_max) {
  __shared__ fab_math::Partial shared[kFabThreads];
  int64_t e = blockIdx.x;
  BlockLoops loops{inner, shared};
  fab_math::step<T>(delta + e * inner, x0 + e * inner, grad + e * inner, f[e], overshoot, alpha_max, loops, loops);
}

template <class T>
void fab_step_impl(Tensor& delta, const Tensor& x0, const Tensor& grad, const Tensor& f, double overshoot,
                   double alpha_max) {
  int64_t n = delta.dim(0);
  if (n == 0) return;
  fab_step_kernel<T><<<static_cast<unsigned>(n), kFabThreads, 0, context().stream()>>>(
      delta.numel() / n, ptr<T>(delta), ptr<T>(x0), ptr<T>(grad), ptr<T>(f), T(overshoot), T(alpha_max));
  LLR_CUDA_LAUNCH_CHECK();
}

template <class T>
__global__ void fab_track_kernel(int64_t inner, T* delta, const T* correct, T* best_delta, T* best_norm, T* robust,
                                 T backstep, T eps) {
  __shared__ fab_math::Partial shared[kFabThreads];
  int64_t e = blockIdx.x;
  BlockLoops loops{inner, shared};
  fab_math::Best<T> b{best_norm[e], robust[e]};
  b = fab_math::track<T>(delta + e * inner, correct[e], best_delta + e * inner, b, backstep, eps, loops, loops);
  if (threadIdx.x == 0) {
    best_norm[e] = b.norm;
    robust[e] = b.robust;
  }
}

template <class T>
void fab_track_impl(Tensor& delta, const Tensor& correct, Tensor& best_delta, Tensor& best_norm, Tensor& robust,
                    double backstep, double eps) {
  int64_t n = delta.dim(0);
  if (n == 0) return;
  fab_track_kernel<T><<<static_cast<unsigned>(n), kFabThreads, 0, context().stream()>>>(
      delta.numel() / n, ptr<T>(delta), ptr<T>(correct), ptr<T>(best_delta), ptr<T>(best_norm), ptr<T>(robust),
      T(backstep), T(eps));
  LLR_CUDA_LAUNCH_CHECK();
}

template <class T>
Tensor square_start_impl(const Tensor& x, const Tensor& ids, double eps, uint64_t seed, uint64_t counter) {
  Tensor d = new_like(x);
  int64_t h = x.dim(1), w = x.dim(2), c = x.dim(3);
  const T* px = ptr<T>(x);
  const int32_t* id = ptr<int32_t>(ids);
  T* o = ptr<T>(d);
  T e = T(eps);
  for_each(x.numel(), [=] __device__(int64_t i) {
    square_math::Place at = square_math::place_of(i, h, w, c);
    o[i] = square_math::stripe_start<T>(px[i], id[at.example], at, w, c, e, seed, counter);
  });
  return d;
}

template <class T>
Tensor square_proposal_impl(const Tensor& best, const Tensor& x, const Tensor& ids, int64_t examples, int64_t query,
                            int64_t side, double eps, uint64_t seed, uint64_t counter) {
  Tensor d = new_like(x);
  int64_t h = x.dim(1), w = x.dim(2), c = x.dim(3);
  const T *px = ptr<T>(x), *pb = ptr<T>(best);
  const int32_t* id = ptr<int32_t>(ids);
  T* o = ptr<T>(d);
  T e = T(eps);
  for_each(x.numel(), [=] __device__(int64_t i) {
    square_math::Place at = square_math::place_of(i, h, w, c);
    o[i] = square_math::proposal<T>(pb[i], px[i], at, id[at.example], query, examples, h, w, c, side, e, seed,
                                    counter);
  });
  return d;
}

template <class T>
Tensor square_accept_impl(const Tensor& z, const Tensor& labels, Tensor& best_margin, Tensor& robust) {
  int64_t k = z.dim(1);
  const T* pz = ptr<T>(z);
  const int32_t* y = ptr<int32_t>(labels);
  T *bm = ptr<T>(best_margin), *rb = ptr<T>(robust);
  return per_example<T>(z.dim(0), [=] __device__(int64_t i) {
    auto at = [pz, i, k](int64_t j) { return pz[i * k + j]; };
    return square_math::accept<T>(at, k, int64_t(y[i]), bm + i, rb + i);
  });
}

template <class S>
void update_max_impl(Tensor& acc, const Tensor& v) {
  S* a = ptr<S>(acc);
  const S* pv = ptr<S>(v);
  for_each(acc.numel(), [=] __device__(int64_t i) {
    if (pv[i] > a[i]) a[i] = pv[i];
  });
}

}  // namespace

void CudaRobustKernels::perturbation_step(Tensor& delta, const Tensor& x, const Tensor& grad_weighted,
                                          const Tensor& gx, const Tensor& sign_g, Tensor& m, Tensor& v, Tensor& dots,
                                          Tensor& adam_steps, const PerturbationParams& p) {
  if (delta.dtype() == DType::f64)
    perturbation_impl<double>(delta, x, grad_weighted, gx, sign_g, m, v, dots, adam_steps, p);
  else
    perturbation_impl<float>(delta, x, grad_weighted, gx, sign_g, m, v, dots, adam_steps, p);
}

LlrCoefficients CudaRobustKernels::llr_coefficients(const Tensor& l, const Tensor& lp, const Tensor& d, double w_nom,
                                              double lambda, double mu) {
  if (l.dtype() == DType::f64) return llr_coefficients_impl<double>(l, lp, d, w_nom, lambda, mu);
  return llr_coefficients_impl<float>(l, lp, d, w_nom, lambda, mu);
}

Tensor CudaRobustKernels::perturbation_init(const Tensor& x, const EpsLength& eps, double normal_scale,
                                            uint64_t seed, const RandomCounter& counter) {
  if (x.dtype() == DType::f64) return perturbation_init_impl<double>(x, eps, normal_scale, seed, counter);
  return perturbation_init_impl<float>(x, eps, normal_scale, seed, counter);
}

GradientAlignment CudaRobustKernels::gradient_alignment(const Tensor& g1, const Tensor& g2, double guard) {
  if (g1.dtype() == DType::f64) return gradient_alignment_impl<double>(g1, g2, guard);
  return gradient_alignment_impl<float>(g1, g2, guard);
}

ElleTriplets CudaRobustKernels::elle_triplets(const Tensor& x, const Tensor& labels, const EpsLength& eps,
                                              uint64_t seed, const RandomCounter& counter) {
  if (x.dtype() == DType::f64) return elle_triplets_impl<double>(x, labels, eps, seed, counter);
  return elle_triplets_impl<float>(x, labels, eps, seed, counter);
}

ElleCoefficients CudaRobustKernels::elle_coefficients(const Tensor& losses, const Tensor& alpha, double lambda) {
  if (losses.dtype() == DType::f64) return elle_coefficients_impl<double>(losses, alpha, lambda);
  return elle_coefficients_impl<float>(losses, alpha, lambda);
}

void CudaRobustKernels::apgd_step(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta,
                            double alpha, double eps) {
  if (delta.dtype() == DType::f64)
    apgd_impl<double>(delta, delta_prev, x, grad, eta, alpha, eps);
  else
    apgd_impl<float>(delta, delta_prev, x, grad, eta, alpha, eps);
}


Tensor CudaRobustKernels::apgd_track(const Tensor& loss, Tensor& best, Tensor& last, Tensor& successes, bool first) {
  if (loss.dtype() == DType::f64) return apgd_track_impl<double>(loss, best, last, successes, first);
  return apgd_track_impl<float>(loss, best, last, successes, first);
}

Tensor CudaRobustKernels::apgd_checkpoint(Tensor& successes, Tensor& eta, Tensor& eta_at_checkpoint,
                                          Tensor& best_at_checkpoint, const Tensor& best, double threshold) {
  if (eta.dtype() == DType::f64)
    return apgd_checkpoint_impl<double>(successes, eta, eta_at_checkpoint, best_at_checkpoint, best, threshold);
  return apgd_checkpoint_impl<float>(successes, eta, eta_at_checkpoint, best_at_checkpoint, best, threshold);
}

Tensor CudaRobustKernels::select_rows(const Tensor& a, const Tensor& b, const Tensor& mask) {
  Tensor out = a.clone();
  copy_rows(out.raw_data(), b.raw_data(), a.dim(0), row_bytes(a), nullptr, nullptr, mask, a.dim(0));
  return out;
}

Tensor CudaRobustKernels::take_rows(const Tensor& t, const Tensor& idx) {
  Shape s = t.shape();
  s[0] = idx.numel();
  Tensor out = Tensor::empty(s, t.dtype(), t.layout(), Device::cuda);
  copy_rows(out.raw_data(), t.raw_data(), idx.numel(), row_bytes(t), nullptr, ptr<int32_t>(idx), Tensor(),
            std::max(t.dim(0), idx.numel()));
  return out;
}

void CudaRobustKernels::put_rows(Tensor& dst, const Tensor& src, const Tensor& idx) {
  copy_rows(dst.raw_data(), src.raw_data(), idx.numel(), row_bytes(dst), ptr<int32_t>(idx), nullptr, Tensor(),
            std::max(dst.dim(0), idx.numel()));
}

Tensor CudaRobustKernels::predicted_correct(const Tensor& z, const Tensor& labels) {
  return LLR_CUDA_DISPATCH(z.dtype(), "predicted_correct", predicted_correct_impl, z, labels);
}

Tensor CudaRobustKernels::class_at_rank(const Tensor& z, const Tensor& labels, int rank) {
  return LLR_CUDA_DISPATCH(z.dtype(), "class_at_rank", class_at_rank_impl, z, labels, rank);
}

void CudaRobustKernels::fab_step(Tensor& delta, const Tensor& x0, const Tensor& grad, const Tensor& f,
                                 double overshoot, double alpha_max) {
  if (delta.dtype() == DType::f64)
    fab_step_impl<double>(delta, x0, grad, f, overshoot, alpha_max);
  else
    fab_step_impl<float>(delta, x0, grad, f, overshoot, alpha_max);
}

void CudaRobustKernels::fab_track(Tensor& delta, const Tensor& correct, Tensor& best_delta, Tensor& best_norm,
                                  Tensor& robust, double backstep, double eps) {
  if (delta.dtype() == DType::f64)
    fab_track_impl<double>(delta, correct, best_delta, best_norm, robust, backstep, eps);
  else
    fab_track_impl<float>(delta, correct, best_delta, best_norm, robust, backstep, eps);
}

Tensor CudaRobustKernels::square_start(const Tensor& x, const Tensor& ids, int64_t, double eps, uint64_t seed,
                                       uint64_t counter) {
  if (x.dtype() == DType::f64) return square_start_impl<double>(x, ids, eps, seed, counter);
  return square_start_impl<float>(x, ids, eps, seed, counter);
}

Tensor CudaRobustKernels::square_proposal(const Tensor& best, const Tensor& x, const Tensor& ids, int64_t examples,
                                          int64_t query, int64_t side, double eps, uint64_t seed, uint64_t counter) {
  if (x.dtype() == DType::f64)
    return square_proposal_impl<double>(best, x, ids, examples, query, side, eps, seed, counter);
  return square_proposal_impl<float>(best, x, ids, examples, query, side, eps, seed, counter);
}

Tensor CudaRobustKernels::square_accept(const Tensor& z, const Tensor& labels, Tensor& best_margin, Tensor& robust) {
  if (z.dtype() == DType::f64) return square_accept_impl<double>(z, labels, best_margin, robust);
  return square_accept_impl<float>(z, labels, best_margin, robust);
}

void CudaRobustKernels::update_max(Tensor& acc, const Tensor& v) {
  if (acc.dtype() == DType::f64) return update_max_impl<double>(acc, v);
  update_max_impl<float>(acc, v);
}

}  // namespace llr::cuda
