#include "train/run_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "train/checkpoint.h"
#include "train/safetensors.h"
#include "engine/backend.h"
#include "train/training_kernels.h"

namespace llr::run {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::function<void(const std::string&)>& fault_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

void before(const std::string& operation) {
  if (fault_hook()) fault_hook()(operation);
}

std::string path_in(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

void fsync_folder(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  LLR_CHECK(fd >= 0, "cannot open run folder ", dir, ": ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  LLR_CHECK(rc == 0, "flushing run folder ", dir, " failed: ", std::strerror(err));
}

std::string step_name(const char* stem, int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%08lld.safetensors", stem, static_cast<long long>(step));
  return buf;
}

// Every floating tensor of the model (parameters and buffers) and, when given, the optimiser's momentum.
std::vector<Tensor> state_tensors(nets::Model& model, const Sgd* optimizer) {
  std::vector<Tensor> out;
  for (const nets::NamedTensor& e : model.registry().entries()) out.push_back(e.tensor);
  if (optimizer)
    for (const Tensor& m : optimizer->momentum_buffers()) out.push_back(m);
  return out;
}

int64_t count_nonfinite(const std::vector<Tensor>& tensors) {
  Tensor total;
  for (const Tensor& t : tensors) {
    Tensor c = training::count_nonfinite(t);
    total = total.defined() ? backend::add(total, c) : c;
  }
  return total.defined() ? static_cast<int64_t>(total.to(Device::cpu).item()) : 0;
}

}  // namespace

int64_t nonfinite_values(nets::Model& model, const Sgd* optimizer) {
  return count_nonfinite(state_tensors(model, optimizer));
}

FolderLock::FolderLock(const std::string& dir) {
  std::string path = path_in(dir, ".lock");
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);
  LLR_CHECK(fd_ >= 0, "cannot create ", path, ": ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char pid[32] = {0};
    ssize_t got = ::pread(fd_, pid, sizeof pid - 1, 0);
    ::close(fd_);
    fd_ = -1;
    LLR_CHECK(err != EWOULDBLOCK, "run folder ", dir, " is in use by another llrtrain process",
              got > 0 ? " (pid " + std::string(pid, static_cast<size_t>(got)) + ")" : std::string(),
              "; wait for it to finish or choose another --out");
    LLR_FAIL("cannot lock ", path, ": ", std::strerror(err));
  }
  std::string me = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    // The pid is only a courtesy for the message above; the lock itself is held.
  }
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

bool has_contents(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename() != ".lock") return true;
  return false;
}

std::optional<Manifest> read_manifest(const std::string& dir) {
  std::string path = path_in(dir, "checkpoint.json");
  std::ifstream in(path);
  if (!in.good()) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Manifest m;
  try {
    json j = json::parse(text);
    m.step = j.at("step").get<int64_t>();
    m.train_seconds = j.at("train_seconds").get<double>();
    m.model = j.at("model").get<std::string>();
    m.train_state = j.at("train_state").get<std::string>();
  } catch (const std::exception& e) {
    LLR_FAIL("checkpoint record ", path, " is corrupt: ", e.what());
  }
  LLR_CHECK(m.step >= 0 && m.model.find('/') == std::string::npos && m.train_state.find('/') == std::string::npos,
            "checkpoint record ", path, " is corrupt: step ", m.step, ", files '", m.model, "', '", m.train_state, "'");
  return m;
}

