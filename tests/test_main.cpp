// doctest entry point. Run all: ./llr_tests ; one case: ./llr_tests -tc="conv2d*"
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
