// Shared declarations of the plstm_graph native ops.
//
// Two algorithms, four ops, defined in plstm_dag.cpp (TORCH_LIBRARY).
//
// The level scan, implemented per backend in cpu/scan_kernel.cpp and cuda/scan_kernel.cu
// (TORCH_LIBRARY_IMPL):
//
//   scan_forward(q, k, v, source, transition, mark, <schedule>, keep_states) -> (out, states)
//   scan_backward(grad_out, q, k, v, source, transition, mark, states?, <schedule>)
//       -> (grad_q, grad_k, grad_v, grad_source, grad_transition, grad_mark)
//
// They compute the state part of pLSTM on a DAG (no direct term):
//   C_b = S_b k_{src b} v_{src b}^T + sum_{a->b} T_{a->b} C_a,  y_n = sum_{dst e = n} M_e C_e^T q_n
//
// <schedule> is the index layout of plstm_graph.dag.DagSchedule, always in this order:
//   edge_src[E], edge_dst[E], arc_src[L], arc_dst[L], edge_order[E], level_ptr[levels+1] (CPU),
//   in_ptr[E+1], in_arc[L], out_ptr[E+1], out_arc[L], node_ptr[N+1], node_edge[E]
// The forward op does not read out_ptr/out_arc; it takes them so that autograd can hand them
// to the backward op.
//
// The closed form (docs/contract.md, "Closed form"), per weakly connected component,
// implemented for the CPU in cpu/closed_form_kernel.cpp:
//
//   closed_form_forward(q, k, v, source, transition, mark, direct, <components>) -> out
//   closed_form_backward(grad_out, q, k, v, source, transition, mark, direct, <components>)
//       -> (grad_q, grad_k, grad_v, grad_source, grad_transition, grad_mark, grad_direct)
//
// It computes all of pLSTM on a DAG, direct term included, as a masked linear attention inside
// each component: y_n = sum_m Gate[n,m] (q_n . k_m) v_m + D_n (q_n . k_n) v_n. Nothing is kept
// for backward but the inputs. <components> is, in this order:
//   edge_src[E], edge_dst[E], arc_src[L], arc_dst[L], in_ptr[E+1], in_arc[L],
//   comp_node_ptr[C+1], comp_node[N] (nodes by component, in topological order within one),
//   comp_edge_ptr[C+1], comp_edge[E] (edges by component, in level order within one)
//
// Dtypes: q, k, v and the gates share one of float32, float64, bfloat16, float16. Accumulation
// (and the saved states) is float32 for the half types, the input dtype otherwise; outputs and
// gradients come back in the input dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace plstm_graph {

struct Schedule {
  at::Tensor edge_src, edge_dst, arc_src, arc_dst, edge_order, level_ptr, in_ptr, in_arc,
      out_ptr, out_arc, node_ptr, node_edge;
};

struct Dims {
  int64_t N = 0, H = 0, K = 0, V = 0, E = 0, L = 0, levels = 0;
};

// Inputs after the checks: every tensor contiguous, every index tensor int64 on `device`
// (level_ptr on the CPU).
struct Inputs {
  at::Tensor q, k, v, source, transition, mark;
  Schedule s;
  Dims d;
};

// The accumulation dtype for an input dtype.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return (t == at::kBFloat16 || t == at::kHalf) ? at::kFloat : t;
}

// Checks dtypes, devices, dimensions and shapes of all arguments (raising TypeError /
// ValueError through c10 errors), makes everything contiguous. Index *values* are checked by
// the backends (check_index_ranges below, or the CPU's full consistency check).
Inputs check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& source,
                    const at::Tensor& transition, const at::Tensor& mark,
                    const at::Tensor& edge_src, const at::Tensor& edge_dst,
                    const at::Tensor& arc_src, const at::Tensor& arc_dst,
                    const at::Tensor& edge_order, const at::Tensor& level_ptr,
                    const at::Tensor& in_ptr, const at::Tensor& in_arc,
                    const at::Tensor& out_ptr, const at::Tensor& out_arc,
                    const at::Tensor& node_ptr, const at::Tensor& node_edge);

// grad_out [N, H, V] in the dtype and on the device of q; returned contiguous.
at::Tensor check_grad_out(const at::Tensor& q, int64_t V, const at::Tensor& grad_out);

// The closed form's inputs after the checks: index tensors int64 on the device of q, all
// contiguous except q, k and v, which keep a node stride (stride(0)) when each node's [H, K|V]
// block is contiguous. The consistency of the component layout is checked by the kernel.
struct ClosedFormInputs {
  at::Tensor q, k, v, source, transition, mark, direct;
  at::Tensor edge_src, edge_dst, arc_src, arc_dst, in_ptr, in_arc, comp_node_ptr, comp_node,
      comp_edge_ptr, comp_edge;
  Dims d;
  int64_t C = 0;  // components
};

ClosedFormInputs check_closed_form_inputs(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& source, const at::Tensor& transition, const at::Tensor& mark,
    const at::Tensor& direct, const at::Tensor& edge_src, const at::Tensor& edge_dst,
    const at::Tensor& arc_src, const at::Tensor& arc_dst, const at::Tensor& in_ptr,
    const at::Tensor& in_arc, const at::Tensor& comp_node_ptr, const at::Tensor& comp_node,
    const at::Tensor& comp_edge_ptr, const at::Tensor& comp_edge);

// states [E, H, K, V] in the accumulation dtype, or undefined (recompute); returned contiguous.
at::Tensor check_states(const Inputs& in, const c10::optional<at::Tensor>& states);

// Range checks of every index value with ATen reductions on the tensors' device (one host
// synchronisation): what a device kernel needs to never read or write out of bounds.
// `with_out_csr` also checks out_ptr/out_arc (the backward op reads them).
void check_index_ranges(const Inputs& in, bool with_out_csr);

// Edges grouped by source node (stable, so in id order within a node), as CSR
// (src_ptr[N+1], src_edge[E]), built with ATen sort on the inputs' device.
void edges_by_source(const Inputs& in, at::Tensor& src_ptr, at::Tensor& src_edge);

}  // namespace plstm_graph
