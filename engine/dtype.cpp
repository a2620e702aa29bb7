#include "engine/dtype.h"

namespace llr {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::plain: return "plain";
    case Layout::nhwc: return "NHWC";
    case Layout::nchw: return "NCHW";
    case Layout::krsc: return "KRSC";
    case Layout::kcrs: return "KCRS";
  }
  return "?";
}

}  // namespace llr
