// The closed form (docs/contract.md, "Closed form"): its schemas and its autograd. Kernels:
// cpu/closed_form_kernel.cpp (there is no CUDA kernel); fake kernels:
// plstm_graph/ops/native.py.
//
//   closed_form_forward(inputs, schedule) -> out
//   closed_form_backward(grad_out, inputs, schedule) -> seven gradients
//
// All of pLSTM on a DAG as a masked linear attention inside each weakly connected component:
//   y_n = sum_m Gate[n,m] (q_n . k_m) v_m + D_n (q_n . k_n) v_n.
// `schedule` is plstm_graph.dag.DagSchedule.tensors(), as for the scan. Nothing is kept for
// backward but the inputs: the backward op recomputes the path weights.
#include "autograd.h"

PLSTM_OP_FAMILY(ClosedFormOp, closed_form, /*has_carry=*/false, /*has_states=*/false,
                "(" PLSTM_INPUTS ", Tensor[] schedule) -> Tensor",
                "(Tensor grad_out, " PLSTM_INPUTS ", Tensor[] schedule) -> (" PLSTM_GRADS ")")
