// Helpers shared by the CUDA kernels: dtype dispatch, loads and stores that widen bf16 to f32, and launch helpers
// (grid-stride loops, per-channel and per-row sums). Arguments are checked by the dispatch before a kernel runs.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <initializer_list>

#include "engine/backend.h"
#include "kernels/context.h"
#include "kernels/cuda_check.h"

namespace llr::cuda {

using bf16 = __nv_bfloat16;

// Accumulation (and per-channel / per-example) type of a storage type.
template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccOf<T>::type;

template <class T>
__device__ __forceinline__ acc_t<T> ld(const T* p, int64_t i) {
  return static_cast<acc_t<T>>(p[i]);
}
template <>
__device__ __forceinline__ float ld<bf16>(const bf16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <class T>
__device__ __forceinline__ void st(T* p, int64_t i, acc_t<T> v) {
  p[i] = static_cast<T>(v);
}
template <>
__device__ __forceinline__ void st<bf16>(bf16* p, int64_t i, float v) {
  p[i] = __float2bfloat16(v);
}

template <class T>
DType dtype_of_storage();
template <>
inline DType dtype_of_storage<float>() {
  return DType::f32;
}
template <>
inline DType dtype_of_storage<double>() {
  return DType::f64;
}
template <>
inline DType dtype_of_storage<bf16>() {
  return DType::bf16;
}

// Calls FN<T>(args...) for the storage type T of a floating dtype.
#define LLR_CUDA_DISPATCH(dtype, op, FN, ...)                                                   \
  [&]() {                                                                                       \
    switch (dtype) {                                                                            \
      case ::llr::DType::f32: return FN<float>(__VA_ARGS__);                                    \
      case ::llr::DType::f64: return FN<double>(__VA_ARGS__);                                   \
      case ::llr::DType::bf16: return FN<::llr::cuda::bf16>(__VA_ARGS__);                       \
      default: break;                                                                           \
    }                                                                                           \
    LLR_FAIL(op, ": dtype ", ::llr::dtype_name(dtype), " is not a floating dtype");             \
  }()

template <class T>
T* ptr(Tensor& t) {
  return static_cast<T*>(t.raw_data());
}
template <class T>
const T* ptr(const Tensor& t) {
  return static_cast<const T*>(t.raw_data());
}
template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}
template <class T>
T* ptr_or_null_mut(Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

// The channel (last-axis index) of flat element i of a tensor with C channels. Below 2^32 elements, in 32-bit
// arithmetic: a 64-bit division costs several times a 32-bit one, and every elementwise batch-norm kernel does one
// per element.
__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t C) {
  return i < (int64_t(1) << 32) ? int64_t(uint32_t(i) % uint32_t(C)) : i % C;
}

inline int grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  int64_t cap = static_cast<int64_t>(std::max(1, context().sm_count())) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

template <class F>
__global__ void for_each_kernel(int64_t n, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    f(i);
}

// f(i) for i in [0, n) on the context stream.
template <class F>
void for_each(int64_t n, F f) {
  if (n <= 0) return;
  for_each_kernel<<<grid_for(n, 256), 256, 0, context().stream()>>>(n, f);
  LLR_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------------------
// Element-wise kernels in packs: each thread takes kPack consecutive elements, loaded and stored with 16-byte
// transactions (one for 8 bf16, two for 8 f32, four for 8 f64) where the address is 16-byte aligned (every block of
// the caching allocator is, so every pack of for_each_pack is), element by element for a partial pack or an
// unaligned address. A bf16 kernel
// that moves one 2-byte element per thread and instruction reaches about a third of HBM bandwidth.
//
//   for_each_pack<KernelName>(n, [=] __device__(int64_t i, int count) {
//     Pack<T> x = load_pack(px, i, count);              // elements i .. i+kPack-1; those from count on are 0
//     Pack<T> y;
//     for (int k = 0; k < kPack; ++k) y[k] = f(x[k]);   // acc_t<T> values
//     store_pack(po, i, y, count);                      // writes the first count of them
//   });
//
// KernelName is an empty struct that names the kernel in profilers (ncu: for_each_pack_kernel<KernelName, ...>).
// Values past count are computed on zeros and never stored: per-channel reads stay in range (the channel cursor
// wraps), so a formula only has to be finite-or-not on them, never in bounds.
// ---------------------------------------------------------------------------------------------------------------
constexpr int kPack = 8;

template <class T>
struct Pack {
  acc_t<T> v[kPack];
  __device__ __forceinline__ acc_t<T>& operator[](int k) { return v[k]; }
  __device__ __forceinline__ const acc_t<T>& operator[](int k) const { return v[k]; }
};

// kPack stored elements as one aligned object: the compiler moves it with 16-byte vector instructions.
template <class T>
struct alignas(16) PackRaw {
  static_assert(sizeof(T) * kPack % 16 == 0, "a pack of T is not a whole number of 16-byte words");
  T e[kPack];
};

template <class T>
__device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & uintptr_t(15)) == 0;
}

