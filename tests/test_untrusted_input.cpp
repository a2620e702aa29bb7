// Files and names from outside the program (checkpoints, training states, CIFAR-10 batches, model names): every
// corrupt or hostile input is refused with an llr::Error naming the file and the problem, never a raw library
// exception, a crash or an unbounded read.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>

#include "train/checkpoint.h"
#include "train/data.h"
#include "train/trainer.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

namespace fs = std::filesystem;

// A safetensors file from its raw parts: the 8-byte little-endian header length, the header text, the data.
std::string safetensors_bytes(const std::string& header, const std::string& data, uint64_t header_length) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header_length >> (8 * i)) & 0xFF));
  return out + header + data;
}
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return safetensors_bytes(header, data, header.size());
}

// Writes `bytes` as dir/name and returns the path.
std::string put(const fs::path& dir, const std::string& name, const std::string& bytes) {
  std::ofstream(dir / name, std::ios::binary) << bytes;
  return (dir / name).string();
}

// Expects read_safetensors to refuse the file with an llr::Error naming it and containing `problem`.
void check_refused(const std::string& path, const std::string& problem) {
  INFO(path);
  try {
    io::read_safetensors(path);
    FAIL("accepted: ", path);
  } catch (const Error& e) {
    std::string what = e.what();
    CHECK_MESSAGE(what.find(path) != std::string::npos, what);
    CHECK_MESSAGE(what.find(problem) != std::string::npos, what);
  }
}

TEST_CASE("the safetensors reader refuses overlapping and gapped and overflowing and malformed tensor entries") {
  fs::path dir = temp_dir("untrusted_ranges");
  const std::string data16(16, '\x01');
  auto f32 = [](const std::string& shape, uint64_t begin, uint64_t end) {
    return R"({"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[)" + std::to_string(begin) + "," +
           std::to_string(end) + "]}";
  };
  // Well formed: two tensors that tile the data section, one empty tensor, string metadata.
  std::string ok = put(dir, "ok.safetensors",
                       safetensors_bytes(R"({"a":)" + f32("[2]", 0, 8) + R"(,"b":)" + f32("[2]", 8, 16) + R"(,"e":)" +
                                             f32("[0]", 16, 16) + R"(,"__metadata__":{"step":"3"}})",
                                         data16));
  io::SafetensorsFile f = io::read_safetensors(ok);
  CHECK(f.tensors.size() == 3);
  CHECK(f.tensors.at("b").bytes.size() == 8);
  CHECK(f.metadata.at("step") == "3");

  // Lengths that add up to the data section but ranges that overlap (bytes 8..16 unused).
  check_refused(put(dir, "overlap.safetensors",
                    safetensors_bytes(R"({"a":)" + f32("[2]", 0, 8) + R"(,"b":)" + f32("[2]", 0, 8) + R"(,"c":)" +
                                          f32("[0]", 16, 16) + "}",
                                      data16)),
                "overlap");
  check_refused(put(dir, "gap.safetensors",
                    safetensors_bytes(R"({"a":)" + f32("[1]", 0, 4) + R"(,"b":)" + f32("[2]", 8, 16) + "}", data16)),
                "belong to no tensor");
  check_refused(put(dir, "reversed.safetensors", safetensors_bytes(R"({"a":)" + f32("[2]", 16, 8) + "}", data16)),
                "data_offsets");
  check_refused(put(dir, "negative.safetensors", safetensors_bytes(R"({"a":)" + f32("[-4]", 0, 16) + "}", data16)),
                "shape");
  check_refused(put(dir, "fraction.safetensors", safetensors_bytes(R"({"a":)" + f32("[4.5]", 0, 16) + "}", data16)),
                "shape");
  // 4 * 2^62 bytes wraps to 0 in 64 bits.
  check_refused(put(dir, "overflow.safetensors",
                    safetensors_bytes(R"({"a":)" + f32("[4611686018427387904]", 0, 0) + R"(,"b":)" +
                                          f32("[4]", 0, 16) + "}",
                                      data16)),
                "overflow");
  check_refused(put(dir, "dtype.safetensors",
                    safetensors_bytes(R"({"a":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}})", data16)),
                "dtype");
  check_refused(put(dir, "entry.safetensors", safetensors_bytes(R"({"a":5})", "")), "tensor a");
  check_refused(put(dir, "beyond.safetensors", safetensors_bytes(R"({"a":)" + f32("[8]", 0, 32) + "}", data16)),
                "truncated");
  fs::remove_all(dir);
}

