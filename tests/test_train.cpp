// Data, augmentation, checkpoints, resumption and a short real training run.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <cstring>

#include "train/augment_math.h"
#include "engine/backend.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/data.h"
#include "train/trainer.h"
#include "nets/model.h"
#include "train/optimizer.h"
#include "train/training_kernels.h"
#include "tests/cifar_fixture.h"
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

namespace fs = std::filesystem;

// On --resume, what a run trains stays; how it is computed (the device, graphs, the memory options) may change.
TEST_CASE("resume may change the length and device and graphs and memory options but not what is trained") {
  for (const char* name : {"epochs", "steps", "time_budget", "log_every", "device", "cuda_graphs",
                           "llr_recompute_nominal", "llr_tangent_segments", "gradalign_tangent_segments"})
    CHECK_MESSAGE(resume_may_change(name), name);
  for (const char* name : {"model", "method", "batch", "lr", "eps", "llr_steps", "lambda", "seed", "precision"})
    CHECK_MESSAGE(!resume_may_change(name), name);
}

// PyTorch's SGD rule, written out in f64 per value: two steps (the first sets the momentum to the gradient), weight
// decay on convolution and linear weights only, with and without Nesterov; and the count of non-finite updates.
TEST_CASE("SGD updates every parameter by PyTorch's rule and counts non-finite results") {
  for (bool nesterov : {false, true}) {
    INFO("nesterov ", nesterov);
    auto model = nets::make_model("wrn-10-1", Act::relu, 10, 3, Device::cpu, DType::f64);
    const double lr = 0.05, mo = 0.9, wd = 5e-4;
    Sgd sgd(*model, {mo, nesterov, wd});
    std::vector<Tensor> params = model->parameters();
    std::vector<bool> decays;
    for (const nets::NamedTensor& e : model->registry().entries())
      if (e.kind != nets::TensorKind::buffer) decays.push_back(e.kind == nets::TensorKind::weight);
    REQUIRE(decays.size() == params.size());
    std::vector<std::vector<double>> p, m(params.size());
    for (const Tensor& t : params) p.push_back(t.to_vector());
    Generator gen(4);
    for (int step = 0; step < 2; ++step) {
      std::vector<Tensor> grads;
      for (const Tensor& t : params) grads.push_back(gen.normal(t.shape(), 0, 1, DType::f64, t.layout()));
      sgd.step(grads, lr);
      double worst = 0;
      for (size_t k = 0; k < params.size(); ++k) {
        std::vector<double> g = grads[k].to_vector(), got = params[k].to_vector();
        m[k].resize(g.size());
        for (size_t i = 0; i < g.size(); ++i) {
          double gi = g[i] + (decays[k] ? wd : 0.0) * p[k][i];
          m[k][i] = step == 0 ? gi : mo * m[k][i] + gi;
          p[k][i] -= lr * (nesterov ? gi + mo * m[k][i] : m[k][i]);
          worst = std::max(worst, std::fabs(got[i] - p[k][i]) / (1e-300 + std::fabs(p[k][i]) + 1e-12));
        }
      }
      CHECK(worst < 1e-14);
    }
    CHECK(sgd.nonfinite_updates().item() == 0);
    std::vector<Tensor> grads;
    for (const Tensor& t : params) grads.push_back(Tensor::zeros(t.shape(), DType::f64, t.layout(), Device::cpu));
    grads[1].set(0, NAN);
    grads.back().set(0, INFINITY);
    sgd.step(grads, lr);
    CHECK(sgd.nonfinite_updates().item() == 2);
  }
}