template <class T>
__device__ __forceinline__ Pack<T> load_pack(const T* p, int64_t i, int count) {
  Pack<T> out;
  if (count == kPack && aligned16(p + i)) {
    PackRaw<T> raw = *reinterpret_cast<const PackRaw<T>*>(p + i);
#pragma unroll
    for (int k = 0; k < kPack; ++k) out[k] = ld(raw.e, k);
  } else {
#pragma unroll
    for (int k = 0; k < kPack; ++k) out[k] = k < count ? ld(p, i + k) : acc_t<T>(0);
  }
  return out;
}

template <class T>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const Pack<T>& v, int count) {
  if (count == kPack && aligned16(p + i)) {
    PackRaw<T> raw;
#pragma unroll
    for (int k = 0; k < kPack; ++k) st(raw.e, k, v[k]);
    *reinterpret_cast<PackRaw<T>*>(p + i) = raw;
  } else {
#pragma unroll
    for (int k = 0; k < kPack; ++k)
      if (k < count) st(p, i + k, v[k]);
  }
}

// The channel of the element after one in channel c (a tensor with C channels on its last axis).
__device__ __forceinline__ int64_t next_channel(int64_t c, int64_t C) { return c + 1 == C ? 0 : c + 1; }

// The per-channel values of a pack's elements, the first in channel c of C (the cursor wraps past C - 1): p[c],
// p[c + 1], ..., zeros for a null p. With 16-byte loads when the pack's channels do not wrap and p + c is aligned, as
// in every pack of a tensor whose channel count is a multiple of kPack (every WRN and ResNet width); element by
// element otherwise. Read per element instead, each per-channel array costs a warp kPack scattered 4-byte loads per
// pack, each touching eight cache lines: several times the L1 cycles of the pack's own data.
template <class S>
__device__ __forceinline__ Pack<S> load_channels(const S* p, int64_t c, int64_t C) {
  if (p != nullptr && c + kPack <= C) return load_pack(p, c, kPack);
  Pack<S> out;
#pragma unroll
  for (int k = 0; k < kPack; ++k) {
    out[k] = p ? p[c] : S(0);
    c = next_channel(c, C);
  }
  return out;
}

template <class Name, class F>
__global__ void for_each_pack_kernel(int64_t n, F f) {
  int64_t packs = (n + kPack - 1) / kPack;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < packs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i = q * kPack;
    f(i, static_cast<int>(n - i < kPack ? n - i : kPack));
  }
}

