// Layers and models. Parameters and buffers carry the names of the PyTorch reference model
// (tools/reference/models.py), so a checkpoint is a state dict PyTorch loads with load_state_dict.
//
// Batch norm follows DESIGN.md: a pass runs in one of three modes (ForwardContext::bn) -
//   train:  the batch's own statistics, differentiated through, recorded for later passes; running averages are
//           updated when update_running is set (once per step, by the nominal pass);
//   shared: the statistics an earlier pass recorded, in the same order (LLR's perturbed and search passes);
//   eval:   the running averages.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"

namespace llr::nets {

enum class BnMode { train, shared, eval };

struct ForwardContext {
  BnMode bn = BnMode::train;
  std::vector<BatchStats>* record = nullptr;     // train: statistics of each batch norm, in order
  const std::vector<BatchStats>* use = nullptr;  // shared: statistics to use, in order
  size_t next = 0;                               // shared: position in `use`
  bool update_running = false;                   // train: update running averages
  DType compute = DType::f32;                    // f32, f64, or bf16 (activations bf16, master weights f32)
};

enum class TensorKind { weight, no_decay, buffer };  // weight decay applies to convolution and linear weights only

class ComputeCopy;

struct NamedTensor {
  std::string name;
  Tensor tensor;
  TensorKind kind;
  bool conv_filter;  // stored KRSC here, OIHW in checkpoints
  // The copy of a weight (TensorKind::weight: convolution and linear weights) in the compute dtype, made by add(),
  // shared by its layer and the optimiser, which keeps it current as it updates the tensor.
  std::shared_ptr<ComputeCopy> compute;
};

// Ordered registry of a model's tensors (the state dict).
class Registry {
 public:
  Tensor add(const std::string& name, Tensor t, TensorKind kind, bool conv_filter = false);
  const std::vector<NamedTensor>& entries() const { return entries_; }
  std::vector<NamedTensor>& entries() { return entries_; }
  std::vector<Tensor> parameters() const;  // weights and no-decay parameters
  // Batch-norm step counters (PyTorch's num_batches_tracked), by batch-norm prefix.
  std::vector<std::pair<std::string, int64_t*>>& counters() { return counters_; }

 private:
  std::vector<NamedTensor> entries_;
  std::vector<std::pair<std::string, int64_t*>> counters_;
};

struct Init {
  Generator* gen;
  DType dtype;    // of the master weights: f32 (also for bf16 compute) or f64
  Device device;  // where the parameters live
  Tensor place(const Tensor& t) const { return device == Device::cpu ? t : t.to(device); }
};

// The master weight in the compute dtype, converted once while the weight stands still (Tensor::value_version())
// rather than on every forward pass: a PGD-10 step runs eleven of them between two optimiser steps. Once the optimiser
// writes the copy as it updates the weight (maintained(): Sgd::step, through sgd_update's copies), no pass converts it
// at all; the copy's storage then stays the same for good (refreshed in place after any other write to the weight).
// Recorded work (engine/graph.h): a scoped recording, whose replays all come before the next update, reads an eager
// copy; a lasting recording (a whole training step, replayed after each update) reads a maintained copy, which the
// optimiser writes before each replay (TrainingSteps checks current_for() before each), and otherwise casts for
// itself, once, so that its replays cast after each update.
class ComputeCopy {
 public:
  Tensor of(const Tensor& master, DType compute) const;
  // The copy for the optimiser to write with the master's updated values: an eager one (undefined while there is
  // none). Its writer then calls written().
  Tensor target() const;
  // target() now holds the master's current values, and will after each update.
  void written(const Tensor& master);
  bool maintained() const { return maintained_; }
  // Whether the copy holds master's current values (false while there is none).
  bool current_for(const Tensor& master) const;

