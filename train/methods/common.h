// Small helpers the method files share.
#pragma once

#include "engine/backend.h"
#include "engine/ops.h"
#include "train/methods/method.h"
#include "train/training_kernels.h"

namespace llr::methods {

inline nets::ForwardContext forward_context(nets::BnMode bn, DType compute, std::vector<BatchStats>* record = nullptr,
                                            const std::vector<BatchStats>* use = nullptr,
                                            bool update_running = false) {
  nets::ForwardContext c;
  c.bn = bn;
  c.compute = compute;
  c.record = record;
  c.use = use;
  c.update_running = update_running;
  return c;
}

// The mean of a per-example vector, on the device: no host synchronisation inside a training step.
inline Tensor batch_mean(const Tensor& t) { return backend::scale(backend::sum_all(t), 1.0 / double(t.numel())); }

inline Tensor accuracy_of(const Tensor& logits, const Tensor& y) {
  return backend::scale(training::count_correct(logits, y), 1.0 / double(logits.dim(0)));
}

// A loss whose whole gradient comes from the final reverse pass.
inline void set_loss(ObjectiveResult& r, const Tensor& loss) {
  r.loss = loss.detach();
  r.outputs = {loss};
  r.cotangents = {backend::full_like(loss, 1.0)};
}

}  // namespace llr::methods
