// The argument checks of the perturbation kernels (robust_kernels.def), run by the dispatch before any device's
// implementation.
#include "train/robust/robust_kernels.h"

#include <algorithm>

namespace llr::robust_check {

namespace {

// Perturbation-side tensors: defined, f32 or f64, one dtype.
void perturbation_dtype(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    LLR_CHECK(t->defined(), op, ": undefined tensor argument");
    LLR_CHECK(t->dtype() == DType::f32 || t->dtype() == DType::f64, op,
              ": perturbations, images and per-example values are f32 or f64, got ", t->describe());
    if (!first) first = t;
    LLR_CHECK(t->dtype() == first->dtype(), op, ": dtype mismatch, ", first->describe(), " vs ", t->describe());
  }
}

void same_shape(const char* op, const Tensor& a, const Tensor& b) {
  LLR_CHECK(a.shape() == b.shape(), op, ": shape mismatch, ", a.describe(), " vs ", b.describe());
}

void batch(const char* op, const Tensor& t) {
  LLR_CHECK(t.defined() && t.rank() >= 1, op, ": needs a leading batch axis, got ",
            t.defined() ? t.describe() : "undefined");
}

void per_example(const char* op, const char* what, const Tensor& v, int64_t n) {
  LLR_CHECK(v.defined() && v.rank() == 1 && v.dim(0) == n, op, ": ", what, " must have shape [", n, "], got ",
            v.defined() ? v.describe() : "undefined");
}

void indices(const char* op, const char* what, const Tensor& idx, int64_t n) {
  LLR_CHECK(idx.defined() && idx.dtype() == DType::i32 && idx.rank() == 1 && (n < 0 || idx.dim(0) == n), op, ": ",
            what, " must be i32", n < 0 ? "" : " [" + std::to_string(n) + "]", ", got ",
            idx.defined() ? idx.describe() : "undefined");
}

// A counter's device step: one f64 element on the device of `like`.
void random_counter(const char* op, const RandomCounter& c, const Tensor& like) {
  LLR_CHECK(!c.step.defined() ||
                (c.step.dtype() == DType::f64 && c.step.numel() == 1 && c.step.device() == like.device()),
            op, ": a random counter's step must be one f64 element on the ", device_name(like.device()), ", got ",
            c.step.describe());
}

// A non-negative length whose device radius, if any, is one f64 element on like's device.
void length(const char* op, const char* what, const EpsLength& l, const Tensor& like) {
  LLR_CHECK(l.value() >= 0 && l.scale >= 0 && l.radius >= 0, op, ": ", what, " ", l.value(), " (", l.scale,
            " times ", l.radius, ") must be non-negative");
  LLR_CHECK(!l.eps.defined() ||
                (l.eps.dtype() == DType::f64 && l.eps.numel() == 1 && l.eps.device() == like.device()),
            op, ": the device radius of the ", what, " must be one f64 element on the ", device_name(like.device()),
            ", got ", l.eps.describe());
}

void logits(const char* op, const Tensor& z) {
  LLR_CHECK(z.defined() && is_floating(z.dtype()) && z.rank() == 2 && z.dim(1) >= 2, op,
            ": logits must be floating [N, K] with K >= 2, got ", z.defined() ? z.describe() : "undefined");
}

}  // namespace

void perturbation_init(const Tensor& x, const EpsLength& eps, double normal_scale, uint64_t,
                       const RandomCounter& counter) {
  perturbation_dtype("perturbation_init", {&x});
  random_counter("perturbation_init", counter, x);
  length("perturbation_init", "eps", eps, x);
  LLR_CHECK(normal_scale >= 0, "perturbation_init: the normal scale ", normal_scale, " must be non-negative");
}

void perturbation_step(Tensor& delta, const Tensor& x, const Tensor& grad_weighted, const Tensor& gx,
                       const Tensor& sign_g, Tensor& m, Tensor& v, Tensor& dots, Tensor& adam_steps,
                       const PerturbationParams& p) {
  perturbation_dtype("perturbation_step", {&delta, &x, &grad_weighted});
  batch("perturbation_step", delta);
  same_shape("perturbation_step", delta, x);
  same_shape("perturbation_step", delta, grad_weighted);
  if (gx.defined()) {
    perturbation_dtype("perturbation_step", {&delta, &gx, &sign_g, &dots});
    same_shape("perturbation_step", delta, gx);
    per_example("perturbation_step", "sign_g", sign_g, delta.dim(0));
    per_example("perturbation_step", "dots", dots, delta.dim(0));
  }
  if (p.update == PerturbationUpdate::adam) {
    perturbation_dtype("perturbation_step", {&delta, &m, &v});
    same_shape("perturbation_step", delta, m);
    same_shape("perturbation_step", delta, v);
    LLR_CHECK(adam_steps.defined() && adam_steps.dtype() == DType::f64 && adam_steps.numel() == 1,
              "perturbation_step: Adam steps need a step counter of one f64 element, got ",
              adam_steps.defined() ? adam_steps.describe() : "undefined");
  }
  length("perturbation_step", "eps", p.eps, delta);
  length("perturbation_step", "step size", p.step_size, delta);
}

