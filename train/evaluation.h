// `llrtrain eval`: a checkpoint's clean accuracy, its robust accuracy under each attack and the worst case per
// example over all of them, and the local-linearity measure gamma; printed and written as JSON.
#pragma once

#include "train/config.h"

namespace llr {

// Returns the process exit code. Every flag and attack is checked before the model or data are read.
int run_eval(EvalConfig cfg);

}  // namespace llr
