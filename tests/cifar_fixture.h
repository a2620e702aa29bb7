// Real CIFAR-10 records for tests, taken from ../shared/data/cifar10/data_batch_1.bin.xz (or $LLR_CIFAR10_XZ) and
// written as five small batch files in a temporary folder. Returns an empty path (and prints why) when the data is
// absent, so the calling test can skip.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "train/data.h"

namespace llr::test {

inline std::filesystem::path cifar_subset(const std::string& name, int records_per_file) {
  namespace fs = std::filesystem;
  fs::path xz = fs::path(LLR_SOURCE_DIR) / ".." / "shared" / "data" / "cifar10" / "data_batch_1.bin.xz";
  if (const char* env = std::getenv("LLR_CIFAR10_XZ")) xz = env;
  if (!fs::exists(xz)) {
    std::printf("SKIPPED %s: %s not found\n", name.c_str(), xz.string().c_str());
    return {};
  }
  fs::path dir = fs::temp_directory_path() / ("llr_cifar_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int64_t rec = data::kCifarRecordBytes, total = int64_t(records_per_file) * 5;
  std::string cmd = "xz -dc '" + xz.string() + "' | head -c " + std::to_string(total * rec) + " > '" +
                    (dir / "all.bin").string() + "'";
  if (std::system(cmd.c_str()) != 0) return {};
  std::ifstream in(dir / "all.bin", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (static_cast<int64_t>(all.size()) != total * rec) return {};
  for (int k = 0; k < 5; ++k)
    std::ofstream(dir / ("data_batch_" + std::to_string(k + 1) + ".bin"), std::ios::binary)
        << all.substr(k * records_per_file * rec, records_per_file * rec);
  fs::remove(dir / "all.bin");
  return dir;
}

}  // namespace llr::test
