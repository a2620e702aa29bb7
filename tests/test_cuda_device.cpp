// Built only with CUDA. Without a GPU the test says it is skipped (printed, not silent).
#include <cstdio>

#include "kernels/device_info.h"
#include "tests/test_util.h"

TEST_CASE("CUDA device query") {
  int n = llr::cuda::device_count();
  if (n == 0) {
    std::printf("SKIPPED CUDA device query: %s\n", llr::cuda::device_summary().c_str());
    MESSAGE("skipped: no CUDA device");
    return;
  }
  std::string summary = llr::cuda::device_summary();
  std::printf("CUDA device: %s\n", summary.c_str());
  CHECK(summary.find("sm_") != std::string::npos);
}
