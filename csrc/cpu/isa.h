// Run-time choice of the CPU kernels' instruction set, shared by the scan and the closed form.
#pragma once

namespace plstm_graph {
namespace cpu {

// True when the CPU has AVX2 and FMA and PLSTM_GRAPH_CPU_ISA is not "base" (which forces the
// baseline kernels, e.g. to compare the two). Always false where the AVX2 variants are not
// compiled (non-x86 or non-GCC/Clang builds).
bool use_avx2();

}  // namespace cpu
}  // namespace plstm_graph

// Whether this compiler builds the AVX2+FMA variants (GCC/Clang target attributes on x86).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PLSTM_HAVE_AVX2 1
#endif
