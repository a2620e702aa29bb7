#include "train/settings.h"

#include <cerrno>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/error.h"

namespace llr {

std::string Setting::flag_name() const {
  std::string f = flag ? flag : name;
  for (char& c : f)
    if (c == '_') c = '-';
  return "--" + f;
}

bool Range::contains(double v) const {
  if (std::isnan(v)) return false;
  return (lo_open ? v > lo : v >= lo) && v <= hi;
}

std::string Range::describe() const {
  std::ostringstream os;
  bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  if (has_lo && has_hi) {
    os << "in [" << lo << ", " << hi << "]";
  } else if (has_lo) {
    os << (lo_open ? "> " : ">= ") << lo;
  } else if (has_hi) {
    os << "<= " << hi;
  } else {
    os << "a finite number";
  }
  return os.str();
}

namespace {

double parse_plain(const std::string& t, const std::string& what, const std::string& whole) {
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(t.c_str(), &end);
  LLR_CHECK(!t.empty() && end == t.c_str() + t.size() && errno != ERANGE, what,
            " expects a number or a fraction such as 8/255, got '", whole, "'");
  return v;
}

}  // namespace

double parse_real(const std::string& text, const std::string& what) {
  size_t slash = text.find('/');
  if (slash == std::string::npos) return parse_plain(text, what, text);
  double a = parse_plain(text.substr(0, slash), what, text), b = parse_plain(text.substr(slash + 1), what, text);
  LLR_CHECK(b != 0, what, " expects a number or a fraction such as 8/255, got '", text, "'");
  return a / b;
}

std::vector<double> parse_reals(const std::string& text, const std::string& what) {
  std::vector<double> out;
  size_t at = 0;
  while (at <= text.size()) {
    size_t comma = text.find(',', at);
    if (comma == std::string::npos) comma = text.size();
    out.push_back(parse_real(text.substr(at, comma - at), what));
    at = comma + 1;
  }
  return out;
}

int64_t parse_integer(const std::string& text, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  LLR_CHECK(!text.empty() && end == text.c_str() + text.size() && errno != ERANGE, what,
            " expects a whole number, got '", text, "'");
  return v;
}

uint64_t parse_seed(const std::string& text, const std::string& what) {
  LLR_CHECK(!text.empty() && text[0] != '-' && text[0] != '+', what, " expects a non-negative whole number, got '",
            text, "'");
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  LLR_CHECK(end == text.c_str() + text.size() && errno != ERANGE, what,
            " expects a non-negative whole number, got '", text, "'");
  return v;
}

namespace settings_detail {

namespace {

void check_range(const Setting& s, double v, Range r) {
  LLR_CHECK(r.contains(v), s.flag_name(), " must be ", r.describe(), ", got ", v);
}

void check_choice(const Setting& s, const std::string& v, const std::vector<std::string>& choices) {
  if (choices.empty()) return;
  for (const std::string& c : choices)
    if (c == v) return;
  std::string list;
  for (size_t i = 0; i < choices.size(); ++i) list += (i ? (i + 1 == choices.size() ? " or " : ", ") : "") + choices[i];
  LLR_FAIL(s.flag_name(), " must be ", list, ", got '", v, "'");
}

class Validator final : public SettingVisitor {
 public:
  void real(const Setting& s, double& v, Range r) override { check_range(s, v, r); }
  void integer(const Setting& s, int64_t& v, Range r) override { check_range(s, double(v), r); }
  void seed(const Setting&, uint64_t&) override {}
  void flag(const Setting&, bool&) override {}
  void text(const Setting& s, std::string& v, const std::vector<std::string>& choices) override {
    check_choice(s, v, choices);
  }
  void reals(const Setting& s, std::vector<double>& v, Range r) override {
    for (double x : v) check_range(s, x, r);
  }
};

class JsonWriter final : public SettingVisitor {
 public:
  explicit JsonWriter(nlohmann::json& j) : j_(j) {}
  void real(const Setting& s, double& v, Range) override { j_[s.name] = v; }
  void integer(const Setting& s, int64_t& v, Range) override { j_[s.name] = v; }
  void seed(const Setting& s, uint64_t& v) override { j_[s.name] = v; }
  void flag(const Setting& s, bool& v) override { j_[s.name] = v; }
  void text(const Setting& s, std::string& v, const std::vector<std::string>&) override { j_[s.name] = v; }
  void reals(const Setting& s, std::vector<double>& v, Range) override { j_[s.name] = v; }

