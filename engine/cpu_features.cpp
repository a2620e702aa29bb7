// Refuses to run, with one clear line, on a CPU without the instructions the build targets (LLR_CPU_ARCH, by default
// x86-64-v3: AVX2 and FMA), instead of dying of an illegal instruction somewhere. Compiled for the baseline x86-64 and
// run before any other static initialiser, so the check itself cannot use what it checks for.
#include <cstdio>
#include <unistd.h>

#if defined(__x86_64__) && defined(LLR_CPU_NEEDS_AVX2)
namespace {

__attribute__((constructor(101))) void llr_check_cpu_features() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::fputs("error: this build of llrtrain needs a CPU with AVX2 and FMA (x86-64-v3); rebuild with "
               "-DLLR_CPU_ARCH=native (or \"\" for the compiler's default) for this one\n",
               stderr);
    _exit(1);
  }
}

}  // namespace
#endif
