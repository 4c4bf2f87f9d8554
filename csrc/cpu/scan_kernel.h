// CPU kernels of the plstm_graph state scan (registered for the CPU dispatch key).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace plstm_graph {
namespace cpu {

std::tuple<at::Tensor, at::Tensor> scan_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& source, const at::Tensor& transition, const at::Tensor& mark,
    const at::Tensor& edge_src, const at::Tensor& edge_dst, const at::Tensor& arc_src,
    const at::Tensor& arc_dst, const at::Tensor& edge_order, const at::Tensor& level_ptr,
    const at::Tensor& in_ptr, const at::Tensor& in_arc, const at::Tensor& out_ptr,
    const at::Tensor& out_arc, const at::Tensor& node_ptr, const at::Tensor& node_edge,
    bool keep_states);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
scan_backward(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
              const at::Tensor& value, const at::Tensor& source, const at::Tensor& transition,
              const at::Tensor& mark, const c10::optional<at::Tensor>& states,
              const at::Tensor& edge_src, const at::Tensor& edge_dst,
              const at::Tensor& arc_src, const at::Tensor& arc_dst,
              const at::Tensor& edge_order, const at::Tensor& level_ptr,
              const at::Tensor& in_ptr, const at::Tensor& in_arc, const at::Tensor& out_ptr,
              const at::Tensor& out_arc, const at::Tensor& node_ptr,
              const at::Tensor& node_edge);

}  // namespace cpu
}  // namespace plstm_graph
