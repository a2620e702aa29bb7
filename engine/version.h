#pragma once
namespace llr {
inline constexpr const char* kVersion = "0.1.0";
}