// f(i, count) for i = 0, kPack, 2 kPack, ... below n, count = min(kPack, n - i), on the context stream.
template <class Name, class F>
void for_each_pack(int64_t n, F f) {
  if (n <= 0) return;
  for_each_pack_kernel<Name><<<grid_for((n + kPack - 1) / kPack, 256), 256, 0, context().stream()>>>(n, f);
  LLR_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------------------
// Per-channel sums over the rows of a channel-last tensor, in packs of kPack channels of one row.
//
//   channel_sum<NV, S>(rows, C, [=] __device__(int64_t i, int64_t c, int count, PackSums<NV, S>& v) {
//     Pack<T> x = load_pack(px, i, count);   // row i / C, channels c .. c+count-1 (count = kPack but at the end)
//     for (int j = 0; j < kPack; ++j) v.v[0][j] = x[j];
//   }, out);                            // out[k * C + c + j] = sum over rows of v.v[k][j] (out is zeroed first)
//
// Entries j >= count of a pack are never added; a formula that reads per-channel values there must read them in range:
// load_channels(p, c, C) (which wraps), not p[c + j].
//
// A block of 256 threads covers gpb packs of a row (consecutive 16-byte loads; all ceil(C / kPack) packs up to 256,
// else an even share of them per tile, blockIdx.y picking the tile) and slots = 256 / gpb rows at a time, striding
// over rows. The block adds its threads' sums in shared memory (two stages when there are many slots) and then adds
// one value per channel and sum to out with an atomic. The grid is one wave of as many blocks as fit on the GPU, up
// to 4 per SM (the heavier lambdas need over 128 registers a thread: one block per SM), so each channel sees a few
// hundred atomics at most.
// ---------------------------------------------------------------------------------------------------------------
template <int NV, class S>
struct PackSums {
  S v[NV][kPack];
};

constexpr int kSumThreads = 256;

template <int NV, class S, class F>
__global__ void __launch_bounds__(kSumThreads) channel_sum_kernel(int64_t rows, int64_t C, int gpb, F f, S* out) {
  __shared__ S part[kPack][kSumThreads];
  __shared__ S helper[kSumThreads];
  const int t = threadIdx.x, slots = kSumThreads / gpb, gl = t % gpb, slot = t / gpb;
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * gpb + gl) * kPack;
  const bool active = slot < slots && c < C;
  const int count = active ? static_cast<int>(C - c < kPack ? C - c : kPack) : 0;
  S acc[NV][kPack];
#pragma unroll
  for (int k = 0; k < NV; ++k)
#pragma unroll
    for (int j = 0; j < kPack; ++j) acc[k][j] = S(0);
  if (active) {
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * slots + slot; r < rows;
         r += static_cast<int64_t>(gridDim.x) * slots) {
      PackSums<NV, S> v;
      f(r * C + c, c, count, v);
#pragma unroll
      for (int k = 0; k < NV; ++k)
#pragma unroll
        for (int j = 0; j < kPack; ++j) acc[k][j] += v.v[k][j];
    }
  }
  // Pair p = (entry j, pack g) of the block: p = j * gpb + g, so that consecutive threads read consecutive words of
  // part[j] (no bank conflicts); its slots' values are part[j][q * gpb + g].
  const int pairs = gpb * kPack;
  const int helpers = pairs <= kSumThreads ? kSumThreads / pairs : 1;  // threads per pair in the first stage
#pragma unroll
  for (int k = 0; k < NV; ++k) {
#pragma unroll
    for (int j = 0; j < kPack; ++j) part[j][t] = acc[k][j];
    __syncthreads();
    if (helpers > 1) {
      // Stage 1: helper h of pair p adds slots h, h + helpers, ...; stage 2: thread p adds its helpers' sums.
      if (t < helpers * pairs) {
        int p = t % pairs, h = t / pairs, g = p % gpb, j = p / gpb;
        S s = S(0);
        for (int q = h; q < slots; q += helpers) s += part[j][q * gpb + g];
        helper[t] = s;
      }
      __syncthreads();
      if (t < pairs) {
        int64_t ch = (static_cast<int64_t>(blockIdx.y) * gpb + t % gpb) * kPack + t / gpb;
        S s = S(0);
        for (int h = 0; h < helpers; ++h) s += helper[h * pairs + t];
        if (ch < C) atomicAdd(out + k * C + ch, s);
      }
    } else {
      for (int p = t; p < pairs; p += kSumThreads) {
        int g = p % gpb, j = p / gpb;
        int64_t ch = (static_cast<int64_t>(blockIdx.y) * gpb + g) * kPack + j;
        S s = S(0);
        for (int q = 0; q < slots; ++q) s += part[j][q * gpb + g];
        if (ch < C) atomicAdd(out + k * C + ch, s);
      }
    }
    __syncthreads();
  }
}

