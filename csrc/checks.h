// Argument checks shared by every op and backend, and the schedules as the kernels see them.
//
// Every pLSTM op takes the seven float inputs (query, key, value, source, transition, mark,
// direct) and one schedule, a `Tensor[]` holding the index tensors of a Python schedule class
// in the order of its fields (plstm_graph.dag: DagSchedule.tensors(), NodeSchedule.tensors()).
// That list is unpacked in exactly one place, unpack_dag_schedule / unpack_node_schedule
// below, into a struct with one named member per field. Each field is declared once, in the
// X-macro lists PLSTM_DAG_SCHEDULE_FIELDS / PLSTM_NODE_SCHEDULE_FIELDS: name, where it lives
// (device or host), its length and the range of its values. Adding an index field means adding
// it to the dataclass in plstm_graph/dag/schedule.py and one line here.
//
// What the unpacking checks, before any kernel reads an index: the count of tensors, and of
// each its dtype (int64), device, shape and, with `check_values`, that every value lies in its
// range, so that no kernel reads or writes out of bounds. The *structure* of a schedule (that
// its CSRs are permutations, that arcs climb levels) is its builder's business: build_schedule
// checks the graph once, and the schedule is consistent by construction; the CPU op
// check_dag_schedule (cpu/schedule_checks.cpp) checks a schedule from elsewhere completely.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <tuple>

// The seven float inputs as every kernel entry point takes them (in schema order), their
// names to pass them on, and the seven gradients a backward kernel returns.
#define PLSTM_KERNEL_INPUTS                                                               \
  const at::Tensor &query, const at::Tensor &key, const at::Tensor &value,               \
      const at::Tensor &source, const at::Tensor &transition, const at::Tensor &mark,    \
      const at::Tensor &direct
#define PLSTM_KERNEL_INPUT_NAMES query, key, value, source, transition, mark, direct

// The float types every kernel is compiled for (check_floats accepts exactly these); the
// including file provides ATen/Dispatch.h.
#define PLSTM_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

namespace plstm_graph {

using InputGradTuple =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// The node-level backward: the seven gradients and that of the optional carry.
using NodeGradTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                 at::Tensor, at::Tensor, at::Tensor>;

struct Dims {
  int64_t N = 0, H = 0, K = 0, V = 0, E = 0, L = 0, levels = 0;
};

// The accumulation dtype for an input dtype: float32 for the half types.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return (t == at::kBFloat16 || t == at::kHalf) ? at::kFloat : t;
}

std::string shape_str(const at::Tensor& t);

// The seven float inputs after the checks. `transition` is [L, H] (per arc) or, for the
// node-level op, [N, H]. For the closed form q, k and v keep a node stride (stride(0)) where
// each node's [H, width] block is contiguous (PLSTMConv hands over column slices of one fused
// projection: no copy per call); everything else is contiguous.
struct Floats {
  at::Tensor q, k, v, source, transition, mark, direct;
  Dims d;
};

// Dtypes (one of float32, float64, bfloat16, float16, all alike), devices and shapes of the
// seven inputs. `node_level_transition`: transition is [N, H] instead of [L, H];
// `keep_node_stride`: q, k and v as described above, else contiguous as well.
Floats check_floats(const char* op, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& source, const at::Tensor& transition,
                    const at::Tensor& mark, const at::Tensor& direct, bool node_level_transition,
                    bool keep_node_stride);

// grad_out [N, H, V] in the dtype and on the device of q; returned contiguous.
at::Tensor check_grad_out(const char* op, const Floats& f, const at::Tensor& grad_out);

// Kept states: [rows, H, K, V] in the accumulation dtype on q's device, or undefined when
// absent (and `required` false); returned contiguous.
at::Tensor check_states(const char* op, const Floats& f, const c10::optional<at::Tensor>& states,
                        int64_t rows, bool required);

// An optional per-edge carry [E, H] in q's dtype; undefined when absent.
at::Tensor check_carry(const char* op, const Floats& f, const c10::optional<at::Tensor>& carry);

// Where a field lives: with the float inputs, or on the host (level pointers, which the host
// loop over levels reads).
enum class Place { kDevice, kHost };
constexpr int64_t kAnyLength = -1;

