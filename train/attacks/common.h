// What the attack files share: a search problem on the evaluation-mode logits, and the loop of targeted attacks over
// the most likely other classes.
#pragma once

#include <functional>
#include <vector>

#include "train/attacks/attack.h"
#include "train/robust/search.h"

namespace llr::attacks {

// loss(z, per_example rows) of the evaluation-mode logits z; the search stops each example at its first
// misclassification.
using LogitLoss = std::function<Tensor(const Tensor& z, const std::vector<Tensor>& per_example)>;
robust::SearchProblem logit_problem(const AttackContext& ctx, const Tensor& y, std::vector<Tensor> per_example,
                                    LogitLoss loss);

// For rank = 1 .. min(K - 1, 9): the rank-th most likely other class by the clean logits as the target, searched
// (run_target(target, counter, still robust)) on the examples no earlier target broke.
using TargetRun = std::function<robust::SearchResult(const Tensor& target, uint64_t counter, const Tensor& active)>;
AttackResult over_targets(const AttackContext& ctx, const Tensor& x, const Tensor& y, const Tensor& robust,
                          const TargetRun& run_target);

inline AttackResult result_of(const robust::SearchResult& s) { return {s.robust, s.broken_delta}; }

}  // namespace llr::attacks
