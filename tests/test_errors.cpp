// Bad input gets a clear exception naming the problem (and where it was detected).
#include "tests/test_util.h"

// Every case here is in the quick subset (ctest -L fast) unless it says test_suite("slow").
TEST_SUITE_BEGIN("fast");

namespace llr::test {
namespace {

TEST_CASE("mismatched shapes are refused") {
  Tensor a = Tensor::zeros({2, 3}, DType::f64);
  Tensor b = Tensor::zeros({3, 2}, DType::f64);
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("shape mismatch"), Error);
  CHECK_THROWS_WITH_AS(linear(a, Tensor::zeros({4, 2}, DType::f64)), doctest::Contains("inner sizes differ"), Error);
  Tensor x = Tensor::zeros({1, 5, 5, 3}, DType::f64, Layout::nhwc);
  Tensor w = Tensor::zeros({4, 3, 3, 2}, DType::f64, Layout::krsc);
  CHECK_THROWS_WITH_AS(conv2d(x, w), doctest::Contains("input has 3 channels"), Error);
  Tensor big = Tensor::zeros({4, 7, 7, 3}, DType::f64, Layout::krsc);
  CHECK_THROWS_WITH_AS(conv2d(x, big), doctest::Contains("does not fit"), Error);
  CHECK_THROWS_WITH_AS(batch_norm(x, Tensor::zeros({2}, DType::f64), Tensor::zeros({3}, DType::f64),
                                  Tensor::zeros({3}, DType::f64), Tensor::zeros({3}, DType::f64), 1e-5),
                       doctest::Contains("must have shape [3]"), Error);
  CHECK_THROWS_WITH_AS(Tensor::from_vector({1, 2, 3}, {2, 2}), doctest::Contains("3 values for shape [2,2]"), Error);
}

TEST_CASE("wrong dtypes are refused") {
  Tensor a = Tensor::zeros({2, 3}, DType::f64);
  Tensor b = Tensor::zeros({2, 3}, DType::f32);
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("dtype mismatch"), Error);
  CHECK_THROWS_WITH_AS(a.data<float>(), doctest::Contains("data<f32>() on a f64[2,3] cpu tensor"), Error);
  Tensor logits = Tensor::zeros({2, 4}, DType::f64);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::zeros({2}, DType::f32)), doctest::Contains("labels must be i32"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::from_labels({1, 4})),
                       doctest::Contains("label 4 of example 1 is outside [0, 4)"), Error);
  Tensor labels = Tensor::from_labels({1, 2});
  CHECK_THROWS_WITH_AS(Tensor(labels).requires_grad_(), doctest::Contains("only floating tensors"), Error);
}

TEST_CASE("wrong layouts are refused") {
  Tensor nchw = Tensor::zeros({1, 3, 5, 5}, DType::f64, Layout::nchw);
  Tensor w = Tensor::zeros({4, 3, 3, 3}, DType::f64, Layout::krsc);
  CHECK_THROWS_WITH_AS(conv2d(nchw, w), doctest::Contains("input must be NHWC, got f64[1,3,5,5] NCHW"), Error);
  Tensor x = Tensor::zeros({1, 5, 5, 3}, DType::f64, Layout::nhwc);
  Tensor kcrs = Tensor::zeros({4, 3, 3, 3}, DType::f64, Layout::kcrs);
  CHECK_THROWS_WITH_AS(conv2d(x, kcrs), doctest::Contains("filter must be KRSC"), Error);
  CHECK_THROWS_WITH_AS(global_avg_pool(Tensor::zeros({1, 5, 5, 3}, DType::f64)), doctest::Contains("must be NHWC"),
                       Error);
  CHECK_THROWS_WITH_AS(add(x, Tensor::zeros({1, 5, 5, 3}, DType::f64, Layout::nchw)),
                       doctest::Contains("layout mismatch"), Error);
  CHECK_THROWS_WITH_AS(Tensor::zeros({3, 3}, DType::f64, Layout::nhwc), doctest::Contains("needs a rank-4 shape"),
                       Error);
}

TEST_CASE("a backward through a freed graph is refused") {
  Tape::current().clear();
  Tensor x = Tensor::from_vector({0.5, -1.0}, {2}, DType::f64).requires_grad_();
  Tensor s = sum(softplus(x));
  grad({s}, {Tensor::scalar(1.0, DType::f64)}, {x});
  CHECK_THROWS_WITH_AS(grad({s}, {Tensor::scalar(1.0, DType::f64)}, {x}),
                       doctest::Contains("backward through a freed graph"), Error);
  Tape::current().clear();
}

TEST_CASE("error messages say where the check failed") {
  try {
    add(Tensor::zeros({2}, DType::f64), Tensor::zeros({3}, DType::f64));
    FAIL("no exception");
  } catch (const Error& e) {
    std::string what = e.what();
    CHECK(what.find("shape mismatch") != std::string::npos);
    CHECK(what.find("failed at backend_checks.cpp:") != std::string::npos);
  }
}

TEST_CASE("undefined tensors and bad cotangents are refused") {
  Tensor none;
  CHECK_THROWS_WITH_AS(none.shape(), doctest::Contains("undefined tensor"), Error);
  Tape::current().clear();
  Tensor x = Tensor::from_vector({0.5, -1.0}, {2}, DType::f64).requires_grad_();
  Tensor y = softplus(x);
  CHECK_THROWS_WITH_AS(grad({y}, {Tensor::scalar(1.0, DType::f64)}, {x}), doctest::Contains("does not match output"),
                       Error);
  Tape::current().clear();
}

}  // namespace
}  // namespace llr::test

TEST_SUITE_END();