 private:
  bool copy_of(const Tensor& master) const;  // of master's storage (whatever its version)
  mutable Tensor copy_;
  mutable std::weak_ptr<Storage> master_;  // the storage it is a copy of, at the master's value_version() version_
  mutable uint64_t version_ = 0;
  mutable uint64_t made_in_ = 0;  // the lasting recording the copy was made in, or 0
  bool maintained_ = false;
};

class Conv2d {
 public:
  Conv2d() = default;
  Conv2d(Registry& r, const std::string& name, int64_t in, int64_t out, int kernel, int stride, int padding, Init init);
  Tensor forward(const Tensor& x, const ForwardContext& ctx) const;
  int64_t out_channels() const { return weight_.dim(0); }

 private:
  Tensor weight_;  // KRSC
  std::shared_ptr<ComputeCopy> weight_compute_;
  int stride_ = 1, padding_ = 0;
};

class BatchNorm {
 public:
  BatchNorm() = default;
  BatchNorm(Registry& r, const std::string& name, int64_t channels, Init init);
  Tensor forward(const Tensor& x, ForwardContext& ctx);
  // activation(forward(x)) as one fused op (batch_norm_act): the normalised value is not kept for the reverse pass.
  Tensor forward_act(const Tensor& x, ForwardContext& ctx, Act act);

 private:
  BatchStats given_statistics(ForwardContext& ctx);  // eval: the running averages; shared: the next recorded ones
  // A training pass's batch statistics: recorded for passes that share them, folded into the running averages.
  void note_batch_statistics(const BatchStats& s, const Tensor& x, ForwardContext& ctx);
  Tensor weight_, bias_, running_mean_, running_var_;
  std::unique_ptr<int64_t> num_batches_tracked_ = std::make_unique<int64_t>(0);
  double eps_ = 1e-5, momentum_ = 0.1;
};

class Linear {
 public:
  Linear() = default;
  Linear(Registry& r, const std::string& name, int64_t in, int64_t out, Init init);
  Tensor forward(const Tensor& x, const ForwardContext& ctx) const;

 private:
  Tensor weight_, bias_;
  std::shared_ptr<ComputeCopy> weight_compute_;
};

class Model {
 public:
  virtual ~Model() = default;
  // Logits [N, classes] for images x in [0, 1], NHWC; normalisation happens inside.
  virtual Tensor forward(const Tensor& x, ForwardContext& ctx) = 0;
  Registry& registry() { return registry_; }
  std::vector<Tensor> parameters() const { return registry_.parameters(); }
  int64_t parameter_count() const;
  const std::string& name() const { return name_; }
  Act act() const { return act_; }
  int64_t classes() const { return classes_; }

 protected:
  Model(std::string name, Act act, int64_t classes) : name_(std::move(name)), act_(act), classes_(classes) {}
  // (x - mean) / std per channel (CIFAR-10 statistics unless a model sets others), written as a batch norm with
  // fixed statistics.
  Tensor normalize_input(const Tensor& x, const ForwardContext& ctx) const;
  double norm_mean_[3] = {0.4914, 0.4822, 0.4465};
  double norm_std_[3] = {0.2471, 0.2435, 0.2616};
  // normalize_input's constant statistics per device and statistics dtype, made once: rebuilding them on every pass
  // cost four synchronising host-to-device copies per forward on the GPU.
  struct InputNormalization {
    Tensor mean, var, one, zero;
  };
  mutable std::map<std::pair<Device, DType>, InputNormalization> input_norm_;
  Registry registry_;
  std::string name_;
  Act act_;
  int64_t classes_;
};

// Names: "wrn-D-K" (Wide-ResNet, depth D = 6n + 4, widen factor K), "preact-rn18" (CIFAR, 32x32 inputs);
// "resnet-50", "resnet-101", "resnet-152" (bottleneck ResNets for 224x224 ImageNet inputs, torchvision's layout and
// names, ImageNet normalisation). Activation relu or softplus.
// Parameters live on `device` in f32 (f64 when dtype is f64).
std::unique_ptr<Model> make_model(const std::string& name, Act act, int64_t classes, uint64_t seed, Device device,
                                  DType dtype = DType::f32);
Act parse_act(const std::string& s);
const char* act_name(Act a);

}  // namespace llr::nets
