// Element types, devices and memory layouts of tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace llr {

// bf16 exists for the CUDA backend (bf16 storage, f32 accumulation); the CPU backend computes in f32 and f64.
// i32 holds labels and indices; u8 holds images as stored (pixels 0..255).
enum class DType : uint8_t { f32, f64, bf16, i32, u8 };
enum class Device : uint8_t { cpu, cuda };

// What a tensor's axes mean. Activations are NHWC and convolution filters KRSC (cuDNN's NHWC filter layout) on
// every device; NCHW/KCRS exist only at the edges (PyTorch checkpoints, foreign data) and ops that need NHWC/KRSC
// refuse them instead of silently reading the wrong element.
enum class Layout : uint8_t { plain, nhwc, nchw, krsc, kcrs };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);
const char* layout_name(Layout l);
inline bool is_floating(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::bf16; }
// Per-channel statistics, per-channel parameters and per-example values of a tensor of dtype t: f32 for bf16 data
// (bf16 storage, f32 accumulation and master values), the same dtype otherwise.
inline DType stat_dtype(DType t) { return t == DType::bf16 ? DType::f32 : t; }

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<uint8_t> {
  static constexpr DType value = DType::u8;
};

}  // namespace llr
