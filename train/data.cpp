#include "train/data.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "engine/backend.h"
#include "train/safetensors.h"
#include "train/training_kernels.h"

namespace llr::data {

namespace fs = std::filesystem;

Dataset read_cifar_file(const std::string& path) {
  const uint64_t size = io::regular_file_size(path, "CIFAR-10 file");
  LLR_CHECK(size > 0, "CIFAR-10 file ", path, " is empty");
  LLR_CHECK(size % kCifarRecordBytes == 0, "CIFAR-10 file ", path, " is truncated or not CIFAR-10: ", size,
            " bytes is not a whole number of ", kCifarRecordBytes, "-byte records (the last record starts at byte ",
            size / kCifarRecordBytes * kCifarRecordBytes, ")");
  const std::string file = io::read_file(path, "CIFAR-10 file");
  LLR_CHECK(file.size() == size, "CIFAR-10 file ", path, " changed size while it was read");
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(file.data());
  int64_t n = static_cast<int64_t>(size / kCifarRecordBytes);
  Dataset d;
  d.name = fs::path(path).filename().string();
  d.images = Tensor::empty({n, 32, 32, 3}, DType::u8, Layout::nhwc);
  d.labels = Tensor::empty({n}, DType::i32);
  uint8_t* img = d.images.data<uint8_t>();
  int32_t* lab = d.labels.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* rec = bytes + i * kCifarRecordBytes;
    LLR_CHECK(rec[0] < kCifarClasses, "CIFAR-10 file ", path, ": label ", int(rec[0]), " at byte offset ",
              i * kCifarRecordBytes, " (record ", i, ") is not in 0..9");
    lab[i] = rec[0];
    // Planar RGB to interleaved NHWC.
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) img[(i * 1024 + p) * 3 + c] = rec[1 + c * 1024 + p];
  }
  return d;
}

namespace {
Dataset concat(const std::vector<Dataset>& parts, const std::string& name) {
  int64_t n = 0;
  for (const Dataset& p : parts) n += p.size();
  Dataset d;
  d.name = name;
  d.images = Tensor::empty({n, 32, 32, 3}, DType::u8, Layout::nhwc);
  d.labels = Tensor::empty({n}, DType::i32);
  int64_t at = 0;
  for (const Dataset& p : parts) {
    std::memcpy(d.images.data<uint8_t>() + at * 3072, p.images.data<uint8_t>(), p.size() * 3072);
    std::memcpy(d.labels.data<int32_t>() + at, p.labels.data<int32_t>(), p.size() * sizeof(int32_t));
    at += p.size();
  }
  return d;
}
}  // namespace

Dataset slice(const Dataset& d, int64_t begin, int64_t count) {
  LLR_CHECK(begin >= 0 && count >= 0 && begin + count <= d.size(), "slice [", begin, ", ", begin + count,
            ") of a data set of ", d.size());
  LLR_CHECK(d.images.device() == Device::cpu, "slice: data set must be on the CPU");
  Dataset s;
  s.name = d.name;
  int64_t per = d.images.numel() / std::max<int64_t>(d.size(), 1);
  s.images = Tensor::empty({count, d.images.dim(1), d.images.dim(2), d.images.dim(3)}, DType::u8, Layout::nhwc);
  s.labels = Tensor::empty({count}, DType::i32);
  std::memcpy(s.images.raw_data(), d.images.data<uint8_t>() + begin * per, count * per);
  std::memcpy(s.labels.raw_data(), d.labels.data<int32_t>() + begin, count * sizeof(int32_t));
  return s;
}

Splits load_cifar10(const std::string& dir, int64_t holdout) {
  LLR_CHECK(fs::is_directory(dir), "CIFAR-10 folder ", dir, " does not exist (expected data_batch_1.bin ... "
            "data_batch_5.bin from cifar-10-binary.tar.gz)");
  std::vector<Dataset> parts;
  for (int k = 1; k <= 5; ++k) {
    std::string f = (fs::path(dir) / ("data_batch_" + std::to_string(k) + ".bin")).string();
    LLR_CHECK(fs::exists(f), "CIFAR-10 folder ", dir, " lacks ", fs::path(f).filename().string());
    parts.push_back(read_cifar_file(f));
  }
  Dataset all = concat(parts, "cifar10-train");
  LLR_CHECK(holdout >= 0 && holdout < all.size(), "--holdout ", holdout, " must be in [0, ", all.size(), ")");
  Splits s;
  s.train = slice(all, 0, all.size() - holdout);
  s.train.name = "cifar10-train";
  if (holdout > 0) {
    s.val = slice(all, all.size() - holdout, holdout);
    s.val.name = "cifar10-holdout";
  }
  std::string test = (fs::path(dir) / "test_batch.bin").string();
  if (fs::exists(test)) {
    s.test = read_cifar_file(test);
    s.test.name = "cifar10-test";
  }
  return s;
}

