// Checkpoints. A run writes two safetensors files per checkpoint, each atomically:
//   model.safetensors   the model's state dict under the PyTorch reference names (filters OIHW), float32 (float64
//                       for f64 models), plus num_batches_tracked; metadata: model, activation, classes, step.
//                       PyTorch loads it with model.load_state_dict(safetensors.torch.load_file(path)).
//   train_state.safetensors   momentum buffers and the step, epoch and data-order state needed to resume.
#pragma once

#include <string>

#include "nets/model.h"
#include "train/optimizer.h"
#include "train/safetensors.h"

namespace llr::ckpt {

// A host copy of t in checkpoint layout (KRSC filters become OIHW when conv_filter) and dtype name.
io::StoredTensor to_stored(const Tensor& t, bool conv_filter);

void save_model(const std::string& path, nets::Model& model, const io::Metadata& extra);
// Copies a checkpoint's tensors into `model` (same architecture); throws on a missing, extra or mis-shaped tensor.
// Returns the file's metadata.
io::Metadata load_model(const std::string& path, nets::Model& model);
// The architecture a model checkpoint describes, to build the model before load_model.
struct ModelInfo {
  std::string model;
  Act act;
  int64_t classes;
  DType dtype;
};
ModelInfo read_model_info(const std::string& path);

// The integer metadata value `key` of the checkpoint at `path`; throws naming the file and key when it is missing or
// not a whole decimal 64-bit integer.
int64_t metadata_int(const io::Metadata& meta, const std::string& key, const std::string& path);

void save_train_state(const std::string& path, const Sgd& opt, const nets::Model& model, const io::Metadata& meta);
io::Metadata load_train_state(const std::string& path, Sgd& opt, const nets::Model& model);

}  // namespace llr::ckpt
