// Binds a configuration's settings (their visit(): train/settings.h) to command-line flags with CLI11, and reports
// which settings a command line gave. Numbers accept fractions such as 8/255; ranges and choices are checked by
// validate() before any work.
#pragma once

#include <CLI/CLI.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "train/settings.h"

namespace llr {

class CliBinder final : public SettingVisitor {
 public:
  explicit CliBinder(CLI::App* app) : app_(app) {}

  void real(const Setting& s, double& v, Range r) override {
    std::string flag = s.flag_name();
    add(s, app_->add_option_function<std::string>(flag, [&v, flag](const std::string& t) { v = parse_real(t, flag); },
                                                  help(s, range_text(r)))
               ->type_name("NUMBER")
               ->default_str(number(v)));
  }
  void integer(const Setting& s, int64_t& v, Range r) override {
    std::string flag = s.flag_name();
    add(s, app_->add_option_function<std::string>(flag,
                                                  [&v, flag](const std::string& t) { v = parse_integer(t, flag); },
                                                  help(s, range_text(r)))
               ->type_name("INT")
               ->default_str(std::to_string(v)));
  }
  void seed(const Setting& s, uint64_t& v) override {
    std::string flag = s.flag_name();
    add(s, app_->add_option_function<std::string>(flag, [&v, flag](const std::string& t) { v = parse_seed(t, flag); },
                                                  s.help)
               ->type_name("UINT")
               ->default_str(std::to_string(v)));
  }
  void flag(const Setting& s, bool& v) override {
    std::string flag = s.flag_name();
    add(s, app_->add_flag(flag + ",!--no-" + flag.substr(2), v, s.help));
  }
  void text(const Setting& s, std::string& v, const std::vector<std::string>& choices) override {
    std::string list;
    for (const std::string& c : choices) list += (list.empty() ? "" : "|") + c;
    add(s, app_->add_option(s.flag_name(), v, s.help)->type_name(list.empty() ? "TEXT" : list)->default_str(v));
  }
  void reals(const Setting& s, std::vector<double>& v, Range r) override {
    std::string flag = s.flag_name();
    std::string shown;
    for (double x : v) shown += (shown.empty() ? "" : ",") + number(x);
    add(s, app_->add_option_function<std::string>(flag, [&v, flag](const std::string& t) { v = parse_reals(t, flag); },
                                                  help(s, range_text(r)))
               ->type_name("LIST")
               ->default_str(shown));
  }

  // The JSON names of the settings the parsed command line gave.
  std::vector<std::string> given() const {
    std::vector<std::string> out;
    for (const auto& [name, option] : options_)
      if (option->count() > 0) out.push_back(name);
    return out;
  }

 private:
  void add(const Setting& s, CLI::Option* o) { options_.emplace_back(s.name, o); }
  static std::string help(const Setting& s, const std::string& extra) {
    return extra.empty() ? s.help : std::string(s.help) + " (" + extra + ")";
  }
  static std::string range_text(Range r) {
    return std::isfinite(r.lo) || std::isfinite(r.hi) ? r.describe() : std::string();
  }
  static std::string number(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  }
  CLI::App* app_;
  std::vector<std::pair<std::string, CLI::Option*>> options_;
};

}  // namespace llr