// The weights' compute copies written by the update itself: each equal to a cast of the updated value; a parameter
// without a copy updated all the same; copies that are not a narrower tensor of the parameter's shape, or of two
// dtypes, refused before anything is written.
TEST_CASE("SGD writes the parameters' narrower copies as a cast rounds them and refuses copies that do not fit") {
  Generator gen(8);
  std::vector<Tensor> params, grads, buffers, copies;
  for (int64_t n : {5, 70000, 3}) {
    params.push_back(gen.normal({n}, 0, 1, DType::f64));
    grads.push_back(gen.normal({n}, 0, 1, DType::f64));
    buffers.push_back(Tensor::zeros({n}, DType::f64));
    copies.push_back(n == 3 ? Tensor() : Tensor::zeros({n}, DType::f32));
  }
  std::vector<double> wd{5e-4, 0.0, 5e-4};
  Tensor bad = Tensor::zeros({}, DType::f64);
  std::vector<Tensor> before;
  for (const Tensor& p : params) before.push_back(p.clone());
  training::sgd_update(params, grads, buffers, copies, wd, 0.1, 0.9, false, true, bad);
  for (size_t k = 0; k < params.size(); ++k) {
    INFO(k);
    CHECK(compare(params[k], before[k], 0, 0).max_violation > 0);
    if (copies[k].defined()) CHECK(compare(copies[k], params[k].to(DType::f32), 0, 0).max_violation == 0);
  }
  auto refused = [&](Tensor copy, const char* why) {
    INFO(why);
    std::vector<Tensor> c = copies;
    c[1] = copy;
    Tensor p1 = params[1].clone();
    CHECK_THROWS_WITH_AS(training::sgd_update(params, grads, buffers, c, wd, 0.1, 0.9, false, false, bad),
                         doctest::Contains("must be a narrower floating tensor"), Error);
    CHECK(compare(params[1], p1, 0, 0).max_violation == 0);
  };
  refused(Tensor::zeros({70000}, DType::f64), "not narrower");
  refused(Tensor::zeros({7}, DType::f32), "another shape");
  refused(Tensor::zeros({70000}, DType::i32), "not floating");
  refused(params[1].detach(), "the parameter itself");
  // A bf16 copy is narrower, but the CPU has no bf16 arithmetic: refused before the first parameter is written.
  std::vector<Tensor> c{Tensor(), Tensor::empty({70000}, DType::bf16), Tensor()};
  Tensor p0 = params[0].clone();
  CHECK_THROWS_WITH_AS(training::sgd_update(params, grads, buffers, c, wd, 0.1, 0.9, false, false, bad),
                       doctest::Contains("f32 copies only"), Error);
  CHECK(compare(params[0], p0, 0, 0).max_violation == 0);
  std::vector<Tensor> short_list(2);
  CHECK_THROWS_WITH_AS(training::sgd_update(params, grads, buffers, short_list, wd, 0.1, 0.9, false, false, bad),
                       doctest::Contains("2 copies"), Error);
}

// CIFAR records: label, then R, G, B planes; pixel value = (record * 7 + plane * 3 + position) mod 256.
std::string cifar_bytes(int records, int bad_label_at = -1) {
  std::string s;
  for (int i = 0; i < records; ++i) {
    s.push_back(static_cast<char>(i == bad_label_at ? 12 : i % 10));
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) s.push_back(static_cast<char>((i * 7 + c * 3 + p) % 256));
  }
  return s;
}

void write(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }

TEST_CASE("the CIFAR-10 reader converts planar records to NHWC and keeps labels") {
  fs::path dir = temp_dir("cifar_ok");
  write(dir / "data_batch_1.bin", cifar_bytes(3));
  data::Dataset d = data::read_cifar_file((dir / "data_batch_1.bin").string());
  REQUIRE(d.size() == 3);
  CHECK(d.images.shape() == Shape{3, 32, 32, 3});
  CHECK(d.images.layout() == Layout::nhwc);
  CHECK(d.labels.to_vector() == std::vector<double>{0, 1, 2});
  // record 2, row 5, column 9, green: position 5*32+9 in plane 1.
  CHECK(d.images.at(((2 * 32 + 5) * 32 + 9) * 3 + 1) == (2 * 7 + 1 * 3 + 5 * 32 + 9) % 256);
  fs::remove_all(dir);
}

TEST_CASE("the CIFAR-10 reader rejects truncated files and bad labels and missing folders naming file and offset") {
  fs::path dir = temp_dir("cifar_bad");
  std::string good = cifar_bytes(2);
  write(dir / "truncated.bin", good + good.substr(0, 100));
  CHECK_THROWS_WITH_AS(data::read_cifar_file((dir / "truncated.bin").string()),
                       doctest::Contains("truncated.bin is truncated or not CIFAR-10"), Error);
  write(dir / "label.bin", cifar_bytes(3, 1));
  CHECK_THROWS_WITH_AS(data::read_cifar_file((dir / "label.bin").string()),
                       doctest::Contains("label 12 at byte offset 3073 (record 1) is not in 0..9"), Error);
  write(dir / "empty.bin", "");
  CHECK_THROWS_WITH_AS(data::read_cifar_file((dir / "empty.bin").string()), doctest::Contains("is empty"), Error);
  CHECK_THROWS_WITH_AS(data::load_cifar10((dir / "nowhere").string(), 0), doctest::Contains("does not exist"), Error);
  for (int k : {1, 2, 4, 5}) write(dir / ("data_batch_" + std::to_string(k) + ".bin"), good);
  CHECK_THROWS_WITH_AS(data::load_cifar10(dir.string(), 0), doctest::Contains("lacks data_batch_3.bin"), Error);
  write(dir / "data_batch_3.bin", good);
  data::Splits s = data::load_cifar10(dir.string(), 4);
  CHECK(s.train.size() == 6);
  CHECK(s.val.size() == 4);
  CHECK(s.test.empty());
  CHECK_THROWS_WITH_AS(data::load_cifar10(dir.string(), 10), doctest::Contains("--holdout 10"), Error);
  fs::remove_all(dir);
}

