// Writes the fuzzers' seed corpora, made by the engine itself so they follow its formats:
//   OUT/safetensors/   a small file of three tensors (one empty) with metadata, and a file with metadata only
//   OUT/checkpoint/    a WRN-10-1 model checkpoint and its training state, as a training run writes them
//   OUT/cifar/         three synthetic CIFAR-10 records
// Usage: fuzz_seeds OUT (run_smoke.sh adds a few real CIFAR-10 records when ../shared/data has them).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "train/checkpoint.h"
#include "train/data.h"

namespace {

using namespace llr;
namespace fs = std::filesystem;

io::StoredTensor stored(const std::string& dtype, std::vector<int64_t> shape, size_t bytes) {
  io::StoredTensor t{dtype, std::move(shape), std::vector<uint8_t>(bytes)};
  for (size_t i = 0; i < bytes; ++i) t.bytes[i] = static_cast<uint8_t>(i * 37 + 11);
  return t;
}

// CIFAR-10's binary layout: a label byte, then the red, green and blue 32x32 planes.
std::string cifar_records(const data::Dataset& d) {
  std::string out;
  const uint8_t* img = d.images.data<uint8_t>();
  for (int64_t i = 0; i < d.size(); ++i) {
    out.push_back(static_cast<char>(d.labels.data<int32_t>()[i]));
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) out.push_back(static_cast<char>(img[(i * 1024 + p) * 3 + c]));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    fs::path out = argv[1];
    for (const char* sub : {"safetensors", "checkpoint", "cifar"}) fs::create_directories(out / sub);
    io::write_safetensors((out / "safetensors" / "small.safetensors").string(),
                          {{"weight", stored("F32", {2, 3}, 24)}, {"count", stored("I64", {}, 8)},
                           {"empty", stored("U8", {0, 4}, 0)}},
                          {{"format", "llrtrain-model"}, {"step", "3"}});
    io::write_safetensors((out / "safetensors" / "metadata_only.safetensors").string(), {}, {{"classes", "10"}});
    auto model = nets::make_model("wrn-10-1", Act::relu, 10, 1, Device::cpu);
    Sgd optimizer(*model, {});
    ckpt::save_model((out / "checkpoint" / "model.safetensors").string(), *model, {{"step", "3"}});
    ckpt::save_train_state((out / "checkpoint" / "train_state.safetensors").string(), optimizer, *model,
                           {{"step", "3"}});
    std::ofstream(out / "cifar" / "synthetic.bin", std::ios::binary) << cifar_records(data::synthetic(3, 7));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
