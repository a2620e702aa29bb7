#include <sstream>

#include "kernels/cuda_check.h"
#include "kernels/device_info.h"

namespace llr::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device/driver" status
    return 0;
  }
  return n;
}

std::string device_summary() {
  int n = 0;
  cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device (") + cudaGetErrorString(status) + ")";
  }
  if (n == 0) return "no CUDA device";
  cudaDeviceProp prop{};
  LLR_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::ostringstream os;
  os.precision(3);
  os << prop.name << " (sm_" << prop.major << prop.minor << ", "
     << static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0) << " GiB)";
  if (n > 1) os << " and " << n - 1 << " more";
  return os.str();
}

}  // namespace llr::cuda
