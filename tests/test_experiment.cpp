// The time-to-robustness experiment end to end on the synthetic data: every run trained to its budget and evaluated,
// one JSON line each and the frontier plot, a failing run reported without stopping the others, finished runs skipped
// on a rerun.

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"
#include "train/experiment.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

namespace fs = std::filesystem;

// `file` written as dir/NAME, and options that run it into dir/out.
ExperimentOptions write_experiment(const fs::path& dir, const nlohmann::json& file, const std::string& name = "exp.json") {
  std::ofstream(dir / name) << file.dump(2);
  ExperimentOptions o;
  o.file = (dir / name).string();
  o.out = (dir / "out").string();
  return o;
}

std::vector<nlohmann::json> result_lines(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  for (std::string l; std::getline(in, l);) out.push_back(nlohmann::json::parse(l));
  return out;
}

TEST_CASE("an experiment trains every method to every budget and reports a failing run and skips finished ones on a rerun" *
          doctest::test_suite("slow")) {
  fs::path dir = temp_dir("experiment_run");
  nlohmann::json file = {
      {"train",
       {{"data", "synthetic"}, {"synthetic_train", 128}, {"synthetic_val", 32}, {"model", "wrn-10-1"}, {"batch", 32},
        {"lr", 0.05}, {"schedule", "cosine"}, {"device", "cpu"}, {"log_every", 2}, {"eps_warmup_steps", 0}}},
      {"methods",
       {{{"label", "natural"}, {"method", "natural"}},
        {{"label", "pgd-2"}, {"method", "pgd"}, {"pgd_steps", 2}},
        {{"label", "no-data"}, {"method", "natural"}, {"data", (dir / "no_such_folder").string()}}}},
      {"budgets", {0.5, 1.0}},
      {"seeds", {0}},
      {"eval", {{"split", "val"}, {"n", 16}, {"batch", 16}, {"attacks", "pgd-ce:2x1"}, {"gamma_steps", 2}}}};
  ExperimentOptions o = write_experiment(dir, file);
  CHECK(run_experiment(o) == 2);  // the method without data, at both budgets

  std::vector<nlohmann::json> lines = result_lines(dir / "out" / "results.jsonl");
  REQUIRE(lines.size() == 6);
  int failed = 0;
  for (const auto& j : lines) {
    INFO(j.dump());
    if (j.contains("error")) {
      ++failed;
      CHECK(j["label"] == "no-data");
      CHECK(j["error"].get<std::string>().find("does not exist") != std::string::npos);
      continue;
    }
    CHECK(j["steps"].get<int64_t>() >= 1);
    CHECK(j["train_s"].get<double>() >= j["budget"].get<double>());  // trained until the budget was spent
    CHECK(j["clean_accuracy"].get<double>() >= j["robust_accuracy"].get<double>());
    CHECK(j["attacks"].contains("pgd-ce:2x1"));
    CHECK(j["gamma_mean"].get<double>() > 0);
  }
  CHECK(failed == 2);
  CHECK(fs::file_size(dir / "out" / "frontier.svg") > 500);

  // A rerun tries the failed runs again and skips the finished ones.
  CHECK(run_experiment(o) == 2);
  CHECK(result_lines(dir / "out" / "results.jsonl").size() == 8);
  fs::remove_all(dir);
}

TEST_CASE("an experiment with a deadline starts only the runs that fit and leaves the rest for a rerun") {
  fs::path dir = temp_dir("experiment_deadline");
  nlohmann::json file = {
      {"train",
       {{"data", "synthetic"}, {"synthetic_train", 64}, {"synthetic_val", 16}, {"model", "wrn-10-1"}, {"batch", 16},
        {"device", "cpu"}, {"log_every", 2}}},
      {"methods", {{{"label", "natural"}, {"method", "natural"}}}},
      {"budgets", {0.3, 100}},
      {"seeds", {0}},
      {"eval", {{"split", "val"}, {"n", 16}, {"batch", 16}, {"attacks", "pgd-ce:2x0"}, {"gamma_steps", 1}}}};
  ExperimentOptions o = write_experiment(dir, file);
  // 0.3 s plus the 60 s assumed before any run is measured fits in 70 s; 100 s of training does not.
  o.deadline = 70;
  CHECK(run_experiment(o) == 0);
  std::vector<nlohmann::json> lines = result_lines(dir / "out" / "results.jsonl");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["budget"].get<double>() == 0.3);
  CHECK_FALSE(lines[0].contains("error"));
  fs::remove_all(dir);
}

TEST_CASE("an experiment file with an unknown or invalid setting is refused before any run starts") {
  fs::path dir = temp_dir("experiment_check");
  auto refused = [&](const nlohmann::json& train, const nlohmann::json& method, const nlohmann::json& eval) {
    nlohmann::json file = {{"train", train}, {"methods", {method}}, {"budgets", {1}}, {"seeds", {0}}, {"eval", eval}};
    try {
      run_experiment(write_experiment(dir, file));
    } catch (const std::exception& e) {
      CHECK_FALSE(fs::exists(dir / "out"));  // nothing was trained or written
      return std::string(e.what());
    }
    return std::string();
  };
  nlohmann::json train = {{"data", "synthetic"}, {"device", "cpu"}};
  nlohmann::json natural = {{"label", "n"}, {"method", "natural"}};
  // A flag's name where the JSON name differs: the message names the right one.
  CHECK(refused({{"wd", 5e-4}}, natural, nlohmann::json::object()).find("'weight_decay'") != std::string::npos);
  CHECK(refused(train, {{"label", "p"}, {"method", "pgd"}, {"pgd_stepz", 3}}, nlohmann::json::object())
            .find("unknown setting 'pgd_stepz'") != std::string::npos);
  CHECK(refused(train, natural, {{"atacks", "apgd-ce"}}).find("unknown setting 'atacks'") != std::string::npos);
  CHECK(refused(train, natural, {{"attacks", "apgd-ce:0"}}).find("apgd-ce") != std::string::npos);
  CHECK(refused({{"lr", -1}}, natural, nlohmann::json::object()).find("'lr' must be > 0") != std::string::npos);

  // --check lists the runs of a valid file and trains nothing.
  nlohmann::json ok = {{"train", train}, {"methods", {natural}}, {"budgets", {1, 2}}, {"seeds", {0}},
                       {"eval", {{"n", 8}}}};
  ExperimentOptions o = write_experiment(dir, ok, "ok.json");
  o.check = true;
  CHECK(run_experiment(o) == 0);
  CHECK_FALSE(fs::exists(dir / "out"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
