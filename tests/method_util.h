// Tests build methods by name with settings given as JSON, as config.json would give them.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "train/methods/method.h"

namespace llr::test {

inline std::unique_ptr<Method> method_with(const std::string& name, const nlohmann::json& settings = {}) {
  MethodSet set;
  if (!settings.is_null()) read_json(set, settings, "test settings");
  return set.get(name).clone();
}

inline const char* const kMethods[] = {"natural", "pgd", "trades", "llr", "fgsm-rs", "n-fgsm", "gradalign", "elle"};

}  // namespace llr::test
