// The node-level scan (docs/contract.md, "Node-level transitions": one transition T_n per
// shared node, no line graph): its schemas and its autograd. Kernels:
// cpu/node_scan_kernel.cpp, cuda/node_scan_kernel.cu; fake kernels: plstm_graph/ops/native.py.
//
//   node_scan_forward(inputs, carry?, schedule) -> (out, states)
//   node_scan_backward(grad_out, inputs, carry?, states, schedule)
//       -> seven gradients and grad_carry (an empty tensor without a carry)
//
// With transition [N, H] and H_n = sum_{e into n} C_e,
//   C_b = S_b k_u v_u^T + g_b T_u H_u (b = u -> w),
//   y_w = sum_{b into w} M_b C_b^T q_w + D_w (q_w . k_w) v_w,
// where the optional carry g_b (1 when absent) scales the state carried into edge b: what an
// edge mask does to the transitions into its edge. `schedule` is
// plstm_graph.dag.NodeSchedule.tensors() (checks.h, PLSTM_NODE_SCHEDULE_FIELDS). `states`
// (node states H in the accumulation dtype) is kept for backward and carries no gradient.
#include "autograd.h"

PLSTM_OP_FAMILY(NodeScanOp, node_scan, /*has_carry=*/true, /*has_states=*/true,
                "(" PLSTM_INPUTS ", Tensor? carry, Tensor[] schedule) "
                "-> (Tensor out, Tensor states)",
                "(Tensor grad_out, " PLSTM_INPUTS ", Tensor? carry, Tensor? states, "
                "Tensor[] schedule) -> (" PLSTM_GRADS ", Tensor grad_carry)")
