// CPU kernels of the DAG preparation ops (schemas in csrc/ops/prepare.cpp). Each mirrors a
// function of plstm_graph/dag.py exactly (same order of outputs, same error messages), in one
// or two linear passes instead of a dozen torch calls; tests/test_prepare_native.py compares
// them with the Python reference.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

namespace plstm_graph {
namespace cpu {
namespace {

using Index = std::vector<int64_t>;

// A [2, num] int64 CPU index (the Python wrappers check dtype and shape first).
struct Pairs {
  at::Tensor owner;
  const int64_t* first;
  const int64_t* second;
  int64_t size;
};

Pairs pairs_of(const at::Tensor& index, const char* name) {
  TORCH_CHECK_VALUE(index.device().is_cpu(), name, " must be on the CPU for this op");
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, name, " must have dtype torch.long");
  TORCH_CHECK_VALUE(index.dim() == 2 && index.size(0) == 2, name,
                    " must have shape [2, num]");
  at::Tensor c = index.contiguous();
  const int64_t n = c.size(1);
  const int64_t* p = c.data_ptr<int64_t>();
  return {c, p, p + n, n};
}

at::Tensor to_tensor(const Index& values) {
  at::Tensor out = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  std::copy(values.begin(), values.end(), out.data_ptr<int64_t>());
  return out;
}

// Stable counting sort of `keys` (each in [0, size)) into CSR form (ptr[size + 1], perm):
// the same result as torch.sort(keys, stable=True) + bincount + cumsum in dag._csr.
void csr(const int64_t* keys, int64_t n, int64_t size, Index& ptr, Index& perm) {
  ptr.assign(size + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++ptr[keys[i] + 1];
  for (int64_t i = 0; i < size; ++i) ptr[i + 1] += ptr[i];
  Index fill(ptr.begin(), ptr.end() - 1);
  perm.resize(n);
  for (int64_t i = 0; i < n; ++i) perm[fill[keys[i]]++] = i;
}

int64_t check_edge_index_impl(const Pairs& e, int64_t num_nodes, bool allow_self_loops) {
  if (e.size == 0) return num_nodes < 0 ? 0 : num_nodes;
  int64_t lo = e.first[0], hi = e.first[0];
  for (const int64_t* row : {e.first, e.second}) {
    for (int64_t i = 0; i < e.size; ++i) {
      lo = std::min(lo, row[i]);
      hi = std::max(hi, row[i]);
    }
  }
  if (num_nodes < 0) num_nodes = hi + 1;
  TORCH_CHECK_VALUE(lo >= 0, "edge_index contains a negative node id (", lo, ")");
  TORCH_CHECK_VALUE(hi < num_nodes, "edge_index contains node id ", hi, ", out of range for ",
                    num_nodes, " nodes");
  if (!allow_self_loops) {
    for (int64_t i = 0; i < e.size; ++i) {
      TORCH_CHECK_VALUE(e.first[i] != e.second[i], "edge_index contains a self-loop at node ",
                        e.first[i], " (edge ", i, "); a DAG has none");
    }
  }
  return num_nodes;
}

void check_line_ids(const Pairs& e, const Pairs& l) {
  if (l.size == 0) return;
  int64_t lo = l.first[0], hi = l.first[0];
  for (const int64_t* row : {l.first, l.second}) {
    for (int64_t i = 0; i < l.size; ++i) {
      lo = std::min(lo, row[i]);
      hi = std::max(hi, row[i]);
    }
  }
  TORCH_CHECK_VALUE(lo >= 0, "line_index contains a negative edge id (", lo, ")");
  TORCH_CHECK_VALUE(hi < e.size, "line_index contains edge id ", hi, ", out of range for ",
                    e.size, " edges");
}

void check_line_index_impl(const Pairs& e, const Pairs& l) {
  check_line_ids(e, l);
  for (int64_t j = 0; j < l.size; ++j) {
    const int64_t a = l.first[j], b = l.second[j];
    TORCH_CHECK_VALUE(e.second[a] == e.first[b], "line_index arc ", j, " (", a, " -> ", b,
                      ") joins edges that do not meet: edge ", a, " ends at node ",
                      e.second[a], " but edge ", b, " starts at node ", e.first[b]);
  }
}

// every edge climbs a level (which also proves the graph acyclic); levels are >= 0 already
void check_node_level_impl(const Pairs& e, const int64_t* level) {
  for (int64_t i = 0; i < e.size; ++i) {
    const int64_t u = e.first[i], w = e.second[i];
    TORCH_CHECK_VALUE(level[u] < level[w],
                      "node_level is not a topological leveling of edge_index: edge ", i, " (",
                      u, " -> ", w, ") goes from level ", level[u], " to level ", level[w]);
  }
}

int64_t check_edge_index(const at::Tensor& edge_index, int64_t num_nodes,
                         bool allow_self_loops) {
  return check_edge_index_impl(pairs_of(edge_index, "edge_index"), num_nodes,
                               allow_self_loops);
}

at::Tensor topological_levels(const at::Tensor& edge_index, int64_t num_nodes) {
  const Pairs e = pairs_of(edge_index, "edge_index");
  num_nodes = check_edge_index_impl(e, num_nodes, /*allow_self_loops=*/false);
  Index ptr, perm;
  csr(e.first, e.size, num_nodes, ptr, perm);
  Index indeg(num_nodes, 0);
  for (int64_t i = 0; i < e.size; ++i) ++indeg[e.second[i]];
  at::Tensor out = at::zeros({num_nodes}, at::kLong);
  int64_t* level = out.data_ptr<int64_t>();
  // Kahn's algorithm; a node's level is one above its highest predecessor, which is final
  // when its last in-edge is relaxed (the topological generation, as in networkx)
  Index queue;
  queue.reserve(num_nodes);
  for (int64_t n = 0; n < num_nodes; ++n) {
    if (indeg[n] == 0) queue.push_back(n);
  }
  for (size_t head = 0; head < queue.size(); ++head) {
    const int64_t u = queue[head];
    for (int64_t j = ptr[u]; j < ptr[u + 1]; ++j) {
      const int64_t w = e.second[perm[j]];
      level[w] = std::max(level[w], level[u] + 1);
      if (--indeg[w] == 0) queue.push_back(w);
    }
  }
  if (static_cast<int64_t>(queue.size()) == num_nodes) return out;
  // A node on a cycle, found as dag._node_on_cycle does: every node Kahn never freed has a
  // never-freed predecessor, so walking first such predecessors revisits a node.
  std::vector<char> remaining(num_nodes, 1);
  for (int64_t n : queue) remaining[n] = 0;
  Index pred(num_nodes, -1);
  for (int64_t i = 0; i < e.size; ++i) {
    const int64_t u = e.first[i], w = e.second[i];
    if (remaining[u] && remaining[w] && pred[w] < 0) pred[w] = u;
  }
  int64_t node = 0;
  while (!remaining[node]) ++node;
  std::vector<char> seen(num_nodes, 0);
  while (!seen[node]) {
    seen[node] = 1;
    node = pred[node];
  }
  TORCH_CHECK_VALUE(false, "edge_index has a directed cycle through node ", node,
                    "; pLSTM needs a DAG");
  return out;
}

at::Tensor line_graph(const at::Tensor& edge_index, int64_t num_nodes) {
  const Pairs e = pairs_of(edge_index, "edge_index");
  num_nodes = check_edge_index_impl(e, num_nodes, /*allow_self_loops=*/true);
  Index ptr, by_src;
  csr(e.first, e.size, num_nodes, ptr, by_src);
  int64_t num_arcs = 0;
  for (int64_t a = 0; a < e.size; ++a) num_arcs += ptr[e.second[a] + 1] - ptr[e.second[a]];
  at::Tensor out = at::empty({2, num_arcs}, at::kLong);
  int64_t* tail = out.data_ptr<int64_t>();
  int64_t* head = tail + num_arcs;
  int64_t j = 0;
  for (int64_t a = 0; a < e.size; ++a) {
    const int64_t w = e.second[a];
    for (int64_t i = ptr[w]; i < ptr[w + 1]; ++i, ++j) {
      tail[j] = a;
      head[j] = by_src[i];
    }
  }
  return out;
}

// The roots (edges without in-arcs) above an edge: sorted ids while few, a bit set over all
// roots once the ids would take more memory than the bits.
struct RootSet {
  std::vector<int32_t> ids;
  std::vector<uint64_t> bits;
  bool dense() const { return !bits.empty(); }
};

class RootSets {
 public:
  explicit RootSets(int64_t num_roots)
      : words_(std::max<int64_t>(1, (num_roots + 63) / 64)),
        dense_from_(std::max<int64_t>(16, 2 * words_)) {}

  std::shared_ptr<const RootSet> single(int32_t id) const {
    auto s = std::make_shared<RootSet>();
    s->ids.push_back(id);
    return s;
  }

  static bool has(const RootSet& dense, int32_t id) {
    return (dense.bits[id >> 6] >> (id & 63)) & 1u;
  }

  bool intersects(const RootSet& a, const RootSet& b) const {
    if (a.dense() && b.dense()) {
      for (int64_t i = 0; i < words_; ++i) {
        if (a.bits[i] & b.bits[i]) return true;
      }
      return false;
    }
    if (a.dense() || b.dense()) {
      const RootSet& d = a.dense() ? a : b;
      const RootSet& s = a.dense() ? b : a;
      for (int32_t id : s.ids) {
        if (has(d, id)) return true;
      }
      return false;
    }
    size_t i = 0, j = 0;
    while (i < a.ids.size() && j < b.ids.size()) {
      if (a.ids[i] == b.ids[j]) return true;
      if (a.ids[i] < b.ids[j]) ++i; else ++j;
    }
    return false;
  }

  std::shared_ptr<RootSet> united(const RootSet& a, const RootSet& b) const {
    auto out = std::make_shared<RootSet>();
    if (!a.dense() && !b.dense() &&
        static_cast<int64_t>(a.ids.size() + b.ids.size()) <= dense_from_) {
      out->ids.resize(a.ids.size() + b.ids.size());
      std::merge(a.ids.begin(), a.ids.end(), b.ids.begin(), b.ids.end(), out->ids.begin());
      return out;
    }
    out->bits.assign(words_, 0);
    for (const RootSet* s : {&a, &b}) {
      if (s->dense()) {
        for (int64_t i = 0; i < words_; ++i) out->bits[i] |= s->bits[i];
      } else {
        for (int32_t id : s->ids) out->bits[id >> 6] |= uint64_t{1} << (id & 63);
      }
    }
    return out;
  }

 private:
  int64_t words_;
  int64_t dense_from_;
};

// dag.multitree's rule, edge by edge in topological order: the arc p -> c is kept iff no
// root above p is also above an earlier kept predecessor of c (two such paths would meet).
at::Tensor multitree_keep(const at::Tensor& edge_index, const at::Tensor& line_index,
                          const at::Tensor& node_level) {
  const Pairs e = pairs_of(edge_index, "edge_index");
  const Pairs l = pairs_of(line_index, "line_index");
  TORCH_CHECK_TYPE(node_level.scalar_type() == at::kLong && node_level.device().is_cpu(),
                   "node_level must be a CPU tensor of dtype torch.long");
  at::Tensor level_t = node_level.contiguous();
  const int64_t* level = level_t.data_ptr<int64_t>();
  // bounds before any memory access (the Python wrapper checks the full contract)
  const int64_t num_nodes = check_edge_index_impl(e, -1, /*allow_self_loops=*/true);
  TORCH_CHECK_VALUE(node_level.dim() == 1 && node_level.numel() >= num_nodes,
                    "node_level must have one entry per node (", num_nodes, "), got ",
                    node_level.numel());
  for (int64_t n = 0; n < node_level.numel(); ++n) {
    TORCH_CHECK_VALUE(level[n] >= 0, "node_level contains a negative level");
  }
  check_line_ids(e, l);
  const int64_t num_edges = e.size, num_arcs = l.size;
  at::Tensor keep_t = at::zeros({num_arcs}, at::kBool);
  if (num_arcs == 0) return keep_t;
  bool* keep = keep_t.data_ptr<bool>();

  // topological position of every edge: by the level of its tail, then id
  int64_t num_levels = 0;
  Index edge_level(num_edges);
  for (int64_t i = 0; i < num_edges; ++i) {
    edge_level[i] = level[e.first[i]];
    num_levels = std::max(num_levels, edge_level[i] + 1);
  }
  Index level_ptr, order;
  csr(edge_level.data(), num_edges, num_levels, level_ptr, order);
  Index pos(num_edges);
  for (int64_t i = 0; i < num_edges; ++i) pos[order[i]] = i;

  // in-arcs of every edge, earliest predecessor first (copies of an arc in column order)
  Index in_ptr, in_arc;
  csr(l.second, num_arcs, num_edges, in_ptr, in_arc);
  for (int64_t c = 0; c < num_edges; ++c) {
    std::stable_sort(in_arc.begin() + in_ptr[c], in_arc.begin() + in_ptr[c + 1],
                     [&](int64_t x, int64_t y) { return pos[l.first[x]] < pos[l.first[y]]; });
  }
  Index pending(num_edges, 0);  // reads of an edge's root set still to come
  for (int64_t j = 0; j < num_arcs; ++j) ++pending[l.first[j]];
  std::vector<int32_t> root_id(num_edges, -1);
  int32_t num_roots = 0;
  for (int64_t c : order) {
    if (in_ptr[c] == in_ptr[c + 1]) root_id[c] = num_roots++;
  }

  RootSets sets(num_roots);
  std::vector<std::shared_ptr<const RootSet>> above(num_edges);
  for (int64_t c : order) {
    std::shared_ptr<const RootSet> acc;
    if (root_id[c] >= 0) {
      acc = sets.single(root_id[c]);
    } else {
      for (int64_t i = in_ptr[c]; i < in_ptr[c + 1]; ++i) {
        const int64_t j = in_arc[i];
        const int64_t p = l.first[j];
        std::shared_ptr<const RootSet> x = above[p];
        if (--pending[p] == 0) above[p].reset();  // memory follows the live frontier
        if (!acc) {  // the first predecessor is always kept
          acc = std::move(x);
          keep[j] = true;
        } else if (!sets.intersects(*acc, *x)) {
          acc = sets.united(*acc, *x);
          keep[j] = true;
        }
      }
    }
    if (pending[c] > 0) above[c] = std::move(acc);
  }
  return keep_t;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> build_schedule(const at::Tensor& edge_index,
                                                                const at::Tensor& line_index,
                                                                const at::Tensor& node_level,
                                                                int64_t num_nodes,
                                                                bool validate) {
  const Pairs e = pairs_of(edge_index, "edge_index");
  const Pairs l = pairs_of(line_index, "line_index");
  // ids and levels are always bounds-checked (cheap); `validate` adds the structural checks
  num_nodes = check_edge_index_impl(e, num_nodes, /*allow_self_loops=*/!validate);
  if (validate) check_line_index_impl(e, l); else check_line_ids(e, l);
  TORCH_CHECK_VALUE(node_level.dim() == 1 && node_level.numel() == num_nodes,
                    "node_level must have shape [", num_nodes, "], got [", node_level.numel(),
                    "]");
  TORCH_CHECK_TYPE(node_level.scalar_type() == at::kLong && node_level.device().is_cpu(),
                   "node_level must be a CPU tensor of dtype torch.long");
  at::Tensor level_t = node_level.contiguous();
  const int64_t* level = level_t.data_ptr<int64_t>();
  for (int64_t n = 0; n < num_nodes; ++n) {
    TORCH_CHECK_VALUE(level[n] >= 0, "node_level contains a negative level");
  }
  if (validate) check_node_level_impl(e, level);
  const int64_t E = e.size, L = l.size;

  Index edge_level(E);
  int64_t num_levels = 0;
  for (int64_t i = 0; i < E; ++i) {
    edge_level[i] = level[e.first[i]];
    num_levels = std::max(num_levels, edge_level[i] + 1);
  }
  Index level_ptr, edge_order, arc_level(L), arc_level_ptr, arc_order;
  csr(edge_level.data(), E, num_levels, level_ptr, edge_order);
  for (int64_t j = 0; j < L; ++j) arc_level[j] = edge_level[l.second[j]];
  csr(arc_level.data(), L, num_levels, arc_level_ptr, arc_order);
  Index in_ptr, in_arc, out_ptr, out_arc, node_ptr, node_edge, src_ptr, src_edge;
  csr(l.second, L, E, in_ptr, in_arc);
  csr(l.first, L, E, out_ptr, out_arc);
  csr(e.second, E, num_nodes, node_ptr, node_edge);
  csr(e.first, E, num_nodes, src_ptr, src_edge);

  // weakly connected components, numbered in the order of their lowest node id
  Index parent(num_nodes);
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](int64_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (int64_t i = 0; i < E; ++i) {
    const int64_t a = find(e.first[i]), b = find(e.second[i]);
    if (a != b) parent[std::max(a, b)] = std::min(a, b);
  }
  Index comp(num_nodes), comp_of_root(num_nodes, -1);
  int64_t num_comps = 0;
  for (int64_t n = 0; n < num_nodes; ++n) {
    const int64_t r = find(n);
    if (comp_of_root[r] < 0) comp_of_root[r] = num_comps++;
    comp[n] = comp_of_root[r];
  }
  // nodes by component, each in level order; edges by component, each in level order
  Index level_ptr_n, by_level;
  int64_t node_levels = 0;
  for (int64_t n = 0; n < num_nodes; ++n) node_levels = std::max(node_levels, level[n] + 1);
  csr(level, num_nodes, node_levels, level_ptr_n, by_level);
  Index comp_by_level(num_nodes);
  for (int64_t i = 0; i < num_nodes; ++i) comp_by_level[i] = comp[by_level[i]];
  Index comp_node_ptr, perm;
  csr(comp_by_level.data(), num_nodes, num_comps, comp_node_ptr, perm);
  Index comp_node(num_nodes);
  for (int64_t i = 0; i < num_nodes; ++i) comp_node[i] = by_level[perm[i]];
  Index comp_by_order(E);
  for (int64_t i = 0; i < E; ++i) comp_by_order[i] = comp[e.first[edge_order[i]]];
  Index comp_edge_ptr;
  csr(comp_by_order.data(), E, num_comps, comp_edge_ptr, perm);
  Index comp_edge(E);
  for (int64_t i = 0; i < E; ++i) comp_edge[i] = edge_order[perm[i]];

  // the position of every node and edge in its component's list (the closed form's layout)
  Index node_pos(num_nodes), edge_pos(E);
  for (int64_t c = 0; c < num_comps; ++c) {
    for (int64_t j = comp_node_ptr[c]; j < comp_node_ptr[c + 1]; ++j) {
      node_pos[comp_node[j]] = j - comp_node_ptr[c];
    }
    for (int64_t j = comp_edge_ptr[c]; j < comp_edge_ptr[c + 1]; ++j) {
      edge_pos[comp_edge[j]] = j - comp_edge_ptr[c];
    }
  }

  Index comp_arcs(num_comps, 0);
  for (int64_t j = 0; j < L; ++j) ++comp_arcs[comp[e.first[l.second[j]]]];
  int64_t max_nodes = 0, max_edges = 0, pairs = 0, path_work = 0;
  for (int64_t c = 0; c < num_comps; ++c) {
    const int64_t n = comp_node_ptr[c + 1] - comp_node_ptr[c];
    const int64_t m = comp_edge_ptr[c + 1] - comp_edge_ptr[c];
    max_nodes = std::max(max_nodes, n);
    max_edges = std::max(max_edges, m);
    pairs += n * (n - 1) / 2;
    path_work += (m + comp_arcs[c] + n) * n;
  }
  std::vector<at::Tensor> out = {
      e.owner.select(0, 0), e.owner.select(0, 1), l.owner.select(0, 0), l.owner.select(0, 1),
      to_tensor(edge_order), to_tensor(level_ptr), to_tensor(arc_order),
      to_tensor(arc_level_ptr), to_tensor(in_ptr), to_tensor(in_arc), to_tensor(out_ptr),
      to_tensor(out_arc), to_tensor(node_ptr), to_tensor(node_edge), to_tensor(src_ptr),
      to_tensor(src_edge), to_tensor(comp_node_ptr),
      to_tensor(comp_node), to_tensor(comp_edge_ptr), to_tensor(comp_edge),
      to_tensor(node_pos), to_tensor(edge_pos)};
  at::Tensor sizes = to_tensor({max_nodes, max_edges, pairs, path_work});
  return {std::move(out), sizes};
}

}  // namespace
}  // namespace cpu
}  // namespace plstm_graph

TORCH_LIBRARY_IMPL(plstm_graph, CPU, m) {
  m.impl("check_edge_index", &plstm_graph::cpu::check_edge_index);
  m.impl("topological_levels", &plstm_graph::cpu::topological_levels);
  m.impl("line_graph", &plstm_graph::cpu::line_graph);
  m.impl("multitree_keep", &plstm_graph::cpu::multitree_keep);
  m.impl("build_schedule", &plstm_graph::cpu::build_schedule);
}