 private:
  nlohmann::json& j_;
};

class JsonReader final : public SettingVisitor {
 public:
  JsonReader(const nlohmann::json& j, std::string source) : j_(j), source_(std::move(source)) {}
  void real(const Setting& s, double& v, Range r) override {
    if (const auto* e = find(s)) {
      expect(s, e->is_number(), "a number");
      v = e->get<double>();
      check(s, r.contains(v), r.describe());
    }
  }
  void integer(const Setting& s, int64_t& v, Range r) override {
    if (const auto* e = find(s)) {
      expect(s, e->is_number_integer(), "a whole number");
      v = e->get<int64_t>();
      check(s, r.contains(double(v)), r.describe());
    }
  }
  void seed(const Setting& s, uint64_t& v) override {
    if (const auto* e = find(s)) {
      expect(s, e->is_number_unsigned() || (e->is_number_integer() && e->get<int64_t>() >= 0),
             "a non-negative whole number");
      v = e->get<uint64_t>();
    }
  }
  void flag(const Setting& s, bool& v) override {
    if (const auto* e = find(s)) {
      expect(s, e->is_boolean(), "true or false");
      v = e->get<bool>();
    }
  }
  void text(const Setting& s, std::string& v, const std::vector<std::string>& choices) override {
    if (const auto* e = find(s)) {
      expect(s, e->is_string(), "a string");
      v = e->get<std::string>();
      try {
        check_choice(s, v, choices);
      } catch (const Error& err) {
        LLR_FAIL(source_, ": ", s.name, ": ", err.what());
      }
    }
  }
  void reals(const Setting& s, std::vector<double>& v, Range r) override {
    if (const auto* e = find(s)) {
      expect(s, e->is_array(), "a list of numbers");
      std::vector<double> out;
      for (const auto& x : *e) {
        expect(s, x.is_number(), "a list of numbers");
        out.push_back(x.get<double>());
        check(s, r.contains(out.back()), r.describe());
      }
      v = out;
    }
  }

 private:
  const nlohmann::json* find(const Setting& s) {
    seen_.insert(s.name);
    std::string flag = s.flag_name().substr(2);
    for (char& c : flag)
      if (c == '-') c = '_';
    by_flag_[flag] = s.name;
    auto it = j_.find(s.name);
    return it == j_.end() ? nullptr : &*it;
  }
  void expect(const Setting& s, bool ok, const char* what) const {
    LLR_CHECK(ok, source_, ": '", s.name, "' must be ", what, ", got ", j_.at(s.name).dump());
  }
  void check(const Setting& s, bool ok, const std::string& range) const {
    LLR_CHECK(ok, source_, ": '", s.name, "' must be ", range, ", got ", j_.at(s.name).dump());
  }
  const nlohmann::json& j_;
  std::string source_;
  std::set<std::string> seen_;
  std::map<std::string, std::string> by_flag_;  // a flag's name with '_' for '-' -> its JSON name

 public:
  // After a visit: refuses a key of the object that names no setting of the visited configuration.
  void refuse_unknown() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (seen_.count(it.key())) continue;
      auto f = by_flag_.find(it.key());
      if (f != by_flag_.end())
        LLR_FAIL(source_, ": unknown setting '", it.key(), "' (the JSON name of that flag is '", f->second, "')");
      LLR_FAIL(source_, ": unknown setting '", it.key(), "'");
    }
  }
};

}  // namespace

SettingVisitor& validator() {
  static Validator v;
  return v;
}

std::unique_ptr<SettingVisitor> json_writer(nlohmann::json& j) { return std::make_unique<JsonWriter>(j); }

void read_json_strict(const std::function<void(SettingVisitor&)>& visit, const nlohmann::json& j,
                      const std::string& source) {
  LLR_CHECK(j.is_object(), source, ": expected an object of settings, got ", j.dump());
  JsonReader r(j, source);
  visit(r);
  r.refuse_unknown();
}

std::unique_ptr<SettingVisitor> json_reader(const nlohmann::json& j, const std::string& source) {
  LLR_CHECK(j.is_object(), source, " is not a JSON object");
  return std::make_unique<JsonReader>(j, source);
}

}  // namespace settings_detail
}  // namespace llr