TEST_CASE("the safetensors reader refuses duplicate names and non-string metadata and absurd headers and non-files") {
  fs::path dir = temp_dir("untrusted_header");
  const std::string t = R"({"dtype":"U8","shape":[4],"data_offsets":[0,4]})";
  check_refused(put(dir, "duplicate.safetensors", safetensors_bytes(R"({"a":)" + t + R"(,"a":)" + t + "}", "abcd")),
                "twice");
  check_refused(
      put(dir, "number.safetensors", safetensors_bytes(R"({"a":)" + t + R"(,"__metadata__":{"classes":10}})", "abcd")),
      "metadata 'classes' is a JSON number, not a string");
  check_refused(put(dir, "meta.safetensors", safetensors_bytes(R"({"a":)" + t + R"(,"__metadata__":"x"})", "abcd")),
                "__metadata__");
  check_refused(put(dir, "huge.safetensors", safetensors_bytes("{}", "", uint64_t(1) << 62)), "absurd");
  check_refused(put(dir, "array.safetensors", safetensors_bytes("[]", "")), "not a JSON object");
  fs::create_directories(dir / "folder.safetensors");
  check_refused((dir / "folder.safetensors").string(), "is a folder");
  fs::create_symlink("/dev/zero", dir / "zero.safetensors");
  check_refused((dir / "zero.safetensors").string(), "not a regular file");
  check_refused((dir / "missing.safetensors").string(), "cannot open");
  fs::remove_all(dir);
}

// A model checkpoint of wrn-10-1 with `meta` in place of the metadata save_model writes.
std::string model_checkpoint(const fs::path& dir, const std::string& name, const io::Metadata& meta) {
  auto model = nets::make_model("wrn-10-1", Act::relu, 10, 1, Device::cpu);
  std::string path = (dir / name).string();
  ckpt::save_model(path, *model, {});
  io::SafetensorsFile f = io::read_safetensors(path);
  io::TensorMap tensors(f.tensors.begin(), f.tensors.end());
  io::write_safetensors(path, tensors, meta);
  return path;
}

TEST_CASE("model checkpoints with bad metadata are refused naming the file and the key") {
  fs::path dir = temp_dir("untrusted_model_meta");
  const io::Metadata good = {{"model", "wrn-10-1"}, {"act", "relu"}, {"classes", "10"}, {"dtype", "f32"}};
  ckpt::ModelInfo info = ckpt::read_model_info(model_checkpoint(dir, "good.safetensors", good));
  CHECK(info.classes == 10);
  CHECK(info.dtype == DType::f32);
  struct Case {
    std::string key, value, problem;
  };
  for (const Case& c : {Case{"classes", "abc", "metadata 'classes' is 'abc', not a 64-bit integer"},
                        Case{"classes", "10abc", "not a 64-bit integer"},
                        Case{"classes", "99999999999999999999", "not a 64-bit integer"},
                        Case{"classes", "-3", "classes"},
                        Case{"dtype", "f16", "dtype"},
                        Case{"act", "tanh", "act"},
                        Case{"model", "", "lacks metadata 'model'"}}) {
    io::Metadata meta = good;
    if (c.value.empty())
      meta.erase(c.key);
    else
      meta[c.key] = c.value;
    std::string path = model_checkpoint(dir, "bad.safetensors", meta);
    INFO(c.key, " = '", c.value, "'");
    CHECK_THROWS_WITH_AS(ckpt::read_model_info(path), doctest::Contains(path.c_str()), Error);
    CHECK_THROWS_WITH_AS(ckpt::read_model_info(path), doctest::Contains(c.problem.c_str()), Error);
  }
  fs::remove_all(dir);
}

// Rewrites the metadata of a safetensors file in place, keeping its tensors.
void edit_metadata(const fs::path& path, const std::function<void(io::Metadata&)>& edit) {
  io::SafetensorsFile f = io::read_safetensors(path.string());
  edit(f.metadata);
  io::write_safetensors(path.string(), io::TensorMap(f.tensors.begin(), f.tensors.end()), f.metadata);
}

