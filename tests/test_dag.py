"""DAG preparation: line graphs, multitree pruning, levels, orientation and the schedule.

Every check here is against a construction written in the test itself (brute force or networkx),
never against another function of the package.
"""
import random
import re

import networkx as nx
import pytest
import torch

import plstm_graph
from plstm_graph.dag import build_schedule, check_node_level
from harness import ei, multitree_oracle, node_generations, random_dag

line_graph = plstm_graph.line_graph
multitree = plstm_graph.multitree
topological_levels = plstm_graph.topological_levels
to_dag = plstm_graph.to_dag
reverse_dag = plstm_graph.reverse_dag


# ---------------------------------------------------------------------------------------------
# independent helpers
# ---------------------------------------------------------------------------------------------
def brute_line_graph(edge_index):
    """O(E^2): every arc a -> b with dst(a) == src(b), ordered by (a, b)."""
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    return [(a, b) for a in range(len(src)) for b in range(len(src)) if dst[a] == src[b]]


def arcs_of(line_index):
    return [tuple(x) for x in line_index.t().tolist()]


def path_counts(num_edges, arcs):
    """count[x][y] = number of directed paths x ~> y (length >= 1) in the line graph."""
    succ = [[] for _ in range(num_edges)]
    indeg = [0] * num_edges
    for a, b in arcs:
        succ[a].append(b)
        indeg[b] += 1
    order, ready = [], [e for e in range(num_edges) if indeg[e] == 0]
    while ready:
        e = ready.pop()
        order.append(e)
        for b in succ[e]:
            indeg[b] -= 1
            if indeg[b] == 0:
                ready.append(b)
    assert len(order) == num_edges
    counts = []
    for x in range(num_edges):
        c = [0] * num_edges
        c[x] = 1
        for e in order:
            if c[e]:
                for b in succ[e]:
                    c[b] += c[e]
        c[x] -= 1  # paths of length >= 1 only (the line graph of a DAG has no cycles)
        counts.append(c)
    return counts


def is_multitree(num_edges, arcs):
    return all(n <= 1 for row in path_counts(num_edges, arcs) for n in row)


def on_cycle(edge_index, node):
    g = nx.DiGraph(edge_index.t().tolist())
    return any(node in scc and len(scc) > 1 for scc in nx.strongly_connected_components(g))


DAG_CASES = [(n, p, seed) for n, p, seed in
             [(1, 0.5, 0), (2, 1.0, 1), (5, 0.5, 2), (7, 0.4, 3), (12, 0.3, 4), (20, 0.25, 5),
              (31, 0.15, 6), (16, 0.6, 7)]]


def multigraph_cases():
    return {
        "parallel": ei([(0, 1), (0, 1), (1, 2), (1, 2), (1, 2)]),
        "parallel_chain": ei([(2, 0), (0, 1), (2, 0), (0, 1)]),
        "both_directions": ei([(0, 1), (1, 0), (1, 2)]),  # cyclic, fine for line_graph
        "self_loop": ei([(0, 0), (0, 1), (1, 1)]),
        "unsorted": ei([(3, 1), (0, 3), (1, 2), (0, 1), (3, 2), (2, 4)]),
    }


# ---------------------------------------------------------------------------------------------
# line_graph
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,p,seed", DAG_CASES)
def test_line_graph_matches_brute_force_random(n, p, seed):
    edge_index = random_dag(n, p, seed=seed)
    lg = line_graph(edge_index, num_nodes=n)
    assert lg.dtype == torch.long and lg.shape[0] == 2
    assert arcs_of(lg) == brute_line_graph(edge_index)  # same set, documented order


@pytest.mark.parametrize("name", sorted(multigraph_cases()))
def test_line_graph_matches_brute_force_multigraph(name):
    edge_index = multigraph_cases()[name]
    expected = brute_line_graph(edge_index)
    got = arcs_of(line_graph(edge_index))
    assert set(got) == set(expected)
    assert got == expected


@pytest.mark.parametrize("num_nodes", [None, 0, 5])
def test_line_graph_empty(num_nodes):
    lg = line_graph(torch.empty(2, 0, dtype=torch.long), num_nodes=num_nodes)
    assert lg.shape == (2, 0) and lg.dtype == torch.long


def test_line_graph_edges_without_arcs():
    edge_index = ei([(0, 1), (2, 3), (4, 3)])
    lg = line_graph(edge_index, num_nodes=7)
    assert lg.shape == (2, 0)