TEST_CASE("augmentation keeps labels and stays in [0 1] and crops and flips the reflect-padded image") {
  data::Dataset d = data::synthetic(12, 5);
  std::vector<int32_t> order = data::epoch_order(d.size(), 1, 0);
  data::Batch plain = data::make_batch(d, order, 2, 6, false, 9, 3, DType::f32);
  data::Batch aug = data::make_batch(d, order, 2, 6, true, 9, 3, DType::f32);
  data::Batch again = data::make_batch(d, order, 2, 6, true, 9, 3, DType::f32);
  data::Batch other = data::make_batch(d, order, 2, 6, true, 9, 4, DType::f32);
  CHECK(aug.images.to_vector() == again.images.to_vector());   // same (seed, step): same batch
  CHECK(aug.images.to_vector() != other.images.to_vector());   // next step: new crops
  bool any_flip = false, any_shift = false;
  for (int64_t b = 0; b < 6; ++b) {
    int32_t src = order[2 + b];
    CHECK(aug.labels.at(b) == d.labels.at(src));
    CHECK(plain.labels.at(b) == d.labels.at(src));
    augment::Params p = augment::params(9, 3, b);
    any_flip = any_flip || p.flip;
    any_shift = any_shift || p.dy != augment::kPad || p.dx != augment::kPad;
    for (int y = 0; y < 32; ++y)
      for (int x = 0; x < 32; ++x)
        for (int c = 0; c < 3; ++c) {
          int row, col;
          augment::source(p, y, x, 32, 32, &row, &col);
          REQUIRE(row >= 0);
          REQUIRE(row < 32);
          REQUIRE(col >= 0);
          REQUIRE(col < 32);
          double v = aug.images.at(((b * 32 + y) * 32 + x) * 3 + c);
          CHECK(v == static_cast<float>(d.images.at(((src * 32 + row) * 32 + col) * 3 + c) / 255.0f));
          double u = plain.images.at(((b * 32 + y) * 32 + x) * 3 + c);
          CHECK(u == static_cast<float>(d.images.at(((src * 32 + y) * 32 + x) * 3 + c) / 255.0f));
          CHECK(v >= 0.0);
          CHECK(v <= 1.0);
        }
  }
  CHECK(any_flip);
  CHECK(any_shift);
  CHECK(augment::reflect(-1, 32) == 1);
  CHECK(augment::reflect(32, 32) == 30);
}

TEST_CASE("a checkpoint round trip is bit-exact and truncated or corrupt checkpoints are refused") {
  fs::path dir = temp_dir("ckpt");
  auto a = nets::make_model("wrn-10-1", Act::softplus, 10, 1, Device::cpu);
  auto b = nets::make_model("wrn-10-1", Act::softplus, 10, 2, Device::cpu);
  *a->registry().counters()[3].second = 17;
  std::string path = (dir / "model.safetensors").string();
  ckpt::save_model(path, *a, {{"step", "5"}});
  CHECK_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));
  ckpt::ModelInfo info = ckpt::read_model_info(path);
  CHECK(info.model == "wrn-10-1");
  CHECK(info.act == Act::softplus);
  ckpt::load_model(path, *b);
  const auto& ea = a->registry().entries();
  const auto& eb = b->registry().entries();
  REQUIRE(ea.size() == eb.size());
  for (size_t i = 0; i < ea.size(); ++i) {
    INFO(ea[i].name);
    CHECK(std::memcmp(ea[i].tensor.raw_data(), eb[i].tensor.raw_data(), ea[i].tensor.numel() * 4) == 0);
  }
  CHECK(*b->registry().counters()[3].second == 17);

  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write(dir / "cut.safetensors", bytes.substr(0, bytes.size() - 1000));
  CHECK_THROWS_WITH_AS(ckpt::load_model((dir / "cut.safetensors").string(), *b), doctest::Contains("truncated"), Error);
  write(dir / "tiny.safetensors", bytes.substr(0, 5));
  CHECK_THROWS_WITH_AS(ckpt::load_model((dir / "tiny.safetensors").string(), *b), doctest::Contains("truncated"),
                       Error);
  std::string corrupt = bytes;
  corrupt[10] = '#';
  write(dir / "corrupt.safetensors", corrupt);
  CHECK_THROWS_WITH_AS(ckpt::load_model((dir / "corrupt.safetensors").string(), *b), doctest::Contains("corrupt"),
                       Error);
  auto other = nets::make_model("wrn-16-1", Act::softplus, 10, 2, Device::cpu);
  CHECK_THROWS_AS(ckpt::load_model(path, *other), Error);
  fs::remove_all(dir);
}

std::vector<std::string> lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

