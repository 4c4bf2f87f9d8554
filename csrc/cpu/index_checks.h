// Structural checks of schedule indices shared by the CPU kernels: every index a kernel reads
// is checked before any memory access.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

namespace plstm_graph {
namespace cpu {

// A CSR (ptr[rows + 1], member[count]) that must list every member id in [0, count) exactly
// once; `fits(row, member)` checks each entry against the rest of the schedule.
template <typename Fits>
void check_csr(const char* ptr_name, const char* member_name, const int64_t* ptr,
               const int64_t* member, int64_t rows, int64_t count, const Fits& fits) {
  TORCH_CHECK_VALUE(ptr[0] == 0, ptr_name, " must start at 0, got ", ptr[0]);
  TORCH_CHECK_VALUE(ptr[rows] == count, ptr_name, " must end at ", count, ", got ", ptr[rows]);
  std::vector<uint8_t> seen(static_cast<size_t>(count), 0);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(ptr[r] <= ptr[r + 1], ptr_name, " must be non-decreasing (", ptr[r],
                      " > ", ptr[r + 1], " at row ", r, ")");
    for (int64_t j = ptr[r]; j < ptr[r + 1]; ++j) {
      const int64_t x = member[j];
      TORCH_CHECK_VALUE(x >= 0 && x < count, member_name, "[", j, "] = ", x,
                        " is out of range [0, ", count, ")");
      TORCH_CHECK_VALUE(!seen[x], member_name, " lists ", x, " twice");
      seen[x] = 1;
      fits(r, x);
    }
  }
}

}  // namespace cpu
}  // namespace plstm_graph
