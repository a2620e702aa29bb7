// The run folder under faults: a kill at any file operation of a checkpoint leaves a resumable run that ends where an
// uninterrupted one does; a diverging run never saves non-finite weights and says where it diverged; a resumed run's
// metrics hold each step once; a folder in use or already holding a run is refused; non-finite checkpoints are
// refused by resume and eval.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/evaluation.h"
#include "train/run_folder.h"
#include "train/safetensors.h"
#include "train/trainer.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

namespace fs = std::filesystem;

// 3 epochs of 4 steps on 128 synthetic images: checkpoints at steps 4, 8 and 12.
TrainConfig small_run(const fs::path& out) {
  TrainConfig c;
  c.data.synthetic_train = 128;
  c.data.synthetic_val = 32;
  c.model = "wrn-10-1";
  c.batch = 32;
  c.epochs = 3;
  c.lr = 0.05;
  c.schedule = "piecewise";
  c.decay_at = {0.5};
  c.device = "cpu";
  c.log_every = 1;
  c.seed = 5;
  c.out = out.string();
  return c;
}

std::map<std::string, std::vector<uint8_t>> weights(const fs::path& model_file) {
  std::map<std::string, std::vector<uint8_t>> out;
  for (const auto& [name, t] : io::read_safetensors(model_file.string()).tensors) out[name] = t.bytes;
  return out;
}

std::vector<nlohmann::json> metric_lines(const fs::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string l; std::getline(in, l);) out.push_back(nlohmann::json::parse(l));
  return out;
}

struct InjectedKill {
  std::string at;
};

TEST_CASE("a kill at any file operation of a checkpoint leaves a run that resumes to the uninterrupted result" * doctest::test_suite("slow")) {
  fs::path dir = temp_dir("run_kill");
  train(small_run(dir / "reference"));
  auto reference = weights(dir / "reference" / "model.safetensors");

  // The file operations of the second checkpoint's commit (step 8), which has a previous checkpoint to replace.
  std::vector<std::string> ops;
  run::set_fault_hook([&](const std::string& op) { ops.push_back(op); });
  train(small_run(dir / "count"));
  run::set_fault_hook(nullptr);
  auto first_with = [&](const std::string& step) {
    for (size_t i = 0; i < ops.size(); ++i)
      if (ops[i].find(step) != std::string::npos) return i;
    return ops.size();
  };
  const size_t start = first_with("00000008"), per_commit = first_with("00000012") - start;
  REQUIRE(per_commit >= 6);

  for (size_t k = 0; k < per_commit; ++k) {
    fs::path run_dir = dir / ("killed_" + std::to_string(k));
    size_t calls = 0;
    run::set_fault_hook([&](const std::string& op) {
      if (calls++ == start + k) throw InjectedKill{op};
    });
    std::string killed_at;
    try {
      train(small_run(run_dir));
    } catch (const InjectedKill& kill) {
      killed_at = kill.at;
    }
    run::set_fault_hook(nullptr);
    INFO("killed before: ", killed_at);
    REQUIRE_FALSE(killed_at.empty());
    TrainOptions resume;
    resume.resume = run_dir.string();
    TrainSummary s = train(TrainConfig(), resume);
    CHECK(s.steps == 12);
    CHECK(weights(run_dir / "model.safetensors") == reference);
    // Each training step logged exactly once, in order, although steps 5-8 ran twice.
    std::vector<int64_t> steps;
    for (const auto& j : metric_lines(run_dir))
      if (j["split"] == "train") steps.push_back(j["step"].get<int64_t>());
    std::vector<int64_t> want(12);
    for (int i = 0; i < 12; ++i) want[i] = i + 1;
    CHECK(steps == want);
    // Only the committed checkpoint's files remain.
    int checkpoints = 0;
    for (const auto& e : fs::directory_iterator(run_dir))
      checkpoints += e.path().filename().string().rfind("model-", 0) == 0;
    CHECK(checkpoints == 1);
  }
  fs::remove_all(dir);
}

