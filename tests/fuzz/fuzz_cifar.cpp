// libFuzzer target for data::read_cifar_file. An llr::Error is the expected refusal of a bad file; any other
// exception, a sanitizer report or a crash is a bug. Build and run: tests/fuzz/run_smoke.sh (README.md).
#include "tests/fuzz/fuzz_input.h"
#include "train/data.h"
#include "engine/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static llr::fuzz::InputFile file;
  try {
    llr::data::read_cifar_file(file.write(data, size));
  } catch (const llr::Error&) {
  }
  return 0;
}
