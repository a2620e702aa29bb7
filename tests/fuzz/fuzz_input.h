// The readers take paths, so each fuzz input reaches them as a file: one per process (libFuzzer's -fork and -jobs
// run several side by side), removed at exit. Each input is a new file rather than the old one truncated: ext4 flushes
// a truncated file to disk when it is closed, which cut the fuzzers to a few hundred inputs a second.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace llr::fuzz {

class InputFile {
 public:
  InputFile()
      : path_((std::filesystem::temp_directory_path() / ("llr_fuzz_input_" + std::to_string(::getpid()))).string()) {}
  ~InputFile() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  const std::string& write(const uint8_t* data, size_t size) {
    ::unlink(path_.c_str());
    std::ofstream(path_, std::ios::binary).write(reinterpret_cast<const char*>(data), size);
    return path_;
  }

 private:
  std::string path_;
};

}  // namespace llr::fuzz
