// Instantiates the shared per-element math (engine/elementwise_math.h, engine/rng.h) in device code, so a CUDA build
// fails as soon as a formula the CPU path uses stops compiling for the GPU. The CUDA op kernels that call these
// formulas live beside this file.
#include "engine/elementwise_math.h"
#include "engine/rng.h"

namespace llr::cuda {

template <class T>
__global__ void shared_math_instantiation(int n, llr::Act act, const T* a, const T* t, T* out, uint64_t seed) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  T r = math::bn_inv_std<T>(a[i] * a[i], T(1e-5));
  out[i] = math::activation_derivative<T>(act, 1, a[i]) * t[i] +
           math::bn_tangent<T>(a[i], T(0), r, T(1), t[i], T(0), T(0)) +
           static_cast<T>(rng_math::uniform01(seed, static_cast<uint64_t>(i)));
}

template __global__ void shared_math_instantiation<float>(int, llr::Act, const float*, const float*, float*,
                                                          uint64_t);
template __global__ void shared_math_instantiation<double>(int, llr::Act, const double*, const double*, double*,
                                                           uint64_t);

}  // namespace llr::cuda
