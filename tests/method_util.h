// Tests build methods by name with settings given as JSON, as config.json would give them.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/autograd.h"
#include "engine/graph.h"
#include "train/methods/method.h"

namespace llr::test {

inline std::unique_ptr<Method> method_with(const std::string& name, const nlohmann::json& settings = {}) {
  MethodSet set;
  if (!settings.is_null()) read_json(set, settings, "test settings");
  return set.get(name).clone();
}

// The method's objective with --cuda-graphs on or off (the setting restored after), its tape freed.
inline ObjectiveResult build_with_graphs(const Method& method, nets::Model& model, const Tensor& x, const Tensor& y,
                                         const RobustSettings& robust, const StepContext& ctx, bool graphs) {
  const bool was = graph::enabled();
  graph::set_enabled(graphs);
  TapeScope scope;
  ObjectiveResult r = method.build(model, x, y, robust, ctx);
  graph::set_enabled(was);
  return r;
}

inline const char* const kMethods[] = {"natural", "pgd", "trades", "llr", "fgsm-rs", "n-fgsm", "gradalign", "elle"};

}  // namespace llr::test
