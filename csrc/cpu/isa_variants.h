// Compiles one kernel header twice: for the baseline instruction set and, where the compiler
// can (PLSTM_HAVE_AVX2, isa.h), for AVX2+FMA, each in its own namespace; the kernel file picks
// one at run time with use_avx2().
//
// Before including this file, define
//   PLSTM_ISA_HEADER  the kernel header, as a string ("scan_impl.h");
//   PLSTM_ISA_BASE / PLSTM_ISA_AVX2  the two namespace names.
// The kernel header sees PLSTM_ISA (its namespace), PLSTM_TARGET (the function attribute) and
// PLSTM_VEC_BYTES (the register width it may block for: 16 baseline, 32 AVX2).
// No include guard on purpose: every kernel file includes it once for its own header.
// NOLINT(build/header_guard)
#include "isa.h"

#define PLSTM_ISA PLSTM_ISA_BASE
#define PLSTM_TARGET
#define PLSTM_VEC_BYTES 16
#include PLSTM_ISA_HEADER  // NOLINT(build/include)
#undef PLSTM_ISA
#undef PLSTM_TARGET
#undef PLSTM_VEC_BYTES

#ifdef PLSTM_HAVE_AVX2
#define PLSTM_ISA PLSTM_ISA_AVX2
#define PLSTM_TARGET __attribute__((target("avx2,fma")))
#define PLSTM_VEC_BYTES 32
#include PLSTM_ISA_HEADER  // NOLINT(build/include)
#undef PLSTM_ISA
#undef PLSTM_TARGET
#undef PLSTM_VEC_BYTES
#endif

#undef PLSTM_ISA_HEADER
#undef PLSTM_ISA_BASE
#undef PLSTM_ISA_AVX2