TEST_CASE("a diverging run saves nothing non-finite and names the step where it diverged" * doctest::test_suite("slow")) {
  fs::path dir = temp_dir("run_diverge");
  TrainConfig c = small_run(dir / "run");
  c.lr = 1e10;
  c.schedule = "constant";
  std::string message;
  try {
    train(c);
  } catch (const Error& e) {
    message = e.what();
  }
  INFO(message);
  CHECK(message.find("diverged at step") != std::string::npos);
  bool kept_last = message.find("nothing was saved") != std::string::npos ||
                   message.find("is from before it") != std::string::npos;
  CHECK(kept_last);
  if (fs::exists(dir / "run" / "model.safetensors")) {
    auto m = nets::make_model("wrn-10-1", Act::relu, 10, 0, Device::cpu);
    ckpt::load_model((dir / "run" / "model.safetensors").string(), *m);
    CHECK(run::nonfinite_values(*m) == 0);
  }
  fs::remove_all(dir);
}

TEST_CASE("resume and eval refuse a checkpoint with NaN weights or momentum" * doctest::test_suite("slow")) {
  fs::path dir = temp_dir("run_nan_checkpoint");
  TrainConfig c = small_run(dir / "run");
  c.epochs = 1;
  train(c);
  std::optional<run::Manifest> m = run::read_manifest((dir / "run").string());
  REQUIRE(m.has_value());

  // NaN momentum in the training state: resume refuses it.
  auto model = nets::make_model("wrn-10-1", Act::relu, 10, 0, Device::cpu);
  Sgd sgd(*model, {0.9, false, 5e-4});
  ckpt::load_model((dir / "run" / m->model).string(), *model);
  io::Metadata meta = ckpt::load_train_state((dir / "run" / m->train_state).string(), sgd, *model);
  sgd.momentum_buffers()[0].set(0, NAN);
  ckpt::save_train_state((dir / "run" / m->train_state).string(), sgd, *model, meta);
  TrainOptions resume;
  resume.resume = (dir / "run").string();
  CHECK_THROWS_WITH_AS(train(TrainConfig(), resume), doctest::Contains("non-finite"), Error);

  // NaN weights: eval refuses the checkpoint.
  model->registry().entries()[0].tensor.set(3, NAN);
  ckpt::save_model((dir / "nan.safetensors").string(), *model, {{"step", "4"}});
  EvalConfig e;
  e.checkpoint = (dir / "nan.safetensors").string();
  e.device = "cpu";
  e.n = 8;
  CHECK_THROWS_WITH_AS(run_eval(e), doctest::Contains("NaN or infinite"), Error);
  fs::remove_all(dir);
}

TEST_CASE("a run folder in use or holding another run is refused" * doctest::test_suite("slow")) {
  fs::path dir = temp_dir("run_lock");
  TrainConfig c = small_run(dir / "run");
  c.epochs = 1;
  train(c);
  // A fresh run into a folder that holds a run.
  CHECK_THROWS_WITH_AS(train(c), doctest::Contains("is not empty"), Error);
  // A second process on the folder (the lock is per open file description, so a second lock in this process
  // conflicts like another process would).
  {
    run::FolderLock held((dir / "run").string());
    TrainOptions resume;
    resume.resume = (dir / "run").string();
    CHECK_THROWS_WITH_AS(train(TrainConfig(), resume), doctest::Contains("in use by another llrtrain"), Error);
    TrainOptions overwrite;
    overwrite.overwrite = true;
    CHECK_THROWS_WITH_AS(train(c, overwrite), doctest::Contains("in use by another llrtrain"), Error);
  }
  // With the lock released, --overwrite replaces the run.
  TrainOptions overwrite;
  overwrite.overwrite = true;
  CHECK(train(c, overwrite).steps == 4);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
