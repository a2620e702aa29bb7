// The one perturbation search: k projected steps of sign, Adam or APGD updates that maximise a per-example loss over
// the l_inf ball (and the [0, 1] box), with random restarts and per-example early stopping. PGD and TRADES training,
// the LLR gamma search, the gamma measure and every evaluation attack are this search with a different loss and
// options. Its bookkeeping stays on the device: within a run nothing is read back; an early-stopping search reads its
// per-example "still robust" mask once per restart, to drop the examples already broken. Without early stopping or
// APGD every step runs the same kernels on the same tensors, so with --cuda-graphs every step after the first
// replays one recorded step (engine/graph.h).
#pragma once

#include <functional>
#include <vector>

#include "engine/tensor.h"
#include "train/robust/robust_kernels.h"

namespace llr::robust {

enum class StepRule { sign, adam, apgd };
enum class Start { uniform, normal, zero };

struct SearchOptions {
  int steps = 10;
  StepRule rule = StepRule::sign;
  // sign: the step (alpha); adam: the learning rate; apgd: the initial step as a multiple of eps (2 in Croce & Hein).
  // A length on the eps scale may take the radius from the device (EpsLength: a recorded training step's radius).
  EpsLength step_size;
  EpsLength eps;
  Start start = Start::uniform;
  double normal_scale = 0;  // Start::normal: the standard deviation
  // Start::uniform: the start's radius as a multiple of eps (N-FGSM draws its noise from 2 eps).
  double start_scale = 1;
  // Sign and Adam steps: onto the eps-ball and the [0, 1] box, or the box only (N-FGSM).
  Projection projection = Projection::ball_and_box;
  int restarts = 1;
  // Run r draws its start from (seed, counter + r * numel of the whole batch).
  uint64_t seed = 0;
  RandomCounter counter;
  // Stop each example at its first misclassification (needs the loss to report logits and problem.labels), and run
  // later restarts only on the examples not yet broken.
  bool early_stop = false;
  // Keep, per example, the largest objective value of any evaluation of any run.
  bool track_max = false;
  // The profile's and Nsight's name for one iteration.
  const char* phase = "search step";
};

// What the search maximises, for the rows it currently holds. `per_example` tensors (labels, targets, ...) have the
// batch on their first axis and are taken to the same rows as the images before `loss` sees them.
struct SearchProblem {
  std::vector<Tensor> per_example;
  // The per-example loss [n] at x_adv, recorded so the search can differentiate it with respect to the perturbation;
  // with `logits` non-null (early stopping) also the logits at x_adv.
  std::function<Tensor(const Tensor& x_adv, const std::vector<Tensor>& per_example, Tensor* logits)> loss;
  // LLR's gap: with gap_gradient defined the objective is |loss_i - gap_base_i - <delta_i, gap_gradient_i>| (the
  // deviation from linearity around x), whose ascent direction the fused step forms from both gradients.
  Tensor gap_base, gap_gradient;
  // Early stopping: an example is broken once the argmax of its logits differs from its label.
  Tensor labels;
};

struct SearchResult {
  Tensor delta;        // the last run's final perturbation ([N, ...]; zeros for rows that run did not search)
  Tensor d;            // gap objective: <delta_i, gap_gradient_i> at the final perturbation
  Tensor max_value;    // track_max: per example, the largest objective value seen
  Tensor robust;       // early_stop: 1 where no evaluation misclassified the example (0 where `active` was 0)
  Tensor broken_delta; // early_stop: the perturbation at the example's first misclassification, zeros elsewhere
};

// x: images [N, ...] in [0, 1] (f32 or f64). `active` (early stopping): per-example 0/1 mask of the rows to search
// (undefined: all); the others count as already broken and keep zero perturbations.
SearchResult search(const Tensor& x, const SearchProblem& problem, const SearchOptions& options,
                    const Tensor& active = {});

// Early stopping's compaction, shared with the attacks that run their own loops (FAB, Square): the rows where the
// 0/1 mask is set, as i32 indices on the mask's device, read once (a synchronisation); undefined when every row is
// set. *count receives their number.
Tensor rows_of(const Tensor& mask, int64_t* count);
// The rows idx of t (t itself when either is undefined), and back: full[idx[i]] = part[i] (full = part when idx is
// undefined).
Tensor taken(const Tensor& t, const Tensor& idx);
void place(Tensor& full, const Tensor& part, const Tensor& idx);

// APGD's checkpoint iterations for a run of `steps` steps (Croce & Hein 2020), as the reference implementation counts
// them: intervals of int(0.22 steps), then each int(0.03 steps) shorter, down to int(0.06 steps) (each at least 1);
// 22, 41, 57, 70, 80, 87, 93, 99 for 100 steps.
std::vector<int> apgd_checkpoints(int steps);

}  // namespace llr::robust
