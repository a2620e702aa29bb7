#include "train/experiment.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/error.h"
#include "train/config.h"
#include "train/evaluation.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace llr {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Run {
  std::string label;
  json method_settings;
  double budget;
  uint64_t seed;
  std::string key() const {
    std::ostringstream os;
    os << label << "/b" << budget << "-s" << seed;
    return os.str();
  }
};

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  LLR_CHECK(in.good(), "cannot read experiment file ", path);
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    LLR_FAIL("experiment file ", path, " is not valid JSON: ", e.what());
  }
}

// The runs of the file, every setting checked before the first run starts.
std::vector<Run> plan(const json& file, const std::string& path) {
  for (const char* key : {"train", "methods", "budgets", "seeds", "eval"})
    LLR_CHECK(file.contains(key), "experiment file ", path, " lacks '", key, "'");
  LLR_CHECK(file["methods"].is_array() && !file["methods"].empty() && file["budgets"].is_array() &&
                !file["budgets"].empty() && file["seeds"].is_array() && !file["seeds"].empty(),
            "experiment file ", path, ": 'methods', 'budgets' and 'seeds' must be non-empty lists");
  std::vector<Run> runs;
  std::map<std::string, int> labels;
  for (const json& m : file["methods"]) {
    LLR_CHECK(m.is_object() && m.contains("label") && m["label"].is_string(), "experiment file ", path,
              ": every method needs a \"label\", got ", m.dump());
    std::string label = m["label"];
    LLR_CHECK(!label.empty() && label.find('/') == std::string::npos && ++labels[label] == 1, "experiment file ",
              path, ": method label '", label, "' is empty, has a '/' or appears twice");
    json settings = m;
    settings.erase("label");
    for (const json& b : file["budgets"]) {
      LLR_CHECK(b.is_number() && b.get<double>() > 0, "experiment file ", path, ": budgets are positive seconds, got ",
                b.dump());
      for (const json& s : file["seeds"]) {
        LLR_CHECK(s.is_number_unsigned(), "experiment file ", path, ": seeds are non-negative integers, got ",
                  s.dump());
        runs.push_back({label, settings, b.get<double>(), s.get<uint64_t>()});
      }
    }
  }
  // Smallest budget first, every method at it, then the next: an experiment cut short (a deadline, a kill) already
  // compares all methods at the budgets it finished.
  std::stable_sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) { return a.budget < b.budget; });
  return runs;
}

TrainConfig train_config(const json& file, const Run& r, const std::string& out, const std::string& path) {
  TrainConfig c;
  c.epochs = 100000;  // the time budget ends every run
  read_json_strict(c, file["train"], path + " (train)");
  read_json_strict(c, r.method_settings, path + " (method " + r.label + ")");
  c.time_budget = r.budget;
  c.seed = r.seed;
  c.out = (fs::path(out) / r.key()).string();
  validate(c);
  return c;
}

EvalConfig eval_config(const json& file, const TrainConfig& c, const std::string& path) {
  EvalConfig e;
  e.data = c.data.data;
  e.holdout = c.data.holdout;
  e.eps = c.robust.eps;
  e.device = c.device;
  e.seed = c.seed;
  read_json_strict(e, file["eval"], path + " (eval)");
  e.checkpoint = (fs::path(c.out) / "model.safetensors").string();
  e.json = (fs::path(c.out) / "eval.json").string();
  validate(e);
  return e;
}

std::map<std::string, json> finished(const std::string& results) {
  std::map<std::string, json> done;
  std::ifstream in(results);
  for (std::string line; std::getline(in, line);) {
    try {
      json j = json::parse(line);
      if (!j.contains("error")) done[j.at("run").get<std::string>()] = j;
    } catch (const std::exception&) {
      // A line torn by a kill: that run is done again.
    }
  }
  return done;
}

void append_line(const std::string& path, const json& j) {
  std::ofstream out(path, std::ios::app);
  out << j.dump() << "\n";
  out.flush();
  LLR_CHECK(out.good(), "writing ", path, " failed");
}