void commit_checkpoint(const std::string& dir, nets::Model& model, const Sgd& optimizer, Manifest m) {
  std::optional<Manifest> previous = read_manifest(dir);
  if (previous && previous->step == m.step) return;  // this step is already committed
  m.model = step_name("model", m.step);
  m.train_state = step_name("train_state", m.step);
  io::Metadata meta{{"step", std::to_string(m.step)}};
  before("write " + m.model);
  ckpt::save_model(path_in(dir, m.model), model, meta);
  before("write " + m.train_state);
  ckpt::save_train_state(path_in(dir, m.train_state), optimizer, model, meta);
  before("write checkpoint.json");
  json j = {{"step", m.step}, {"train_seconds", m.train_seconds}, {"model", m.model}, {"train_state", m.train_state}};
  io::write_file_atomic(path_in(dir, "checkpoint.json"), j.dump(2) + "\n");
  before("flush the run folder");
  fsync_folder(dir);
  // The stable path users load: a hard link to the committed model, replaced atomically.
  before("link model.safetensors");
  std::string tmp = path_in(dir, "model.safetensors.tmp." + std::to_string(::getpid()));
  ::unlink(tmp.c_str());
  if (::link(path_in(dir, m.model).c_str(), tmp.c_str()) != 0) {
    std::error_code ec;  // a file system without hard links: a copy instead
    fs::copy_file(path_in(dir, m.model), tmp, fs::copy_options::overwrite_existing, ec);
    LLR_CHECK(!ec, "cannot write ", tmp, ": ", ec.message());
  }
  LLR_CHECK(std::rename(tmp.c_str(), path_in(dir, "model.safetensors").c_str()) == 0, "cannot replace ",
            path_in(dir, "model.safetensors"), ": ", std::strerror(errno));
  if (previous) {
    before("remove the previous checkpoint");
    ::unlink(path_in(dir, previous->model).c_str());
    ::unlink(path_in(dir, previous->train_state).c_str());
  }
}

Manifest load_checkpoint(const std::string& dir, nets::Model& model, Sgd& optimizer) {
  std::optional<Manifest> m = read_manifest(dir);
  LLR_CHECK(m.has_value(), "run folder ", dir, " has no committed checkpoint (no checkpoint.json) to resume from");
  std::string model_path = path_in(dir, m->model), state_path = path_in(dir, m->train_state);
  io::Metadata model_meta = ckpt::load_model(model_path, model);
  io::Metadata state_meta = ckpt::load_train_state(state_path, optimizer, model);
  for (const auto& [meta, path] : {std::pair{&model_meta, &model_path}, std::pair{&state_meta, &state_path}})
    LLR_CHECK(ckpt::metadata_int(*meta, "step", *path) == m->step, *path, " is not from step ", m->step,
              " that checkpoint.json records: the model and training state are from different steps");
  int64_t bad = count_nonfinite(state_tensors(model, &optimizer));
  LLR_CHECK(bad == 0, "checkpoint ", model_path, " / ", state_path, " holds ", bad,
            " non-finite values (NaN or infinite weights or momentum): refusing to resume from it");
  // Files a killed commit left behind: step-named checkpoints not recorded, temporary files.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    bool stale_checkpoint = (name.rfind("model-", 0) == 0 || name.rfind("train_state-", 0) == 0) &&
                            name != m->model && name != m->train_state;
    if (stale_checkpoint || name.find(".tmp.") != std::string::npos) fs::remove(e.path(), ec);
  }
  return *m;
}

MetricsLog::MetricsLog(const std::string& dir, int64_t keep_through_step) : path_(path_in(dir, "metrics.jsonl")) {
  if (keep_through_step < 0) {
    io::write_file_atomic(path_, "");
  } else {
    std::ifstream in(path_);
    std::string kept, line;
    while (std::getline(in, line)) {
      try {
        json j = json::parse(line);
        if (j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= keep_through_step)
          kept += line + "\n";
      } catch (const std::exception&) {
        // A line torn by a kill mid-write: dropped.
      }
    }
    io::write_file_atomic(path_, kept);
  }
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND);
  LLR_CHECK(fd_ >= 0, "cannot open ", path_, " for writing: ", std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::write(const json& line) {
  std::string s = line.dump() + "\n";
  size_t done = 0;
  while (done < s.size()) {
    ssize_t w = ::write(fd_, s.data() + done, s.size() - done);
    if (w < 0 && errno == EINTR) continue;
    LLR_CHECK(w > 0, "writing ", path_, " failed: ", w < 0 ? std::strerror(errno) : "nothing written",
              " (the checkpoints are intact)");
    done += static_cast<size_t>(w);
  }
}

void set_fault_hook(std::function<void(const std::string&)> hook) { fault_hook() = std::move(hook); }

}  // namespace llr::run