template <int NV, class S, class F>
void channel_sum(int64_t rows, int64_t channels, F f, S* out) {
  cudaStream_t s = context().stream();
  LLR_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(S) * NV * channels, s));
  if (rows <= 0 || channels <= 0) return;
  int64_t packs = (channels + kPack - 1) / kPack;
  int64_t tiles = (packs + kSumThreads - 1) / kSumThreads;
  int gpb = static_cast<int>((packs + tiles - 1) / tiles);
  int64_t slots = kSumThreads / gpb;
  auto kernel = channel_sum_kernel<NV, S, F>;
  // Blocks of this instantiation resident per SM (from its register use), at most 4: half the SM's threads, each
  // with a 16-byte load per value in flight, and the block's final sums amortised over several rows per thread.
  static const int per_sm = [&] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kSumThreads, 0) != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it so the launch check below does not report it
      n = 1;
    }
    return std::min(4, std::max(1, n));
  }();
  int64_t want = std::max<int64_t>(1, int64_t(context().sm_count()) * per_sm / tiles);
  int64_t rblocks = std::max<int64_t>(1, std::min<int64_t>((rows + slots - 1) / slots, want));
  dim3 grid(static_cast<unsigned>(std::min<int64_t>(rblocks, 65535)), static_cast<unsigned>(tiles));
  kernel<<<grid, kSumThreads, 0, s>>>(rows, channels, gpb, f, out);
  LLR_CUDA_LAUNCH_CHECK();
}

template <class S>
__device__ S block_sum(S v) {
  __shared__ S warp_sums[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  int nwarps = (blockDim.x + 31) / 32;
  v = threadIdx.x < nwarps ? warp_sums[threadIdx.x] : S(0);
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  __syncthreads();
  return v;  // valid in thread 0
}

// out[r] = sum over j in [0, inner) of f(r, j), one block per row.
template <class S, class F>
__global__ void row_sum_kernel(int64_t inner, F f, S* out) {
  int64_t r = blockIdx.x;
  S acc = S(0);
  for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) acc += f(r, j);
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[r] = acc;
}

template <class S, class F>
void row_sum(int64_t rows, int64_t inner, F f, S* out) {
  if (rows <= 0) return;
  row_sum_kernel<S><<<static_cast<unsigned>(rows), 256, 0, context().stream()>>>(inner, f, out);
  LLR_CUDA_LAUNCH_CHECK();
}

// *out = sum over i in [0, n) of f(i). out is zeroed here.
template <class S, class F>
__global__ void total_sum_kernel(int64_t n, F f, S* out) {
  S acc = S(0);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc += f(i);
  acc = block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(out, acc);
}

template <class S, class F>
void total_sum(int64_t n, F f, S* out) {
  cudaStream_t s = context().stream();
  LLR_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(S), s));
  if (n <= 0) return;
  total_sum_kernel<S><<<grid_for(n, 256), 256, 0, s>>>(n, f, out);
  LLR_CUDA_LAUNCH_CHECK();
}

// Channel-last view of x: rows = numel / C.
inline void channel_view(const Tensor& x, int64_t& rows, int64_t& channels) {
  channels = x.dim(-1);
  rows = channels == 0 ? 0 : x.numel() / channels;
}

inline Tensor new_like(const Tensor& x) { return Tensor::empty(x.shape(), x.dtype(), x.layout(), Device::cuda); }
inline Tensor new_stat(int64_t n, const Tensor& data) {
  return Tensor::empty({n}, stat_dtype(data.dtype()), Layout::plain, Device::cuda);
}

}  // namespace llr::cuda
