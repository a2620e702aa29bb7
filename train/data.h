// Data sets: the CIFAR-10 binary format, a procedural synthetic set (the no-download default), splits, and batches
// gathered (and augmented) on the data set's device.
#pragma once

#include <string>
#include <vector>

#include "engine/rng.h"
#include "engine/tensor.h"

namespace llr::data {

struct Dataset {
  std::string name;
  Tensor images;  // u8 [N, H, W, 3] NHWC, pixels as stored
  Tensor labels;  // i32 [N]
  int64_t size() const { return labels.defined() ? labels.numel() : 0; }
  bool empty() const { return size() == 0; }
};

constexpr int64_t kCifarRecordBytes = 1 + 3 * 32 * 32;
constexpr int kCifarClasses = 10;

// One file of CIFAR-10 binary records (label byte, then the red, green and blue 32x32 planes). Throws naming the
// file and byte offset of the first problem: missing file, a folder or device rather than a regular file, size not a
// multiple of the record (checked before reading), a label outside 0..9.
Dataset read_cifar_file(const std::string& path);

struct Splits {
  Dataset train;
  Dataset val;   // the last `holdout` training images, when holdout > 0
  Dataset test;  // test_batch.bin, when present
};

// A folder as cifar-10-binary.tar.gz unpacks to: data_batch_1.bin ... data_batch_5.bin (all required) and, when
// present, test_batch.bin.
Splits load_cifar10(const std::string& dir, int64_t holdout);

// n procedural 32x32 RGB images of 10 classes (oriented colour gratings with random phase, position and noise),
// reproducible from the seed.
Dataset synthetic(int64_t n, uint64_t seed);
Splits synthetic_splits(int64_t n_train, int64_t n_val, uint64_t seed);

Dataset slice(const Dataset& d, int64_t begin, int64_t count);
Dataset to_device(const Dataset& d, Device device);

// A fresh seeded permutation of [0, n) for one epoch.
std::vector<int32_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch);

struct Batch {
  Tensor images;  // [B, H, W, 3] NHWC floats in [0, 1]
  Tensor labels;  // i32 [B]
};

// An order as an i32 tensor on the data set's device (upload an epoch's permutation once, not every batch).
Tensor order_on_device(const Dataset& d, const std::vector<int32_t>& order);

// The examples order[begin .. begin+count) gathered on the data set's device; augmented (reflect-pad 4, random crop,
// random flip, drawn from (seed, step)) when `augment`. No host synchronisation with a device-resident order.
Batch make_batch(const Dataset& d, const Tensor& order, int64_t begin, int64_t count, bool augment, uint64_t seed,
                 uint64_t step, DType dtype);
Batch make_batch(const Dataset& d, const std::vector<int32_t>& order, int64_t begin, int64_t count, bool augment,
                 uint64_t seed, uint64_t step, DType dtype);

}  // namespace llr::data
