#include "train/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace llr::io {

using nlohmann::json;

size_t dtype_bytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  if (dtype == "U8" || dtype == "I8" || dtype == "BOOL") return 1;
  LLR_FAIL("unknown safetensors dtype ", dtype);
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  LLR_CHECK(fd >= 0, "cannot create ", tmp, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t w = ::write(fd, contents.data() + done, contents.size() - done);
    if (w < 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      LLR_FAIL("writing ", tmp, " failed: ", std::strerror(err));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    LLR_FAIL("flushing ", tmp, " failed: ", std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    LLR_FAIL("renaming ", tmp, " to ", path, " failed: ", std::strerror(err));
  }
}

void write_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  json header = json::object();
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    size_t expect = dtype_bytes(t.dtype);
    for (int64_t d : t.shape) expect *= static_cast<size_t>(d);
    LLR_CHECK(expect == t.bytes.size(), "safetensors: tensor ", name, " has ", t.bytes.size(), " bytes, its shape needs ",
              expect);
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // align the data section
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  out += h;
  for (const auto& [name, t] : tensors) out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  write_file_atomic(path, out);
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LLR_CHECK(in.good(), "cannot open checkpoint ", path);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLR_CHECK(all.size() >= 8, "checkpoint ", path, " is truncated: ", all.size(), " bytes, not even a header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(all[i])) << (8 * i);
  LLR_CHECK(n <= all.size() - 8, "checkpoint ", path, " is truncated or corrupt: header of ", n, " bytes in a ",
            all.size(), "-byte file");
  json header;
  try {
    header = json::parse(all.begin() + 8, all.begin() + 8 + static_cast<long>(n));
  } catch (const std::exception& e) {
    LLR_FAIL("checkpoint ", path, " has a corrupt header: ", e.what());
  }
  LLR_CHECK(header.is_object(), "checkpoint ", path, " has a corrupt header (not a JSON object)");
  size_t data_size = all.size() - 8 - n;
  const char* data = all.data() + 8 + n;
  SafetensorsFile f;
  size_t covered = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it->begin(); m != it->end(); ++m) f.metadata[m.key()] = m->get<std::string>();
      continue;
    }
    try {
      StoredTensor t;
      t.dtype = it->at("dtype").get<std::string>();
      t.shape = it->at("shape").get<std::vector<int64_t>>();
      auto off = it->at("data_offsets").get<std::vector<uint64_t>>();
      LLR_CHECK(off.size() == 2 && off[0] <= off[1], "bad data_offsets");
      LLR_CHECK(off[1] <= data_size, "checkpoint ", path, " is truncated: tensor ", it.key(), " ends at byte ", off[1],
                " of a ", data_size, "-byte data section");
      size_t expect = dtype_bytes(t.dtype);
      for (int64_t d : t.shape) {
        LLR_CHECK(d >= 0, "negative dimension");
        expect *= static_cast<size_t>(d);
      }
      LLR_CHECK(expect == off[1] - off[0], "tensor ", it.key(), " has ", off[1] - off[0], " bytes, its shape needs ",
                expect);
      t.bytes.assign(data + off[0], data + off[1]);
      covered += off[1] - off[0];
      f.tensors.emplace(it.key(), std::move(t));
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      LLR_FAIL("checkpoint ", path, ": bad entry for tensor ", it.key(), ": ", e.what());
    }
  }
  LLR_CHECK(covered == data_size, "checkpoint ", path, " is corrupt: tensors cover ", covered, " of ", data_size,
            " data bytes");
  return f;
}

}  // namespace llr::io
