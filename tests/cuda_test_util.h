// Helpers of the CUDA tests (test_cuda_ops.cpp, test_cuda_large.cpp): the skip when no GPU is present, moving f64
// reference values to the GPU in a dtype and back, the GPU-vs-CPU comparison that names the worst element by its
// multi-index, and the op-table runner (forward, vjp and jvp of one OpCase on the GPU against the CPU in f64).
//
// The CUDA test cases live in two doctest suites, so one filter selects them: "cuda" (small, also run under
// compute-sanitizer) and "cuda-large" (real WRN sizes); `llr_tests -ts='cuda*'` runs both and nothing else.
#pragma once

#include <string>
#include <vector>

#include "tests/op_cases.h"
#include "tests/test_util.h"

namespace llr::test {

// True when a GPU is usable (and sets up the CUDA backend with NaN-poisoned allocations); otherwise prints
// "SKIPPED <what>: <why>" and returns false.
bool gpu_ready(const char* what);

double round_to_bf16(double v);
// The f64 values a tensor of dtype d holds after rounding t (f64) to d.
Tensor rounded(const Tensor& t, DType d);
// t (f64 on the CPU) on the GPU in dtype d (through f32, so the values are those of rounded(t, d)).
Tensor upload(const Tensor& t, DType d);
// Any tensor as f64 on the CPU.
Tensor host_f64(const Tensor& t);

struct Mode {
  const char* name;
  DType data;
  bool tf32;
  double tol;  // rtol, and atol = tol * max|reference|
};

// Per-channel and per-example vectors (rank <= 1) stay in the statistics dtype.
DType input_dtype(const Tensor& t, DType data);

// "[n,h,w,c]" of a flat index.
std::string index_str(const Shape& shape, int64_t flat);

// max|got - ref| <= tol max|ref| + tol |ref| elementwise; on failure names the worst element, its multi-index and
// both values. Returns whether it passed (and CHECKs it).
bool check_close(const char* what, const std::string& name, const Mode& m, const Tensor& got, const Tensor& ref);

// ||a - b|| / ||b|| over all elements of both lists (tensors on any device, any floating dtype).
double relative_l2(const std::vector<Tensor>& a, const std::vector<Tensor>& b);

// One op of the table on the GPU in mode m against the CPU in f64 on the same rounded inputs: forward, vjp (random
// cotangent) and, unless it is a tangent op, jvp (random tangents). Prints "cuda vs cpu <mode> <name> ok|MISMATCH".
void run_case(const OpCase& c, const Mode& m, int& failures);

}  // namespace llr::test