void llr_coefficients(const Tensor& l, const Tensor& lp, const Tensor& d, double, double, double) {
  perturbation_dtype("llr_coefficients", {&l, &lp, &d});
  LLR_CHECK(l.rank() == 1, "llr_coefficients: per-example vectors expected, got ", l.describe());
  same_shape("llr_coefficients", l, lp);
  same_shape("llr_coefficients", l, d);
}

void gradient_alignment(const Tensor& g1, const Tensor& g2, double guard) {
  perturbation_dtype("gradient_alignment", {&g1, &g2});
  batch("gradient_alignment", g1);
  same_shape("gradient_alignment", g1, g2);
  LLR_CHECK(guard > 0, "gradient_alignment: the norm guard ", guard, " must be positive");
}

void elle_triplets(const Tensor& x, const Tensor& labels, const EpsLength& eps, uint64_t,
                   const RandomCounter& counter) {
  perturbation_dtype("elle_triplets", {&x});
  random_counter("elle_triplets", counter, x);
  batch("elle_triplets", x);
  indices("elle_triplets", "labels", labels, x.dim(0));
  length("elle_triplets", "eps", eps, x);
}

void elle_coefficients(const Tensor& losses, const Tensor& alpha, double lambda) {
  perturbation_dtype("elle_coefficients", {&losses, &alpha});
  LLR_CHECK(alpha.rank() == 1, "elle_coefficients: alpha must be per-example [N], got ", alpha.describe());
  per_example("elle_coefficients", "the triplet losses", losses, 3 * alpha.dim(0));
  LLR_CHECK(lambda >= 0, "elle_coefficients: lambda ", lambda, " must be non-negative");
}

void apgd_step(Tensor& delta, Tensor& delta_prev, const Tensor& x, const Tensor& grad, const Tensor& eta, double,
               double eps) {
  perturbation_dtype("apgd_step", {&delta, &delta_prev, &x, &grad, &eta});
  batch("apgd_step", delta);
  same_shape("apgd_step", delta, delta_prev);
  same_shape("apgd_step", delta, x);
  same_shape("apgd_step", delta, grad);
  per_example("apgd_step", "eta", eta, delta.dim(0));
  LLR_CHECK(eps >= 0, "apgd_step: eps ", eps, " must be non-negative");
}

void apgd_track(const Tensor& loss, Tensor& best, Tensor& last, Tensor& successes, bool) {
  perturbation_dtype("apgd_track", {&loss, &best, &last, &successes});
  LLR_CHECK(loss.rank() == 1, "apgd_track: per-example losses expected, got ", loss.describe());
  for (const Tensor* t : std::initializer_list<const Tensor*>{&best, &last, &successes}) per_example("apgd_track", "state", *t, loss.dim(0));
}

void apgd_checkpoint(Tensor& successes, Tensor& eta, Tensor& eta_at_checkpoint, Tensor& best_at_checkpoint,
                     const Tensor& best, double) {
  perturbation_dtype("apgd_checkpoint", {&successes, &eta, &eta_at_checkpoint, &best_at_checkpoint, &best});
  LLR_CHECK(eta.rank() == 1, "apgd_checkpoint: per-example step sizes expected, got ", eta.describe());
  for (const Tensor* t : std::initializer_list<const Tensor*>{&successes, &eta_at_checkpoint, &best_at_checkpoint, &best})
    per_example("apgd_checkpoint", "state", *t, eta.dim(0));
}

void select_rows(const Tensor& a, const Tensor& b, const Tensor& mask) {
  batch("select_rows", a);
  LLR_CHECK(b.defined() && a.dtype() == b.dtype(), "select_rows: a and b must have one dtype, got ", a.describe(),
            " and ", b.defined() ? b.describe() : "undefined");
  same_shape("select_rows", a, b);
  per_example("select_rows", "mask", mask, a.dim(0));
  LLR_CHECK(mask.dtype() == DType::f32 || mask.dtype() == DType::f64, "select_rows: mask must be f32 or f64, got ",
            mask.describe());
}

