// What CUDA devices this process can see. Safe to call on a machine without a GPU or driver: it reports none.
#pragma once

#include <string>

namespace llr::cuda {

int device_count();              // 0 when there is no usable device or driver
std::string device_summary();    // e.g. "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)", or why there is none

}  // namespace llr::cuda