TEST_CASE("an interrupted run resumed from its checkpoint ends exactly where an uninterrupted run does" * doctest::test_suite("slow")) {
  fs::path dir = temp_dir("resume");
  TrainConfig c;
  c.data.data = "synthetic";
  c.data.synthetic_train = 128;
  c.data.synthetic_val = 32;
  c.model = "wrn-10-1";
  c.batch = 32;
  c.epochs = 3;  // 4 steps per epoch
  c.lr = 0.05;
  c.schedule = "piecewise";
  c.decay_at = {0.5};
  c.device = "cpu";
  c.log_every = 1;
  c.seed = 3;
  c.out = (dir / "full").string();
  TrainSummary full = train(c);
  CHECK(full.steps == 12);

  c.out = (dir / "split").string();
  TrainOptions stop;
  stop.stop_after = 6;  // mid-epoch
  TrainSummary first = train(c, stop);
  CHECK(first.interrupted);
  CHECK(first.steps == 6);
  TrainOptions resume;
  resume.resume = c.out;
  TrainSummary second = train(TrainConfig(), resume);
  CHECK(second.steps == 12);

  // Same weights, bit for bit.
  io::SafetensorsFile a = io::read_safetensors((dir / "full" / "model.safetensors").string());
  io::SafetensorsFile b = io::read_safetensors((dir / "split" / "model.safetensors").string());
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    INFO(name);
    CHECK(t.bytes == b.tensors.at(name).bytes);
  }
  // The same training metrics lines (step, loss, learning rate), apart from timings.
  auto strip = [](std::vector<std::string> ls) {
    std::vector<std::string> out;
    for (std::string& l : ls) {
      if (l.find("\"split\":\"train\"") == std::string::npos) continue;
      size_t t = l.find("\"elapsed_s\"");
      size_t i = l.find("\"images_per_s\"");
      out.push_back(l.substr(0, std::min(t, i)) + l.substr(l.find("\"loss\"")));
    }
    return out;
  };
  std::vector<std::string> la = strip(lines(dir / "full" / "metrics.jsonl"));
  std::vector<std::string> lb = strip(lines(dir / "split" / "metrics.jsonl"));
  CHECK(la.size() == 12);
  CHECK(la == lb);
  fs::remove_all(dir);
}

TEST_CASE("a loss that becomes NaN stops training with a clear error and leaves the last checkpoint intact" * doctest::test_suite("slow")) {
  fs::path dir = temp_dir("nan");
  TrainConfig c;
  c.data.data = "synthetic";
  c.data.synthetic_train = 128;
  c.data.synthetic_val = 32;
  c.model = "wrn-10-1";
  c.batch = 32;
  c.epochs = 2;  // 4 steps per epoch
  c.lr = 0.05;
  c.schedule = "piecewise";
  c.decay_at = {0.5};
  c.decay_factor = 1e30;  // the second epoch's learning rate is absurd
  c.device = "cpu";
  c.log_every = 2;
  c.out = (dir / "run").string();
  CHECK_THROWS_WITH_AS(train(c), doctest::Contains("training diverged"), Error);
  io::SafetensorsFile f = io::read_safetensors((dir / "run" / "model.safetensors").string());
  CHECK(f.metadata.at("step") == "4");  // the end of the first epoch, before the blow-up
  auto m = nets::make_model("wrn-10-1", Act::relu, 10, 0, Device::cpu);
  ckpt::load_model((dir / "run" / "model.safetensors").string(), *m);
  for (const auto& e : m->registry().entries())
    for (int64_t i = 0; i < e.tensor.numel(); ++i) REQUIRE(std::isfinite(e.tensor.at(i)));
  fs::remove_all(dir);
}

// Real CIFAR-10 images from ../shared (skipped when absent): 3,000 records, 2,000 for training, 1,000 held out.
TEST_CASE("CPU training of a small WRN on 2000 real CIFAR-10 images beats chance on 1000 held-out ones" * doctest::test_suite("slow")) {
  fs::path dir = cifar_subset("natural_training", 600);
  if (dir.empty()) {
    MESSAGE("skipped: no CIFAR-10 data");
    return;
  }
  TrainConfig c;
  c.data.data = dir.string();
  c.data.holdout = 1000;
  c.model = "wrn-10-1";
  c.batch = 50;
  c.epochs = 5;
  c.lr = 0.05;
  c.schedule = "cosine";
  c.device = "cpu";
  c.seed = 1;
  c.out = (dir / "run").string();
  TrainSummary s = train(c);
  std::printf("real CIFAR-10, wrn-10-1, 2000 train / 1000 held out, 5 epochs on the CPU: held-out accuracy %.3f\n",
              s.final_eval.accuracy);
  CHECK(s.eval_split == "val");
  CHECK(s.final_eval.n == 1000);
  CHECK(s.final_eval.accuracy > 0.2);  // chance is 0.1; a 1,000-image estimate has a standard error near 0.01
  fs::remove_all(dir);
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