def test_line_graph_does_not_modify_input():
    edge_index = random_dag(10, 0.4, seed=3)
    before = edge_index.clone()
    line_graph(edge_index)
    assert torch.equal(edge_index, before)


# ---------------------------------------------------------------------------------------------
# multitree
# ---------------------------------------------------------------------------------------------
def _mt_cases():
    cases = {f"random{n}_{seed}": random_dag(n, p, seed=seed) for n, p, seed in DAG_CASES}
    cases["diamond"] = ei([(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)])
    cases["double_diamond"] = ei([(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (3, 5), (4, 6),
                                  (5, 6), (6, 7)])
    cases["parallel"] = ei([(0, 1), (0, 1), (1, 2), (1, 2)])
    cases["dense"] = random_dag(12, 1.0, seed=9)
    return cases


MT_CASES = _mt_cases()


@pytest.mark.parametrize("name", sorted(MT_CASES))
def test_multitree_properties(name):
    edge_index = MT_CASES[name]
    lg = line_graph(edge_index)
    lg_before, ei_before = lg.clone(), edge_index.clone()
    mt = multitree(edge_index, lg)
    assert torch.equal(lg, lg_before) and torch.equal(edge_index, ei_before)
    assert mt.dtype == torch.long and mt.shape[0] == 2
    # a subset of the input arcs, in input order
    all_arcs = arcs_of(lg)
    kept = arcs_of(mt)
    idx = [all_arcs.index(a) for a in kept]
    assert idx == sorted(idx) and len(set(kept)) == len(kept)
    # a multitree: at most one directed path between every pair of line-graph nodes
    assert is_multitree(edge_index.size(1), kept)
    # deterministic
    assert torch.equal(multitree(edge_index, lg), mt)
    # idempotent: a multitree comes back unchanged
    assert torch.equal(multitree(edge_index, mt), mt)
    # matches the rule written out with explicit ancestor sets
    assert kept == arcs_of(multitree_oracle(edge_index, lg))


@pytest.mark.parametrize("name", sorted(MT_CASES))
def test_multitree_keeps_every_edge_connected_to_its_predecessors(name):
    """Pruning removes arcs only: every edge with an in-arc keeps at least one."""
    edge_index = MT_CASES[name]
    lg = line_graph(edge_index)
    mt = multitree(edge_index, lg)
    assert set(lg[1].tolist()) == set(mt[1].tolist())
    # (reachability is NOT preserved in general: dropping p2 -> c cuts c off from the
    # ancestors of p2 that p1 does not share; so no such check here)


def test_multitree_diamond_drops_exactly_one_arc():
    # edges: 0:(0->1) 1:(0->2) 2:(1->3) 3:(2->3) 4:(3->4)
    edge_index = ei([(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)])
    lg = line_graph(edge_index)
    assert arcs_of(lg) == [(0, 2), (1, 3), (2, 4), (3, 4)]
    # edge 4 is reachable from edge 0 via 2 and from edge 1 via 3; different roots, so no
    # pair of edges has two paths: this is already a multitree
    assert torch.equal(multitree(edge_index, lg), lg)
    # a real diamond in the line graph: one edge feeding two that rejoin
    edge_index = ei([(0, 1), (1, 2), (1, 3), (2, 4), (3, 4), (4, 5)])
    lg = line_graph(edge_index)
    mt = multitree(edge_index, lg)
    assert lg.size(1) - mt.size(1) == 1
    assert (3, 5) not in arcs_of(mt) and (4, 5) in arcs_of(mt) or \
        (4, 5) not in arcs_of(mt) and (3, 5) in arcs_of(mt)
    assert arcs_of(mt) == arcs_of(multitree_oracle(edge_index, lg))


@pytest.mark.parametrize("kind", ["chain", "out_tree", "in_tree", "shuffled_out_tree"])
def test_multitree_unchanged_on_multitree_input(kind):
    rng = random.Random(1)
    if kind == "chain":
        perm = list(range(30))
        rng.shuffle(perm)
        edge_index = ei([(perm[i], perm[i + 1]) for i in range(29)])
    elif kind == "out_tree":
        edge_index = ei([(rng.randrange(i), i) for i in range(1, 25)])
    elif kind == "in_tree":
        edge_index = ei([(i, rng.randrange(i)) for i in range(1, 25)])
    else:
        perm = list(range(25))
        rng.shuffle(perm)
        pairs = [(perm[rng.randrange(i)], perm[i]) for i in range(1, 25)]
        rng.shuffle(pairs)
        edge_index = ei(pairs)
    lg = line_graph(edge_index)
    assert is_multitree(edge_index.size(1), arcs_of(lg))
    assert torch.equal(multitree(edge_index, lg), lg)
    # the input order of the arcs is kept, whatever it is
    shuffled = lg[:, torch.randperm(lg.size(1))]
    assert torch.equal(multitree(edge_index, shuffled), shuffled)


def test_multitree_on_shuffled_arcs_keeps_input_order():
    edge_index = random_dag(14, 0.4, seed=11)
    lg = line_graph(edge_index)
    perm = torch.randperm(lg.size(1), generator=torch.Generator().manual_seed(3))
    shuffled = lg[:, perm]
    mt = multitree(edge_index, shuffled)
    kept = arcs_of(mt)
    pos = {a: i for i, a in enumerate(arcs_of(shuffled))}
    assert [pos[a] for a in kept] == sorted(pos[a] for a in kept)
    assert set(kept) == set(arcs_of(multitree(edge_index, lg)))
    assert kept == arcs_of(multitree_oracle(edge_index, shuffled))


def test_multitree_duplicate_arcs():
    edge_index = ei([(0, 1), (1, 2), (2, 3)])
    lg = ei([(0, 1), (0, 1), (1, 2), (0, 1)])
    mt = multitree(edge_index, lg)
    assert arcs_of(mt) == [(0, 1), (1, 2)]
    assert is_multitree(3, arcs_of(mt))


@pytest.mark.parametrize("num_nodes", [0, 4])
def test_multitree_empty_and_edgeless(num_nodes):
    edge_index = ei([(0, 1), (2, 3)]) if num_nodes else ei([])
    lg = line_graph(edge_index)
    mt = multitree(edge_index, lg)
    assert mt.shape == (2, 0) and mt.dtype == torch.long


def test_multitree_rejects_non_topological_node_level():
    # edges 0:(0->1) 1:(1->2) 2:(1->3) 3:(2->4) 4:(3->4) 5:(4->5): one diamond in the line graph
    edge_index = ei([(0, 1), (1, 2), (1, 3), (2, 4), (3, 4), (4, 5)])
    lg = line_graph(edge_index)
    bad_level = torch.tensor([5, 4, 3, 2, 1, 0])  # reversed: not a topological leveling
    with pytest.raises(ValueError, match="node_level"):
        multitree(edge_index, lg, node_level=bad_level)


# ---------------------------------------------------------------------------------------------
# topological_levels
# ---------------------------------------------------------------------------------------------
def nx_generations(edge_index, num_nodes):
    g = nx.DiGraph()
    g.add_nodes_from(range(num_nodes))
    g.add_edges_from(edge_index.t().tolist())
    level = [0] * num_nodes
    for d, gen in enumerate(nx.topological_generations(g)):
        for n in gen:
            level[n] = d
    return level


@pytest.mark.parametrize("method", ["networkx", "torch"])
@pytest.mark.parametrize("n,p,seed", DAG_CASES + [(40, 0.1, 8), (60, 0.05, 9)])
def test_topological_levels_match_networkx(method, n, p, seed):
    edge_index = random_dag(n, p, seed=seed)
    before = edge_index.clone()
    level = topological_levels(edge_index, num_nodes=n, method=method)
    assert torch.equal(edge_index, before)
    assert level.dtype == torch.long and level.shape == (n,)
    assert level.tolist() == nx_generations(edge_index, n)
    assert level.tolist() == node_generations(edge_index, n)


@pytest.mark.parametrize("n,p,seed", DAG_CASES)
def test_topological_levels_torch_equals_networkx(n, p, seed):
    edge_index = random_dag(n, p, seed=seed)
    extra = n + 3  # trailing isolated nodes
    a = topological_levels(edge_index, num_nodes=extra, method="torch")
    b = topological_levels(edge_index, num_nodes=extra, method="networkx")
    assert torch.equal(a, b)
    assert a[n:].tolist() == [0, 0, 0]


def test_topological_levels_multigraph_and_long_chain():
    edge_index = ei([(0, 1), (0, 1), (1, 2), (0, 2), (0, 2)])
    for method in ("torch", "networkx"):
        assert topological_levels(edge_index, method=method).tolist() == [0, 1, 2]
    perm = torch.randperm(80, generator=torch.Generator().manual_seed(0))
    chain = torch.stack([perm[:-1], perm[1:]])
    for method in ("torch", "networkx"):
        level = topological_levels(chain, method=method)
        assert level[perm].tolist() == list(range(80))


@pytest.mark.parametrize("method", ["networkx", "torch"])
@pytest.mark.parametrize("num_nodes", [None, 0, 3])
def test_topological_levels_empty(method, num_nodes):
    level = topological_levels(torch.empty(2, 0, dtype=torch.long), num_nodes=num_nodes,
                               method=method)
    assert level.tolist() == [0] * (num_nodes or 0)


def _cyclic_cases():
    rng = random.Random(7)
    cases = [ei([(0, 1), (1, 0)]), ei([(0, 1), (1, 2), (2, 0)]),
             # acyclic part hanging off a cycle, and a tail leading into it
             ei([(5, 0), (0, 1), (1, 2), (2, 3), (3, 1), (3, 4), (6, 5)]),
             # nodes downstream of a cycle never resolve either; ids chosen so that the
             # smallest unresolved node (1) is not on the cycle
             ei([(0, 7), (7, 8), (8, 9), (9, 7), (9, 1), (1, 2), (3, 4)])]
    for seed in range(6):
        edge_index = random_dag(15, 0.2, seed=seed)
        if edge_index.size(1) == 0:
            continue
        # add a back edge closing a path of length >= 2
        g = nx.DiGraph(edge_index.t().tolist())
        paths = [(u, w) for u in g for w in nx.descendants(g, u) if not g.has_edge(u, w)]
        if not paths:
            paths = [tuple(edge_index[:, 0].tolist())]
        u, w = paths[rng.randrange(len(paths))]
        cases.append(torch.cat([edge_index, torch.tensor([[w], [u]])], 1))
    return cases


@pytest.mark.parametrize("method", ["networkx", "torch"])
@pytest.mark.parametrize("case", range(len(_cyclic_cases())))
def test_topological_levels_cycle_names_node_on_cycle(method, case):
    edge_index = _cyclic_cases()[case]
    with pytest.raises(ValueError, match="cycle") as info:
        topological_levels(edge_index, method=method)
    m = re.search(r"node (\d+)", str(info.value))
    assert m, f"message names no node: {info.value}"
    assert on_cycle(edge_index, int(m.group(1))), (str(info.value), edge_index.tolist())


@pytest.mark.parametrize("method", ["networkx", "torch"])
def test_topological_levels_self_loop(method):
    with pytest.raises(ValueError, match="self-loop"):
        topological_levels(ei([(0, 1), (1, 1)]), method=method)


def test_topological_levels_unknown_method():
    with pytest.raises(ValueError, match="method"):
        topological_levels(ei([(0, 1)]), method="bogus")


# ---------------------------------------------------------------------------------------------
# to_dag / reverse_dag
# ---------------------------------------------------------------------------------------------
def random_undirected(n, p, seed):
    rng = random.Random(seed)
    pairs = [(u, w) for u in range(n) for w in range(u + 1, n) if rng.random() < p]
    stored = []
    for u, w in pairs:
        stored += [(u, w), (w, u)]
    rng.shuffle(stored)
    return stored


@pytest.mark.parametrize("n,p,seed", [(1, 0.5, 0), (2, 1.0, 1), (8, 0.4, 2), (20, 0.2, 3),
                                      (30, 0.1, 4)])
def test_to_dag_undirected(n, p, seed):
    from torch_geometric.utils import to_undirected
    stored = random_undirected(n, p, seed)
    edge_index = ei(stored)
    # attributes depend on the undirected pair only (as in PyG's to_undirected)
    attr = torch.tensor([[min(u, w) * 100.0 + max(u, w), float(u + w)] for u, w in stored])
    attr = attr.reshape(-1, 2)
    ei_before, attr_before = edge_index.clone(), attr.clone()
    out, out_attr = to_dag(edge_index, attr, num_nodes=n)
    assert torch.equal(edge_index, ei_before) and torch.equal(attr, attr_before)
    got = arcs_of(out)
    expected = sorted({(min(u, w), max(u, w)) for u, w in stored})
    assert sorted(got) == expected and len(got) == len(expected)  # each edge once, low -> high
    assert got == sorted(got)  # documented: sorted by (tail, head)
    for (u, w), a in zip(got, out_attr.tolist()):
        assert a == [u * 100.0 + w, float(u + w)]
    topological_levels(out, num_nodes=n)  # acyclic
    # PyG's own undirected form gives the same DAG
    pyg = to_undirected(edge_index, num_nodes=n)
    assert arcs_of(to_dag(pyg, num_nodes=n)[0]) == got


def nx_bfs_order(n, stored):
    """Visiting order of networkx's BFS, one search per component from its lowest node,
    neighbours in id order (the documented order of bfs_rank)."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(stored)
    order = []
    for root in range(n):
        if root not in order:
            order += [root] + [w for _, w in nx.bfs_edges(graph, root,
                                                          sort_neighbors=sorted)]
    return order


@pytest.mark.parametrize("n,p,seed", [(1, 0.5, 0), (2, 1.0, 1), (8, 0.4, 2), (20, 0.2, 3),
                                      (30, 0.1, 4), (40, 0.05, 5)])
def test_bfs_orientation_against_networkx(n, p, seed):
    from torch_geometric.data import Data
    stored = random_undirected(n, p, seed)
    edge_index = ei(stored) if stored else torch.empty(2, 0, dtype=torch.long)
    order = nx_bfs_order(n, stored)
    rank = plstm_graph.dag.bfs_rank(edge_index, n)
    assert rank.tolist() == [order.index(v) for v in range(n)]
    prepared = plstm_graph.PrepareDAG(orient="bfs")(Data(edge_index=edge_index, num_nodes=n))
    got = arcs_of(prepared.dag_edge_index)
    pos = {v: i for i, v in enumerate(order)}
    expected = {(u, w) if pos[u] < pos[w] else (w, u) for u, w in stored}
    assert sorted(got) == sorted(expected) and len(got) == len(expected)
    # every BFS tree edge points from parent to child, so a node's level (longest path from
    # a source) is at least its distance from the root, and the root is a source
    level = prepared.dag_level.tolist()
    graph = nx.Graph(stored)
    for root in {min(c) for c in nx.connected_components(graph)}:
        for v, dist in nx.single_source_shortest_path_length(graph, root).items():
            assert level[v] >= dist if v != root else level[v] == 0


def test_to_dag_keeps_first_occurrence_attr_and_one_direction_input():
    edge_index = ei([(3, 1), (1, 3), (0, 2), (2, 0), (1, 2)])
    attr = torch.arange(5.0)[:, None]
    out, out_attr = to_dag(edge_index, attr)
    assert arcs_of(out) == [(0, 2), (1, 2), (1, 3)]
    assert out_attr[:, 0].tolist() == [2.0, 4.0, 0.0]
    out2, none = to_dag(edge_index)
    assert none is None and torch.equal(out2, out)


def test_to_dag_empty():
    out, attr = to_dag(torch.empty(2, 0, dtype=torch.long), torch.empty(0, 3), num_nodes=4)
    assert out.shape == (2, 0) and attr.shape == (0, 3)


def test_to_dag_self_loop_raises():
    with pytest.raises(ValueError, match="self-loop"):
        to_dag(ei([(0, 1), (1, 0), (2, 2)]))


def test_to_dag_with_rank_permutation():
    rank = torch.tensor([3, 0, 2, 1])
    stored = random_undirected(4, 1.0, 0)
    out, _ = to_dag(ei(stored), rank=rank)
    got = arcs_of(out)
    assert len(got) == 6
    for u, w in got:
        assert rank[u] < rank[w]


def test_to_dag_with_rank_not_a_permutation():
    # ranks are distinct, so the docstring accepts them; (0,1) and (2,3) are distinct edges
    rank = torch.tensor([0, 8, 1, 4])
    out, _ = to_dag(ei([(0, 1), (1, 0), (2, 3), (3, 2)]), rank=rank)
    assert sorted(arcs_of(out)) == [(0, 1), (2, 3)]


@pytest.mark.parametrize("n,p,seed", DAG_CASES)
def test_reverse_dag(n, p, seed):
    edge_index = random_dag(n, p, seed=seed)
    before = edge_index.clone()
    rev = reverse_dag(edge_index)
    assert torch.equal(edge_index, before)
    assert rev[0].tolist() == edge_index[1].tolist() and rev[1].tolist() == edge_index[0].tolist()
    assert torch.equal(reverse_dag(rev), edge_index)
    # reversed levels: the reverse of a DAG is a DAG, edge ids unchanged
    level = topological_levels(rev, num_nodes=n)
    assert level.tolist() == nx_generations(rev, n)
    # line graph of the reverse is the transposed line graph
    assert sorted(arcs_of(line_graph(rev, num_nodes=n))) == \
        sorted((b, a) for a, b in arcs_of(line_graph(edge_index, num_nodes=n)))


# ---------------------------------------------------------------------------------------------
# build_schedule
# ---------------------------------------------------------------------------------------------
def _check_csr(ptr, items, keys, size):
    """ptr[size+1] / items: CSR of range(len(keys)) grouped by key, ids ascending per group."""
    assert ptr.dtype == torch.long and items.dtype == torch.long
    assert ptr.numel() == size + 1 and int(ptr[0]) == 0 and int(ptr[-1]) == len(keys)
    assert bool((ptr[1:] >= ptr[:-1]).all())
    assert sorted(items.tolist()) == list(range(len(keys)))
    p = ptr.tolist()
    for g in range(size):
        group = items[p[g]:p[g + 1]].tolist()
        assert group == [i for i in range(len(keys)) if keys[i] == g]


SCHED_CASES = DAG_CASES + [(0, 0.0, 0), (6, 0.0, 1)]


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("n,p,seed", SCHED_CASES)
def test_build_schedule_invariants(mode, n, p, seed):
    edge_index = random_dag(n, p, seed=seed)
    lg = line_graph(edge_index, num_nodes=n)
    if mode == "D":
        lg = multitree(edge_index, lg)
    s = build_schedule(edge_index, lg, num_nodes=n)
    E, L = edge_index.size(1), lg.size(1)
    assert s.num_nodes == n and s.num_edges == E and s.num_arcs == L
    assert torch.equal(s.edge_src, edge_index[0]) and torch.equal(s.edge_dst, edge_index[1])
    assert torch.equal(s.arc_src, lg[0]) and torch.equal(s.arc_dst, lg[1])
    node_level = nx_generations(edge_index, n)
    edge_level = [node_level[u] for u in edge_index[0].tolist()]
    num_levels = max(edge_level) + 1 if E else 0
    assert s.num_levels == num_levels
    assert s.level_ptr.device.type == "cpu" and s.arc_level_ptr.device.type == "cpu"
    _check_csr(s.level_ptr, s.edge_order, edge_level, num_levels)
    arc_level = [edge_level[b] for b in lg[1].tolist()]
    _check_csr(s.arc_level_ptr, s.arc_order, arc_level, num_levels)
    _check_csr(s.in_ptr, s.in_arc, lg[1].tolist(), E)
    _check_csr(s.out_ptr, s.out_arc, lg[0].tolist(), E)
    _check_csr(s.node_ptr, s.node_edge, edge_index[1].tolist(), n)
    # every arc climbs: from a lower-level edge to a higher-level edge
    for a, b in arcs_of(lg):
        assert edge_level[a] < edge_level[b]
    assert all(t.dtype == torch.long for t in s.index_tensors())


def test_build_schedule_with_node_level_and_torch_levels():
    edge_index = random_dag(15, 0.3, seed=2)
    lg = line_graph(edge_index, num_nodes=15)
    ref = build_schedule(edge_index, lg, num_nodes=15)
    via_torch = build_schedule(edge_index, lg, num_nodes=15, level_method="torch")
    level = topological_levels(edge_index, 15)
    check_node_level(edge_index, level, 15)
    given = build_schedule(edge_index, lg, num_nodes=15, node_level=level)
    for other in (via_torch, given):
        for x, y in zip(ref.index_tensors(), other.index_tensors()):
            assert torch.equal(x, y)
    with pytest.raises(ValueError, match="node_level"):
        build_schedule(edge_index, lg, num_nodes=15, node_level=level.flip(0) * 0)


# ---------------------------------------------------------------------------------------------
# components (the closed form's layout)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_weakly_connected_components_match_networkx(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    parts, off = [], 0
    while off < n:
        size = min(n - off, rng.randint(1, 12))
        parts.append(random_dag(size, rng.choice([0.0, 0.2, 0.5]), seed=seed * 100 + off) + off)
        off += size
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    edge_index = perm[torch.cat(parts, 1)] if parts else torch.empty(2, 0, dtype=torch.long)
    comp, count = plstm_graph.dag.weakly_connected_components(edge_index, n)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edge_index.t().tolist())
    expected = sorted(sorted(c) for c in nx.connected_components(g))
    assert count == len(expected)
    # numbered by lowest node id
    assert [sorted((comp == c).nonzero().view(-1).tolist()) for c in range(count)] == expected


def test_weakly_connected_components_long_chain_and_empty():
    n = 5000
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    edge_index = torch.stack([perm[:-1], perm[1:]])
    comp, count = plstm_graph.dag.weakly_connected_components(edge_index, n)
    assert count == 1 and bool((comp == 0).all())
    comp, count = plstm_graph.dag.weakly_connected_components(
        torch.empty(2, 0, dtype=torch.long), 3)
    assert count == 3 and comp.tolist() == [0, 1, 2]


def test_schedule_component_layout():
    edge_index = torch.cat([random_dag(9, 0.4, seed=1), random_dag(7, 0.5, seed=2) + 9], 1)
    n = 18  # nodes 16 and 17 are isolated
    lg = line_graph(edge_index, n)
    s = build_schedule(edge_index, lg, n)
    level = topological_levels(edge_index, n).tolist()
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edge_index.t().tolist())
    sizes = sorted(len(c) for c in nx.connected_components(g))
    assert s.num_components == len(sizes) and s.max_component_nodes == sizes[-1]
    assert s.component_pairs == sum(k * (k - 1) // 2 for k in sizes)
    ptr, nodes = s.comp_node_ptr.tolist(), s.comp_node.tolist()
    eptr, edges = s.comp_edge_ptr.tolist(), s.comp_edge.tolist()
    assert sorted(nodes) == list(range(n)) and sorted(edges) == list(range(edge_index.size(1)))
    src = edge_index[0].tolist()
    for c in range(s.num_components):
        members = nodes[ptr[c]:ptr[c + 1]]
        assert set(members) in [set(x) for x in nx.connected_components(g)]
        assert [level[u] for u in members] == sorted(level[u] for u in members)
        own = edges[eptr[c]:eptr[c + 1]]
        assert all(src[e] in members for e in own)
        assert [level[src[e]] for e in own] == sorted(level[src[e]] for e in own)


@pytest.mark.parametrize("per_edge", [0, 10 ** 9])  # the vectorised and the per-edge count
@pytest.mark.parametrize("seed", range(4))
def test_ancestor_pairs_match_networkx(seed, per_edge, monkeypatch):
    monkeypatch.setattr(plstm_graph.dag.schedule, "_PER_EDGE_COUNT_EDGES_PER_LEVEL", per_edge)
    parts, off = [], 0
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 6)):
        size = rng.randint(1, 90)  # past 64: more than one word of flags per node
        parts.append(random_dag(size, rng.choice([0.05, 0.2, 0.5]), seed=seed * 10 + off) + off)
        off += size
    edge_index = torch.cat(parts, 1)
    s = build_schedule(edge_index, line_graph(edge_index, off), off)
    g = nx.DiGraph()
    g.add_nodes_from(range(off))
    g.add_edges_from(edge_index.t().tolist())
    assert s.ancestor_pairs == sum(len(nx.ancestors(g, v)) for v in g)
    assert s.ancestor_pairs <= s.component_pairs


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("by", ["id", "bfs", "permutation"])
def test_orient_maps_every_input_edge_to_its_oriented_dag_edge(seed, by):
    from plstm_graph.dag.orientation import orient_pairs
    n = 15
    stored = random_undirected(n, 0.3, seed)
    edge_index = ei(stored)  # PyG's both directions, shuffled
    rank = {"id": None, "bfs": plstm_graph.dag.bfs_rank(edge_index, n),
            "permutation": torch.randperm(n, generator=torch.Generator().manual_seed(seed))}[by]
    dag, edge_map = orient_pairs(edge_index, n, rank)
    key = torch.arange(n) if rank is None else rank
    assert dag.size(1) == len(stored) // 2
    assert bool((key[dag[0]] < key[dag[1]]).all())  # every DAG edge climbs in rank
    for i, (u, w) in enumerate(edge_index.t().tolist()):
        a, b = dag[:, edge_map[i]].tolist()
        assert {a, b} == {u, w}
    assert dag.tolist() == plstm_graph.to_dag(edge_index, rank=rank)[0].tolist()
