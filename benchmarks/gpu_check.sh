#!/usr/bin/env bash
# One-shot check of the CUDA kernels on a machine with a GPU, from the repository root or
# anywhere else:
#
#   bash benchmarks/gpu_check.sh            # build, check every op against the CPU float64
#                                           # reference, time torch vs native, print a table
#   bash benchmarks/gpu_check.sh --quick    # smaller graphs and shorter timings
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: the visible GPU's),
# MAX_JOBS (default: all cores), SKIP_BUILD=1 to reuse an existing build, RUN_TESTS=1 to also
# run tests/test_native.py and tests/test_node_level.py (CPU and CUDA cases). Exit status:
# non-zero if the build or any check fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device is visible to torch"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on "
      f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
EOF

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
    TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  fi
  export TORCH_CUDA_ARCH_LIST
  export FORCE_CUDA=1
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  echo "building plstm_graph._C with CUDA for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST ..."
  start=$(date +%s)
  # --no-deps: the machine may be offline; torch, torch_geometric and networkx must be there
  "$PY" -m pip install --no-build-isolation --no-deps -e . -q
  echo "built in $(( $(date +%s) - start ))s"
fi

"$PY" - <<'EOF'
import plstm_graph
from plstm_graph.ops import native
assert native.WITH_CUDA, f"the extension has no CUDA kernels: {native.unavailable_reason('cuda')}"
print(f"plstm_graph {plstm_graph.__version__}: native ops built with CUDA runtime "
      f"{native.CUDA_VERSION}")
EOF

"$PY" benchmarks/gpu_check.py --device cuda "$@"

if [[ "${RUN_TESTS:-0}" == "1" ]]; then
  "$PY" -m pytest tests/test_native.py tests/test_node_level.py -q -x
fi
