// One training step: the method's objective on a batch, its gradient by one reverse pass, the SGD update. Everything
// it records on the tape is freed when it returns. Nothing is read back to the host: the returned values are
// one-element device tensors for the metrics window to sum.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "engine/graph.h"
#include "train/methods/method.h"
#include "train/optimizer.h"

namespace llr {

struct StepOutput {
  Tensor loss;
  Tensor clean_correct;  // correctly classified clean examples (undefined where the method has no clean logits)
  Tensor adv_correct;    // correctly classified perturbed examples (undefined for natural training and LLR)
  std::map<std::string, Tensor> metrics;
};

StepOutput training_step(nets::Model& model, Sgd& optimizer, const Method& method, const RobustSettings& robust,
                         const Tensor& x, const Tensor& y, const StepContext& ctx, double lr);

// The training steps of one run, each a replay of one recorded step when --cuda-graphs is on (engine/graph.h): a
// step's hundreds of kernel launches then cost one graph launch. The first step runs eagerly (it plans the
// convolutions); the next one with the same batch shape and precision is recorded, and the steps after it replay
// that recording until one of those changes. A replay gets its batch copied into the recording's input buffers, its
// step count and radius written to the device (where the random starts draw from, methods::draw_counter, and where
// the radius and the step sizes on its scale are read, methods::eps_length: the eps warm-up replays too), and the
// batch-norm step counters counted on, on the host; the SGD update runs after it, outside the recording, with this
// step's learning rate, and writes the weights' compute copies the recording reads (a copy left stale by a write to
// its weight from elsewhere makes the step run eagerly and the next one record again). If recording or replaying
// fails, graphs are switched off with a warning and the steps run eagerly. While a recording lives its working set stays reserved (engine/block_cache.h): release()
// frees it, for work that needs the memory (an evaluation).
//
// Steps on the CPU are recorded only after set_record_on_cpu(true) (the tests): a CPU recording keeps every tensor
// the step makes (engine/graph.h), the sum of its allocations where an eager step needs their peak.
class TrainingSteps {
 public:
  TrainingSteps(nets::Model& model, Sgd& optimizer, const Method& method, const RobustSettings& robust);
  // Process-wide, off by default.
  static void set_record_on_cpu(bool on);
  static bool record_on_cpu();
  ~TrainingSteps();
  TrainingSteps(const TrainingSteps&) = delete;
  TrainingSteps& operator=(const TrainingSteps&) = delete;

  // training_step(). A replayed step returns the recording's output tensors, which the next step overwrites: sum or
  // copy them before then.
  StepOutput run(const Tensor& x, const Tensor& y, const StepContext& ctx, double lr);
  // Whether the last step was a replay (or, on the CPU, the recording that ran it).
  bool last_step_recorded() const { return last_recorded_; }
  // Drops the recording (its memory returns to the allocator's cache); the next step with the same settings records
  // again.
  void release();

 private:
  // What a recording is valid for: the host values its kernels keep.
  struct Key {
    Shape x_shape, y_shape;
    DType x_dtype = DType::f32, y_dtype = DType::i32;
    Layout x_layout = Layout::plain, y_layout = Layout::plain;
    Device device = Device::cpu;
    DType compute = DType::f32;
    uint64_t seed = 0;
    bool update_running = true;
    bool operator==(const Key& o) const;
  };
  struct Recorded;
  static Key key_of(const Tensor& x, const Tensor& y, const StepContext& ctx);
  // Records the step of ctx on (x, y) into rec_ (left empty if it failed: graphs are off then).
  void record(const Tensor& x, const Tensor& y, const StepContext& ctx);
  static void load_inputs(Recorded& r, const Tensor& x, const Tensor& y, const StepContext& ctx);

  nets::Model& model_;
  Sgd& optimizer_;
  const Method& method_;
  const RobustSettings& robust_;
  std::optional<Key> previous_;
  std::unique_ptr<Recorded> rec_;
  bool last_recorded_ = false;
};

}  // namespace llr