// A line chart per panel: x the training time, y an accuracy, one line per method through its budgets (seeds
// averaged).
void write_frontier(const std::string& path, const std::vector<json>& results) {
  std::map<std::string, std::map<double, std::vector<json>>> by_method;
  for (const json& r : results) by_method[r["label"]][r["budget"].get<double>()].push_back(r);
  double x_max = 1;
  for (const json& r : results) x_max = std::max(x_max, r["train_s"].get<double>());
  const char* colours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  const double W = 420, H = 300, L = 60, T = 30, B = 45, gap = 60;
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << 2 * (L + W) + gap + 140 << "\" height=\"" << T + H + B
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  struct Panel {
    const char* key;
    const char* title;
  };
  Panel panels[] = {{"robust_accuracy", "robust accuracy (worst case over the attacks)"},
                    {"clean_accuracy", "clean accuracy"}};
  for (int p = 0; p < 2; ++p) {
    double x0 = L + p * (L + W + gap);
    svg << "<text x=\"" << x0 << "\" y=\"18\">" << panels[p].title << "</text>\n";
    svg << "<rect x=\"" << x0 << "\" y=\"" << T << "\" width=\"" << W << "\" height=\"" << H
        << "\" fill=\"none\" stroke=\"#444\"/>\n";
    for (int t = 0; t <= 4; ++t) {
      double y = T + H - H * t / 4.0, x = x0 + W * t / 4.0;
      svg << "<text x=\"" << x0 - 8 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << t * 0.25 << "</text>\n";
      svg << "<text x=\"" << x << "\" y=\"" << T + H + 16 << "\" text-anchor=\"middle\">"
          << std::lround(x_max * t / 4.0) << "</text>\n";
    }
    svg << "<text x=\"" << x0 + W / 2 << "\" y=\"" << T + H + 36 << "\" text-anchor=\"middle\">training time (s)</text>\n";
    int m = 0;
    for (const auto& [label, budgets] : by_method) {
      std::string colour = colours[m % 10];
      std::ostringstream points;
      for (const auto& [budget, runs] : budgets) {
        double x = 0, y = 0;
        for (const json& r : runs) {
          x += r["train_s"].get<double>() / double(runs.size());
          y += r[panels[p].key].get<double>() / double(runs.size());
        }
        double px = x0 + W * x / x_max, py = T + H - H * std::clamp(y, 0.0, 1.0);
        points << px << "," << py << " ";
        svg << "<circle cx=\"" << px << "\" cy=\"" << py << "\" r=\"3\" fill=\"" << colour << "\"/>\n";
      }
      svg << "<polyline points=\"" << points.str() << "\" fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\"/>\n";
      if (p == 1)
        svg << "<text x=\"" << x0 + W + 12 << "\" y=\"" << T + 14 + 16 * m << "\" fill=\"" << colour << "\">" << label
            << "</text>\n";
      ++m;
    }
  }
  svg << "</svg>\n";
  io::write_file_atomic(path, svg.str());
}

}  // namespace