TEST_CASE("resuming from a training state without a step or with a non-numeric one is refused naming the file" *
          doctest::test_suite("slow")) {
  fs::path dir = temp_dir("untrusted_resume_meta");
  TrainConfig c;
  c.data.synthetic_train = 16;
  c.data.synthetic_val = 8;
  c.model = "wrn-10-1";
  c.batch = 8;
  c.epochs = 1;
  c.device = "cpu";
  c.out = (dir / "run").string();
  train(c);
  fs::path state = dir / "run" / "train_state-00000002.safetensors", model = dir / "run" / "model-00000002.safetensors";
  fs::copy_file(state, dir / "state.orig");
  fs::copy_file(model, dir / "model.orig");
  auto restore = [&] {
    fs::copy_file(dir / "state.orig", state, fs::copy_options::overwrite_existing);
    fs::copy_file(dir / "model.orig", model, fs::copy_options::overwrite_existing);
  };
  TrainConfig r;
  TrainOptions resume;
  resume.resume = c.out;

  edit_metadata(state, [](io::Metadata& m) { m.erase("step"); });
  CHECK_THROWS_WITH_AS(train(r, resume), doctest::Contains("train_state-00000002.safetensors lacks metadata 'step'"), Error);
  restore();
  edit_metadata(state, [](io::Metadata& m) { m["optimizer_steps"] = "many"; });
  CHECK_THROWS_WITH_AS(train(r, resume), doctest::Contains("train_state-00000002.safetensors: metadata 'optimizer_steps' is 'many'"),
                       Error);
  restore();
  edit_metadata(model, [](io::Metadata& m) { m["step"] = "2x"; });
  CHECK_THROWS_WITH_AS(train(r, resume), doctest::Contains("model-00000002.safetensors: metadata 'step' is '2x'"), Error);
  restore();
  edit_metadata(model, [](io::Metadata& m) { m["step"] = "1"; });
  CHECK_THROWS_WITH_AS(train(r, resume), doctest::Contains("are from different steps"), Error);
  fs::remove_all(dir);
}

TEST_CASE("a CIFAR-10 batch that is a folder or a link to a device is refused before it is read") {
  fs::path dir = temp_dir("untrusted_cifar_files");
  fs::create_directories(dir / "data_batch_1.bin");
  CHECK_THROWS_WITH_AS(data::read_cifar_file((dir / "data_batch_1.bin").string()),
                       doctest::Contains("data_batch_1.bin is a folder"), Error);
  CHECK_THROWS_WITH_AS(data::load_cifar10(dir.string(), 0), doctest::Contains("data_batch_1.bin is a folder"), Error);
  fs::remove_all(dir / "data_batch_1.bin");
  fs::create_symlink("/dev/zero", dir / "data_batch_1.bin");
  CHECK_THROWS_WITH_AS(data::read_cifar_file((dir / "data_batch_1.bin").string()),
                       doctest::Contains("data_batch_1.bin is not a regular file"), Error);
  // A link to a proper file is fine: links are resolved.
  std::ofstream(dir / "records.bin", std::ios::binary) << std::string(2 * data::kCifarRecordBytes, '\x03');
  fs::create_symlink(dir / "records.bin", dir / "link.bin");
  CHECK(data::read_cifar_file((dir / "link.bin").string()).size() == 2);
  fs::remove_all(dir);
}

TEST_CASE("model names with huge and malformed or silly numbers are refused with a clear message") {
  CHECK_THROWS_WITH_AS(nets::make_model("wrn-10-99999999999", Act::relu, 10, 0, Device::cpu),
                       doctest::Contains("widen factor"), Error);
  CHECK_THROWS_WITH_AS(nets::make_model("wrn-99999999999-1", Act::relu, 10, 0, Device::cpu),
                       doctest::Contains("depth"), Error);
  CHECK_THROWS_WITH_AS(nets::make_model("wrn-10-1000", Act::relu, 10, 0, Device::cpu),
                       doctest::Contains("widen factor"), Error);
  CHECK_THROWS_WITH_AS(nets::make_model("wrn-10-0", Act::relu, 10, 0, Device::cpu), doctest::Contains("widen factor"),
                       Error);
  CHECK_THROWS_WITH_AS(nets::make_model("wrn-11-1", Act::relu, 10, 0, Device::cpu), doctest::Contains("6n + 4"),
                       Error);
  CHECK_THROWS_WITH_AS(nets::make_model("wrn-4-1", Act::relu, 10, 0, Device::cpu), doctest::Contains("6n + 4"), Error);
  CHECK(nets::make_model("wrn-16-2", Act::relu, 10, 0, Device::cpu)->name() == "wrn-16-2");
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
