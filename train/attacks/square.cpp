// Square (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack via random
// search"), l_inf, as AutoAttack's standard suite runs it: a start of vertical stripes of +-eps, then 5,000 queries,
// each trying a random square of +-eps per channel on the best perturbation so far, of a side that shrinks on
// AutoAttack's schedule from 80% of the image (p_init = 0.8); a query is kept when it lowers the margin
// z_y - max_{j != y} z_j or misclassifies the example. Math: train/robust/square_math.h. Unlike the reference, every
// example draws its own square and signs (the reference shares one draw across its batch), so an example's run does
// not depend on the others.
#include <cmath>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "train/attacks/common.h"
#include "train/robust/square_math.h"

namespace llr {

namespace {

constexpr double kSquareFraction = 0.8;
// Examples already broken are dropped every this many queries (one read of the mask; none in between).
constexpr int kCompactEvery = 32;

Tensor per_example_full(int64_t n, double value, const Tensor& like) {
  return Tensor::full({n}, value, like.dtype(), Layout::plain, like.device());
}

class Square final : public Attack {
 public:
  Square(const AttackArgs& a) : Attack(a.label), queries_(a.has_steps ? a.steps : 5000) {
    LLR_CHECK(!a.has_restarts, "attack '", a.label, "': square takes no restarts (square[:QUERIES])");
  }

  AttackResult run(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust) const override {
    LLR_CHECK(x.rank() == 4, "square needs NHWC images, got ", x.describe());
    const int64_t examples = x.dim(0);
    AttackResult res{robust.clone(), backend::full_like(x, 0.0)};
    std::vector<int32_t> all(static_cast<size_t>(examples));
    for (int64_t i = 0; i < examples; ++i) all[i] = static_cast<int32_t>(i);
    Tensor ids = Tensor::from_labels(all);
    if (x.device() != Device::cpu) ids = ids.to(x.device());

    // The rows still attacked and their state: ids (rows of x), best perturbation and margin, still robust.
    int64_t count = 0;
    Tensor idx = robust::rows_of(robust, &count);
    if (count == 0) return res;
    Tensor xs = robust::taken(x, idx), ys = robust::taken(y, idx);
    ids = robust::taken(ids, idx);
    Tensor best = robust::square_start(xs, ids, examples, ctx.eps, ctx.seed, 0);
    Tensor margin = per_example_full(count, INFINITY, xs), still = per_example_full(count, 1.0, xs);
    robust::square_accept(logits(ctx, xs, best), ys, margin, still);

    // Writes the rows' outcome into the result and keeps only those still robust; false when none is left.
    auto compact = [&]() {
      Tensor broken = backend::sub(per_example_full(count, 1.0, xs), still);
      robust::put_rows(res.robust, still, ids);
      robust::put_rows(res.delta, robust::select_rows(backend::full_like(best, 0.0), best, broken), ids);
      Tensor keep = robust::rows_of(still, &count);
      if (count == 0) return false;
      for (Tensor* t : {&xs, &ys, &ids, &best, &margin, &still}) *t = robust::taken(*t, keep);
      return true;
    };
    for (int query = 0; query < queries_; ++query) {
      if (query % kCompactEvery == 0 && !compact()) return res;
      int64_t side = square_math::side(square_math::fraction(query, kSquareFraction), x.dim(1), x.dim(2));
      Tensor candidate = robust::square_proposal(best, xs, ids, examples, query, side, ctx.eps, ctx.seed, 0);
      Tensor accepted = robust::square_accept(logits(ctx, xs, candidate), ys, margin, still);
      best = robust::select_rows(best, candidate, accepted);
    }
    compact();
    return res;
  }

 private:
  static Tensor logits(const AttackContext& ctx, const Tensor& x, const Tensor& delta) {
    NoGradGuard no_grad;
    TapeScope scope;
    Tensor z = eval_logits(ctx.model, backend::add(x, delta), ctx.compute);
    return z.dtype() == x.dtype() ? z : z.to(x.dtype());
  }

  int queries_;
};

}  // namespace

AttackInfo square_attack() {
  return {"square", "square[:QUERIES]",
          "Square (Andriushchenko et al. 2020): random search with squares of +-eps on the margin loss, AutoAttack's "
          "schedule of square sizes, vertical-stripe start (5,000 queries)",
          [](const AttackArgs& a) { return std::make_unique<Square>(a); }};
}

}  // namespace llr
