#include "train/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "engine/error.h"
#include "engine/tensor.h"

namespace llr::io {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

size_t dtype_bytes_or_zero(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  if (dtype == "U8" || dtype == "I8" || dtype == "BOOL") return 1;
  return 0;
}

}  // namespace

size_t dtype_bytes(const std::string& dtype) {
  size_t bytes = dtype_bytes_or_zero(dtype);
  LLR_CHECK(bytes > 0, "unknown safetensors dtype ", dtype);
  return bytes;
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

uint64_t regular_file_size(const std::string& path, const std::string& what) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  LLR_CHECK(fs::exists(st), "cannot open ", what, " ", path, ": ",
            ec ? ec.message() : std::string("no such file or directory"));
  LLR_CHECK(!fs::is_directory(st), what, " ", path, " is a folder, not a file");
  LLR_CHECK(fs::is_regular_file(st), what, " ", path, " is not a regular file (a device, pipe or socket)");
  uintmax_t size = fs::file_size(path, ec);
  LLR_CHECK(!ec, "cannot read the size of ", what, " ", path, ": ", ec.message());
  return size;
}

std::string read_file(const std::string& path, const std::string& what) {
  uint64_t size = regular_file_size(path, what);
  std::ifstream in(path, std::ios::binary);
  LLR_CHECK(in.good(), "cannot open ", what, " ", path, ": ", std::strerror(errno));
  std::string bytes(size, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  LLR_CHECK(static_cast<uint64_t>(in.gcount()) == size, "reading ", what, " ", path, " failed after ", in.gcount(),
            " of its ", size, " bytes (was it changed while being read?)");
  return bytes;
}

namespace {

// The reference implementation's limit; a longer "header" is a different kind of file or a corrupt length.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// nlohmann::json keeps the last of repeated keys silently, so a checkpoint naming a tensor twice would load whichever
// came last; the parse callback refuses repeats in any object instead.
json parse_header(const char* begin, const char* end, const std::string& path) {
  std::vector<std::set<std::string>> open_objects;
  auto refuse_repeats = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      LLR_CHECK(open_objects.back().insert(key).second, "checkpoint ", path, " has a corrupt header: key '", key,
                "' appears twice in one object");
    }
    return true;
  };
  try {
    return json::parse(begin, end, refuse_repeats);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    LLR_FAIL("checkpoint ", path, " has a corrupt header: ", e.what());
  }
}

struct Entry {
  std::string name;
  StoredTensor tensor;  // bytes filled once the layout of all tensors is known to be sound
  uint64_t begin, end;  // byte range in the data section
};

Entry parse_entry(const std::string& name, const json& value, uint64_t data_size, const std::string& path) {
  const std::string where = "checkpoint " + path + ": tensor " + name;
  LLR_CHECK(value.is_object(), where, " is a JSON ", value.type_name(), ", not an object");
  auto field = [&](const char* key) -> const json& {
    auto it = value.find(key);
    LLR_CHECK(it != value.end(), where, " lacks ", key);
    return *it;
  };
  Entry e{name, {}, 0, 0};
  const json& dtype = field("dtype");
  LLR_CHECK(dtype.is_string(), where, ": dtype is a JSON ", dtype.type_name(), ", not a string");
  e.tensor.dtype = dtype.get<std::string>();
  uint64_t bytes = dtype_bytes_or_zero(e.tensor.dtype);
  LLR_CHECK(bytes > 0, where, " has an unknown dtype '", e.tensor.dtype, "'");
  const json& shape = field("shape");
  LLR_CHECK(shape.is_array(), where, ": shape is a JSON ", shape.type_name(), ", not an array");
  for (const json& d : shape) {
    // Non-negative integers parse as unsigned; floats, negatives and anything else are refused, not converted.
    LLR_CHECK(d.is_number_unsigned() && d.get<uint64_t>() <= uint64_t(INT64_MAX), where,
              ": shape entries must be non-negative 64-bit integers");
    e.tensor.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    LLR_CHECK(!__builtin_mul_overflow(bytes, d.get<uint64_t>(), &bytes), where,
              ": the byte count of its shape overflows 64 bits");
  }
  const json& off = field("data_offsets");
  LLR_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
            ": data_offsets must be two non-negative integers [begin, end]");
  e.begin = off[0].get<uint64_t>();
  e.end = off[1].get<uint64_t>();
  LLR_CHECK(e.begin <= e.end, where, ": data_offsets [", e.begin, ", ", e.end, "] end before they begin");
  LLR_CHECK(e.end <= data_size, "checkpoint ", path, " is truncated: tensor ", name, " ends at byte ", e.end, " of a ",
            data_size, "-byte data section");
  LLR_CHECK(bytes == e.end - e.begin, where, " has ", e.end - e.begin, " bytes, its shape ",
            shape_str(e.tensor.shape), " needs ", bytes);
  return e;
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  std::string all = read_file(path, "checkpoint");
  LLR_CHECK(all.size() >= 8, "checkpoint ", path, " is truncated: ", all.size(), " bytes, not even a header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(all[i])) << (8 * i);
  LLR_CHECK(n <= kMaxHeaderBytes, "checkpoint ", path, " is corrupt or not a safetensors file: its header length ", n,
            " is absurd (over ", kMaxHeaderBytes, " bytes)");
  LLR_CHECK(n <= all.size() - 8, "checkpoint ", path, " is truncated or corrupt: header of ", n, " bytes in a ",
            all.size(), "-byte file");
  json header = parse_header(all.data() + 8, all.data() + 8 + n, path);
  LLR_CHECK(header.is_object(), "checkpoint ", path, " has a corrupt header (not a JSON object)");
  const uint64_t data_size = all.size() - 8 - n;
  const char* data = all.data() + 8 + n;
  SafetensorsFile f;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() != "__metadata__") {
      entries.push_back(parse_entry(it.key(), it.value(), data_size, path));
      continue;
    }
    LLR_CHECK(it->is_object(), "checkpoint ", path, ": __metadata__ is a JSON ", it->type_name(), ", not an object");
    for (auto m = it->begin(); m != it->end(); ++m) {
      LLR_CHECK(m->is_string(), "checkpoint ", path, ": metadata '", m.key(), "' is a JSON ", m->type_name(),
                ", not a string");
      f.metadata[m.key()] = m->get<std::string>();
    }
  }
  // The ranges must tile the data section: in order of their starts, each begins where the previous one ended.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t covered = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    LLR_CHECK(e.begin >= covered, "checkpoint ", path, " is corrupt: tensor ", e.name, " (bytes ", e.begin, "..",
              e.end, ") overlaps tensor ", entries[i - 1].name, " (bytes ", entries[i - 1].begin, "..",
              entries[i - 1].end, ")");
    LLR_CHECK(e.begin == covered, "checkpoint ", path, " is corrupt: data bytes ", covered, "..", e.begin,
              " belong to no tensor");
    covered = e.end;
  }
  LLR_CHECK(covered == data_size, "checkpoint ", path, " is corrupt: tensors cover ", covered, " of ", data_size,
            " data bytes");
  for (Entry& e : entries) {
    e.tensor.bytes.assign(data + e.begin, data + e.end);
    f.tensors.emplace(std::move(e.name), std::move(e.tensor));
  }
  return f;
}

}  // namespace llr::io
