#include "isa.h"

#include <cstdlib>
#include <string>

namespace plstm_graph {
namespace cpu {

bool use_avx2() {
#ifdef PLSTM_HAVE_AVX2
  static const bool yes = [] {
    const char* env = std::getenv("PLSTM_GRAPH_CPU_ISA");
    if (env != nullptr && std::string(env) == "base") return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace plstm_graph
