// The configuration schema. Every setting is declared once, in the visit() of the struct that holds it (beside its
// default): its JSON name, its command-line flag (the name with '-' for '_', unless given), its help and its
// valid range or choices. Visitors then bind the flags (llrtrain_main.cpp), write and read config.json, and validate
// a configuration before any work, each with a one-line error naming the flag.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace llr {

struct Setting {
  const char* name;          // JSON name
  const char* help;
  const char* flag = nullptr;  // without the leading "--"; default: name with '-' for '_'
  std::string flag_name() const;
};

// Valid values of a number (NaN is never valid).
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  static Range any() { return {}; }
  static Range at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false}; }
  static Range positive() { return {0.0, std::numeric_limits<double>::infinity(), true}; }
  static Range between(double lo, double hi) { return {lo, hi, false}; }
  bool contains(double v) const;
  std::string describe() const;
};

class SettingVisitor {
 public:
  virtual ~SettingVisitor() = default;
  virtual void real(const Setting& s, double& v, Range r) = 0;
  virtual void integer(const Setting& s, int64_t& v, Range r) = 0;
  virtual void seed(const Setting& s, uint64_t& v) = 0;
  virtual void flag(const Setting& s, bool& v) = 0;
  virtual void text(const Setting& s, std::string& v, const std::vector<std::string>& choices) = 0;
  virtual void reals(const Setting& s, std::vector<double>& v, Range r) = 0;
};

// A number or a fraction such as 8/255; `what` names the flag in the error.
double parse_real(const std::string& text, const std::string& what);
// A comma-separated list of numbers (each may be a fraction).
std::vector<double> parse_reals(const std::string& text, const std::string& what);
// A whole number, refusing anything else ("-5" for an unsigned seed, "3.5", "1e30").
int64_t parse_integer(const std::string& text, const std::string& what);
uint64_t parse_seed(const std::string& text, const std::string& what);

// Throws a one-line error naming the flag of the first setting outside its range or choices.
template <class Config>
void validate(Config& c);

// config.json: every setting of c under its JSON name; reading takes the names present (others keep their values),
// refuses a value of the wrong type or outside its range naming the setting and the file.
template <class Config>
void write_json(Config& c, nlohmann::json& j);
template <class Config>
void read_json(Config& c, const nlohmann::json& j, const std::string& source);
// Like read_json, and also refuses a key that names no setting (for files people write by hand, where a typo must not
// pass silently).
template <class Config>
void read_json_strict(Config& c, const nlohmann::json& j, const std::string& source);

namespace settings_detail {
SettingVisitor& validator();
std::unique_ptr<SettingVisitor> json_writer(nlohmann::json& j);
std::unique_ptr<SettingVisitor> json_reader(const nlohmann::json& j, const std::string& source);
void read_json_strict(const std::function<void(SettingVisitor&)>& visit, const nlohmann::json& j,
                      const std::string& source);
}  // namespace settings_detail

template <class Config>
void validate(Config& c) {
  c.visit(settings_detail::validator());
}
template <class Config>
void write_json(Config& c, nlohmann::json& j) {
  c.visit(*settings_detail::json_writer(j));
}
template <class Config>
void read_json(Config& c, const nlohmann::json& j, const std::string& source) {
  c.visit(*settings_detail::json_reader(j, source));
}
template <class Config>
void read_json_strict(Config& c, const nlohmann::json& j, const std::string& source) {
  settings_detail::read_json_strict([&c](SettingVisitor& v) { c.visit(v); }, j, source);
}

}  // namespace llr