void take_rows(const Tensor& t, const Tensor& idx) {
  batch("take_rows", t);
  indices("take_rows", "row indices", idx, -1);
}

void put_rows(Tensor& dst, const Tensor& src, const Tensor& idx) {
  batch("put_rows", dst);
  indices("put_rows", "row indices", idx, -1);
  LLR_CHECK(src.defined() && src.dtype() == dst.dtype() && src.rank() == dst.rank() && src.dim(0) == idx.numel(),
            "put_rows: ", idx.numel(), " rows of ", src.defined() ? src.describe() : "undefined", " into ",
            dst.describe());
  for (int a = 1; a < dst.rank(); ++a)
    LLR_CHECK(src.dim(a) == dst.dim(a), "put_rows: row shapes differ, ", src.describe(), " into ", dst.describe());
}

void predicted_correct(const Tensor& z, const Tensor& labels) {
  logits("predicted_correct", z);
  indices("predicted_correct", "labels", labels, z.dim(0));
}

void class_at_rank(const Tensor& z, const Tensor& labels, int rank) {
  logits("class_at_rank", z);
  if (labels.defined()) indices("class_at_rank", "labels", labels, z.dim(0));
  int64_t classes = z.dim(1) - (labels.defined() ? 1 : 0);
  LLR_CHECK(rank >= 1 && rank <= classes, "class_at_rank: rank ", rank, " outside [1, ", classes, "]");
}

void fab_step(Tensor& delta, const Tensor& x0, const Tensor& grad, const Tensor& f, double overshoot, double alpha_max) {
  perturbation_dtype("fab_step", {&delta, &x0, &grad, &f});
  batch("fab_step", delta);
  same_shape("fab_step", delta, x0);
  same_shape("fab_step", delta, grad);
  per_example("fab_step", "f", f, delta.dim(0));
  LLR_CHECK(overshoot > 0 && alpha_max >= 0 && alpha_max <= 1, "fab_step: overshoot ", overshoot, " and alpha_max ",
            alpha_max, " must be positive and in [0, 1]");
}

void fab_track(Tensor& delta, const Tensor& correct, Tensor& best_delta, Tensor& best_norm, Tensor& robust,
               double backstep, double eps) {
  perturbation_dtype("fab_track", {&delta, &correct, &best_delta, &best_norm, &robust});
  batch("fab_track", delta);
  same_shape("fab_track", delta, best_delta);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&correct, &best_norm, &robust})
    per_example("fab_track", "per-example state", *t, delta.dim(0));
  LLR_CHECK(backstep >= 0 && backstep <= 1 && eps >= 0, "fab_track: backstep ", backstep, " must be in [0, 1] and eps ",
            eps, " non-negative");
}

namespace {

void square_images(const char* op, const Tensor& x, const Tensor& ids, int64_t examples) {
  perturbation_dtype(op, {&x});
  LLR_CHECK(x.rank() == 4, op, ": images must be NHWC [n, h, w, c], got ", x.describe());
  indices(op, "example ids", ids, x.dim(0));
  LLR_CHECK(examples >= x.dim(0), op, ": ", x.dim(0), " rows cannot be among ", examples, " examples");
}

}  // namespace

void square_start(const Tensor& x, const Tensor& ids, int64_t examples, double eps, uint64_t, uint64_t) {
  square_images("square_start", x, ids, examples);
  LLR_CHECK(eps >= 0, "square_start: eps ", eps, " must be non-negative");
}

void square_proposal(const Tensor& best, const Tensor& x, const Tensor& ids, int64_t examples, int64_t query,
                     int64_t side, double eps, uint64_t, uint64_t) {
  square_images("square_proposal", x, ids, examples);
  perturbation_dtype("square_proposal", {&x, &best});
  same_shape("square_proposal", x, best);
  LLR_CHECK(query >= 0 && side >= 1 && side <= std::min(x.dim(1), x.dim(2)) && eps >= 0, "square_proposal: query ",
            query, ", side ", side, " (at most ", std::min(x.dim(1), x.dim(2)), ") and eps ", eps, " must be valid");
}

void square_accept(const Tensor& z, const Tensor& labels, Tensor& best_margin, Tensor& robust) {
  logits("square_accept", z);
  indices("square_accept", "labels", labels, z.dim(0));
  perturbation_dtype("square_accept", {&z, &best_margin, &robust});
  per_example("square_accept", "best margin", best_margin, z.dim(0));
  per_example("square_accept", "robust", robust, z.dim(0));
}

void update_max(Tensor& acc, const Tensor& v) {
  perturbation_dtype("update_max", {&acc, &v});
  same_shape("update_max", acc, v);
}

}  // namespace llr::robust_check
