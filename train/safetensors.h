// The safetensors format: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
// byte range, then the raw little-endian data. Written atomically (temporary file, fsync, rename); read with checks
// that name the file and the problem (truncated file, bad header, ranges outside the data or overlapping, sizes that
// do not match), since checkpoints may come from elsewhere.
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

// The size of the regular file `path` (links followed). Throws naming the file, as `what` (e.g. "checkpoint"), when it
// is missing, a folder or not a regular file: reading a device such as /dev/zero would never end.
uint64_t regular_file_size(const std::string& path, const std::string& what);
// The whole contents of the regular file `path`, checked as regular_file_size does.
std::string read_file(const std::string& path, const std::string& what);

// Writes `contents` to `path` atomically: a temporary file in the same folder, flushed to disk, then renamed over.
void write_file_atomic(const std::string& path, const std::string& contents);

size_t dtype_bytes(const std::string& dtype);

}  // namespace llr::io