// X(name, place, length, bound): `length` elements (kAnyLength: any, at least one), each value
// in [0, bound]; `x` holds the extents N, E, L and C (components). The order is that of
// plstm_graph.dag.DagSchedule's tensor fields.
#define PLSTM_DAG_SCHEDULE_FIELDS(X)                      \
  X(edge_src, Place::kDevice, x.E, x.N - 1)               \
  X(edge_dst, Place::kDevice, x.E, x.N - 1)               \
  X(arc_src, Place::kDevice, x.L, x.E - 1)                \
  X(arc_dst, Place::kDevice, x.L, x.E - 1)                \
  X(edge_order, Place::kDevice, x.E, x.E - 1)             \
  X(level_ptr, Place::kHost, kAnyLength, x.E)             \
  X(arc_order, Place::kDevice, x.L, x.L - 1)              \
  X(arc_level_ptr, Place::kHost, kAnyLength, x.L)         \
  X(in_ptr, Place::kDevice, x.E + 1, x.L)                 \
  X(in_arc, Place::kDevice, x.L, x.L - 1)                 \
  X(out_ptr, Place::kDevice, x.E + 1, x.L)                \
  X(out_arc, Place::kDevice, x.L, x.L - 1)                \
  X(node_ptr, Place::kDevice, x.N + 1, x.E)               \
  X(node_edge, Place::kDevice, x.E, x.E - 1)              \
  X(src_ptr, Place::kDevice, x.N + 1, x.E)                \
  X(src_edge, Place::kDevice, x.E, x.E - 1)               \
  X(comp_node_ptr, Place::kDevice, x.C + 1, x.N)          \
  X(comp_node, Place::kDevice, x.N, x.N - 1)              \
  X(comp_edge_ptr, Place::kDevice, x.C + 1, x.E)          \
  X(comp_edge, Place::kDevice, x.E, x.E - 1)              \
  X(node_pos, Place::kDevice, x.N, x.N - 1)               \
  X(edge_pos, Place::kDevice, x.E, x.E - 1)

// The same for plstm_graph.dag.NodeSchedule (node-level transitions: no line graph).
#define PLSTM_NODE_SCHEDULE_FIELDS(X)                     \
  X(edge_src, Place::kDevice, x.E, x.N - 1)               \
  X(edge_dst, Place::kDevice, x.E, x.N - 1)               \
  X(edge_order, Place::kDevice, x.E, x.E - 1)             \
  X(level_ptr, Place::kHost, kAnyLength, x.E)             \
  X(node_order, Place::kDevice, x.N, x.N - 1)             \
  X(node_level_ptr, Place::kHost, kAnyLength, x.N)        \
  X(in_ptr, Place::kDevice, x.N + 1, x.E)                 \
  X(in_edge, Place::kDevice, x.E, x.E - 1)                \
  X(out_ptr, Place::kDevice, x.N + 1, x.E)                \
  X(out_edge, Place::kDevice, x.E, x.E - 1)

#define PLSTM_MEMBER(name, place, length, bound) at::Tensor name;

// Edges by level, arcs by edge, edges by node (head and tail) and nodes and edges by weakly
// connected component: everything both per-arc algorithms need.
struct DagSchedule {
  PLSTM_DAG_SCHEDULE_FIELDS(PLSTM_MEMBER)
  int64_t C = 0;       // components
  int64_t levels = 0;  // edge levels (level_ptr has levels + 1 entries)
};

struct NodeSchedule {
  PLSTM_NODE_SCHEDULE_FIELDS(PLSTM_MEMBER)
  int64_t levels = 0;  // node levels
};

// Positions in the schedule list: DagField::comp_node_ptr, ..., DagField::count.
#define PLSTM_POSITION(name, place, length, bound) name,
struct DagField {
  enum : size_t { PLSTM_DAG_SCHEDULE_FIELDS(PLSTM_POSITION) count };
};
struct NodeField {
  enum : size_t { PLSTM_NODE_SCHEDULE_FIELDS(PLSTM_POSITION) count };
};

#undef PLSTM_MEMBER
#undef PLSTM_POSITION

// The schedule list of an op with the extents of `d` (N, E, L), unpacked and checked as
// described at the top; `check_values`: also the value ranges (one host synchronisation on
// a device). Host fields that the level loop reads are checked completely (monotone, from 0
// to their total).
DagSchedule unpack_dag_schedule(const char* op, const at::TensorList& list, const Dims& d,
                                const c10::Device& device, bool check_values = true);
NodeSchedule unpack_node_schedule(const char* op, const at::TensorList& list, const Dims& d,
                                  const c10::Device& device, bool check_values = true);

// The arguments of a node-level op after the checks every backend shares: the seven inputs
// (transition [N, H]), the optional carry and the unpacked schedule, with q on a device of
// type `kernel` (the message names `kernel_name`). The schedule's values are range-checked
// on q's device under a guard for it.
struct NodeInputs {
  Floats f;
  at::Tensor carry;  // undefined when absent
  NodeSchedule s;
};
NodeInputs check_node_inputs(const char* op, PLSTM_KERNEL_INPUTS,
                             const c10::optional<at::Tensor>& carry,
                             const at::TensorList& schedule, c10::DeviceType kernel,
                             const char* kernel_name);

}  // namespace plstm_graph