int run_experiment(const ExperimentOptions& options) {
  json file = read_json_file(options.file);
  std::string out = options.out;
  if (out.empty()) out = (fs::path(options.file).parent_path() / fs::path(options.file).stem()).string();
  std::vector<Run> runs = plan(file, options.file);
  // Every run's configuration before the first starts: a typo costs nothing.
  std::vector<TrainConfig> configs;
  for (const Run& r : runs) {
    configs.push_back(train_config(file, r, out, options.file));
    eval_config(file, configs.back(), options.file);
  }
  if (options.check) {
    for (size_t k = 0; k < runs.size(); ++k) {
      const Run& r = runs[k];
      const TrainConfig& c = configs[k];
      std::printf("%-24s method %-10s %g s of training, seed %llu -> %s\n", r.key().c_str(), c.method.c_str(), r.budget,
                  static_cast<unsigned long long>(r.seed), c.out.c_str());
    }
    std::printf("%s: %zu runs, every setting valid\n", options.file.c_str(), runs.size());
    return 0;
  }
  fs::create_directories(out);
  const std::string results_path = (fs::path(out) / "results.jsonl").string();
  std::map<std::string, json> done = finished(results_path);
  std::printf("llrtrain experiment: %zu runs (%zu methods x %zu budgets x %zu seeds), %zu already done, in %s\n",
              runs.size(), file["methods"].size(), file["budgets"].size(), file["seeds"].size(), done.size(),
              out.c_str());
  int failures = 0, postponed = 0;
  const auto start = std::chrono::steady_clock::now();
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  double overhead = 60;  // the longest a run spent outside training so far (data, evaluation, writing)
  bool measured = false;
  for (const Run& r : runs) {
    if (done.count(r.key())) continue;
    if (options.deadline > 0 && seconds_since(start) + r.budget + overhead > options.deadline) {
      ++postponed;
      continue;
    }
    const auto run_start = std::chrono::steady_clock::now();
    std::printf("\n== %s: %g s of training, seed %llu ==\n", r.key().c_str(), r.budget,
                static_cast<unsigned long long>(r.seed));
    std::fflush(stdout);
    json line = {{"run", r.key()}, {"label", r.label}, {"budget", r.budget}, {"seed", r.seed}};
    try {
      TrainConfig c = train_config(file, r, out, options.file);
      line["method"] = c.method;
      TrainOptions opt;
      opt.overwrite = true;
      TrainSummary s = train(c, opt);
      line["steps"] = s.steps;
      line["train_s"] = s.train_seconds;
      EvalConfig e = eval_config(file, c, options.file);
      run_eval(e);
      std::ifstream in(e.json);
      json ev = json::parse(in);
      line["clean_accuracy"] = ev["clean_accuracy"];
      line["robust_accuracy"] =
          ev.contains("robust_accuracy_worst_case") ? ev["robust_accuracy_worst_case"] : ev["clean_accuracy"];
      json attacks = json::object();
      for (const json& a : ev.value("attacks", json::array())) attacks[a["attack"].get<std::string>()] = a["robust_accuracy"];
      line["attacks"] = attacks;
      if (ev.contains("gamma")) line["gamma_mean"] = ev["gamma"]["mean"];
      line["n"] = ev["n"];
    } catch (const std::exception& e) {
      // Reported, and the experiment goes on; a rerun tries this run again.
      line["error"] = e.what();
      ++failures;
      std::fprintf(stderr, "llrtrain experiment: run %s failed: %s\n", r.key().c_str(), e.what());
    }
    append_line(results_path, line);
    if (!line.contains("error")) {
      done[r.key()] = line;
      double outside = seconds_since(run_start) - line["train_s"].get<double>();
      overhead = measured ? std::max(overhead, outside) : outside;
      measured = true;
    }
  }
  std::vector<json> results;
  for (const Run& r : runs)
    if (done.count(r.key())) results.push_back(done[r.key()]);
  std::printf("\n%-14s %8s %6s %8s %8s %8s\n", "method", "budget", "seed", "train s", "clean", "robust");
  for (const json& j : results)
    std::printf("%-14s %8g %6llu %8.1f %8.4f %8.4f\n", j["label"].get<std::string>().c_str(), j["budget"].get<double>(),
                static_cast<unsigned long long>(j["seed"].get<uint64_t>()), j["train_s"].get<double>(),
                j["clean_accuracy"].get<double>(), j["robust_accuracy"].get<double>());
  if (!results.empty()) write_frontier((fs::path(out) / "frontier.svg").string(), results);
  std::printf("wrote %s and %s/frontier.svg; %d run(s) failed\n", results_path.c_str(), out.c_str(), failures);
  if (postponed > 0)
    std::printf("%d run(s) left for a rerun: they would not have ended within the deadline of %g s\n", postponed,
                options.deadline);
  return failures;
}

}  // namespace llr
