// A training run's folder, the part a researcher trusts with days of GPU time:
//   config.json             the run's settings (train/config.h)
//   metrics.jsonl           one JSON line per logging step and per evaluation, written with every write checked
//   checkpoint.json         the commit record of the last complete checkpoint: its step, training time and files
//   model-STEP.safetensors, train_state-STEP.safetensors   that checkpoint (model state dict; momentum and counters)
//   model.safetensors       a hard link to the latest model, the path users load in PyTorch or `llrtrain eval`
//   .lock                   held (flock) by the process that trains in the folder
// A checkpoint becomes visible in one step: both files are written (each atomically) under step-named paths, then
// checkpoint.json is replaced atomically (temporary file, fsync, rename, fsync of the folder); only then are the
// previous checkpoint's files removed. A kill at any point leaves checkpoint.json naming a complete checkpoint.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "nets/model.h"
#include "train/optimizer.h"

namespace llr::run {

// An exclusive lock on a run folder for the life of the object; throws naming the folder (and the holder's pid)
// when another process trains there.
class FolderLock {
 public:
  explicit FolderLock(const std::string& dir);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_ = -1;
};

struct Manifest {
  int64_t step = 0;
  double train_seconds = 0;  // training time up to this checkpoint (data, steps, optimiser), across resumptions
  std::string model, train_state;  // file names inside the run folder
};

// The run's last committed checkpoint, or nothing when none was committed. Throws on a corrupt checkpoint.json.
std::optional<Manifest> read_manifest(const std::string& dir);

// Commits model and optimiser state as checkpoint `m.step` (see above); m's file names are filled in.
void commit_checkpoint(const std::string& dir, nets::Model& model, const Sgd& optimizer, Manifest m);

// Loads the last committed checkpoint into model and optimiser (same architecture), refusing non-finite values and
// tensors that do not belong; removes files a killed commit left behind. Throws when there is none.
Manifest load_checkpoint(const std::string& dir, nets::Model& model, Sgd& optimizer);

// metrics.jsonl, opened for appending. `keep_through_step` >= 0 (a resumed run) first drops the lines logged after
// that step (they describe steps the run is about to repeat); -1 starts an empty file.
class MetricsLog {
 public:
  MetricsLog(const std::string& dir, int64_t keep_through_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const nlohmann::json& line);  // throws naming the file on any write error (a full disk, ...)

 private:
  std::string path_;
  int fd_ = -1;
};

// How many values of the model's parameters and buffers (and the optimiser's momentum, when given) are NaN or
// infinite (one synchronisation with the device).
int64_t nonfinite_values(nets::Model& model, const Sgd* optimizer = nullptr);

// True when the folder holds anything but a lock file (a fresh run refuses such a folder unless told to overwrite).
bool has_contents(const std::string& dir);

// Testing: called before each file operation of a checkpoint commit with its name; throwing from it simulates a
// kill at that point.
void set_fault_hook(std::function<void(const std::string& operation)> hook);

}  // namespace llr::run
