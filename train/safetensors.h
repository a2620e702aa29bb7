// The safetensors format: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
// byte range, then the raw little-endian data. Written atomically (temporary file, fsync, rename); read with checks
// that name the file and the problem (truncated file, bad header, ranges outside the data, sizes that do not match).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace llr::io {

struct StoredTensor {
  std::string dtype;  // "F32", "F64", "I64", "I32", "U8"
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

using TensorMap = std::vector<std::pair<std::string, StoredTensor>>;  // in file order
using Metadata = std::map<std::string, std::string>;

void write_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata);

struct SafetensorsFile {
  std::map<std::string, StoredTensor> tensors;
  Metadata metadata;
};
SafetensorsFile read_safetensors(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file in the same folder, flushed to disk, then renamed over.
void write_file_atomic(const std::string& path, const std::string& contents);

size_t dtype_bytes(const std::string& dtype);

}  // namespace llr::io
