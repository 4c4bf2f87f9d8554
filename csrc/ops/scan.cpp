// The level scan (docs/contract.md, "The recurrence"): its schemas and its autograd, wired
// once here for every backend. Kernels: cpu/scan_kernel.cpp, cuda/scan_kernel.cu; fake
// kernels: plstm_graph/ops/native.py.
//
//   scan_forward(inputs, schedule, keep_states) -> (out, states)
//   scan_backward(grad_out, inputs, states?, schedule) -> seven gradients
//
// It computes all of pLSTM on a DAG, direct term included:
//   C_b = S_b k_{src b} v_{src b}^T + sum_{a->b} T_{a->b} C_a,
//   y_n = sum_{dst e = n} M_e C_e^T q_n + D_n (q_n . k_n) v_n.
// `schedule` is plstm_graph.dag.DagSchedule.tensors() (checks.h, PLSTM_DAG_SCHEDULE_FIELDS).
// `states` (the edge states [E, H, K, V] in the accumulation dtype, or an empty tensor unless
// keep_states) is a cache for backward and carries no gradient; without it the backward op
// recomputes them.
#include "autograd.h"

PLSTM_OP_FAMILY(ScanOp, scan, /*has_carry=*/false, /*has_states=*/true,
                "(" PLSTM_INPUTS ", Tensor[] schedule, bool keep_states) "
                "-> (Tensor out, Tensor states)",
                "(Tensor grad_out, " PLSTM_INPUTS ", Tensor? states, Tensor[] schedule) "
                "-> (" PLSTM_GRADS ")")
