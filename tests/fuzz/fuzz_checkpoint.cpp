// libFuzzer target for the checkpoint loader as `llrtrain eval` and `train --resume` use it: read_model_info, then
// load_model into a WRN-10-1, then load_train_state and the step the trainer reads. An llr::Error is the expected
// refusal of a bad file; any other exception, a sanitizer report or a crash is a bug. Build and run:
// tests/fuzz/run_smoke.sh (README.md).
#include "tests/fuzz/fuzz_input.h"
#include "train/checkpoint.h"
#include "engine/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llr;
  static fuzz::InputFile file;
  static std::unique_ptr<nets::Model> model = nets::make_model("wrn-10-1", Act::relu, 10, 0, Device::cpu);
  static Sgd optimizer(*model, {});
  const std::string& path = file.write(data, size);
  try {
    ckpt::read_model_info(path);
  } catch (const Error&) {
  }
  try {
    ckpt::load_model(path, *model);
  } catch (const Error&) {
  }
  try {
    io::Metadata meta = ckpt::load_train_state(path, optimizer, *model);
    ckpt::metadata_int(meta, "step", path);
  } catch (const Error&) {
  }
  return 0;
}