Dataset synthetic(int64_t n, uint64_t seed) {
  LLR_CHECK(n > 0, "synthetic data set needs a positive size, got ", n);
  Generator gen(seed);
  Dataset d;
  d.name = "synthetic";
  d.images = Tensor::empty({n, 32, 32, 3}, DType::u8, Layout::nhwc);
  d.labels = Tensor::empty({n}, DType::i32);
  uint8_t* img = d.images.data<uint8_t>();
  const double pi = 3.14159265358979323846;
  for (int64_t i = 0; i < n; ++i) {
    int cls = static_cast<int>(gen.next_int(kCifarClasses));
    d.labels.data<int32_t>()[i] = cls;
    // Class = orientation of a grating (5 angles) x colour scheme (2); phase, frequency jitter, a bright blob at a
    // random place and pixel noise vary per image.
    double angle = (cls % 5) * pi / 5 + 0.15 * (gen.next_uniform() - 0.5);
    double freq = 2.5 + 1.5 * gen.next_uniform();
    double phase = 2 * pi * gen.next_uniform();
    double bx = 32 * gen.next_uniform(), by = 32 * gen.next_uniform();
    double tint[3] = {cls < 5 ? 1.0 : 0.35, 0.6, cls < 5 ? 0.35 : 1.0};
    for (int y = 0; y < 32; ++y)
      for (int x = 0; x < 32; ++x) {
        double u = (x * std::cos(angle) + y * std::sin(angle)) / 32.0;
        double wave = std::sin(2 * pi * freq * u + phase);
        double blob = std::exp(-((x - bx) * (x - bx) + (y - by) * (y - by)) / 30.0);
        for (int c = 0; c < 3; ++c) {
          double v = 128 + 70 * tint[c] * wave + 60 * blob + 18 * gen.next_normal();
          img[((i * 32 + y) * 32 + x) * 3 + c] = static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
        }
      }
  }
  return d;
}

Splits synthetic_splits(int64_t n_train, int64_t n_val, uint64_t seed) {
  Splits s;
  s.train = synthetic(n_train, seed);
  s.train.name = "synthetic-train";
  if (n_val > 0) {
    s.val = synthetic(n_val, seed + 1000003);
    s.val.name = "synthetic-val";
  }
  return s;
}

Dataset to_device(const Dataset& d, Device device) {
  Dataset out = d;
  if (d.empty()) return out;
  out.images = d.images.to(device);
  out.labels = d.labels.to(device);
  return out;
}

std::vector<int32_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  Generator gen(rng_math::mix64(seed ^ 0x5EED0000ull) + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[gen.next_int(i + 1)]);
  return order;
}

Tensor order_on_device(const Dataset& d, const std::vector<int32_t>& order) {
  Tensor t = Tensor::from_labels(order);
  return d.images.device() == Device::cpu ? t : t.to(d.images.device());
}

Batch make_batch(const Dataset& d, const Tensor& order, int64_t begin, int64_t count, bool augment, uint64_t seed,
                 uint64_t step, DType dtype) {
  LLR_CHECK(begin >= 0 && count > 0 && begin + count <= order.numel(), "batch [", begin, ", ", begin + count,
            ") outside an order of ", order.numel());
  return {training::gather_images(d.images, order, begin, count, augment, seed, step, dtype),
          training::gather_labels(d.labels, order, begin, count)};
}

Batch make_batch(const Dataset& d, const std::vector<int32_t>& order, int64_t begin, int64_t count, bool augment,
                 uint64_t seed, uint64_t step, DType dtype) {
  return make_batch(d, order_on_device(d, order), begin, count, augment, seed, step, dtype);
}

}  // namespace llr::data
