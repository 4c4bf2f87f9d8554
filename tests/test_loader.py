"""DAGNeighborLoader: sampled ancestor cones of one large DAG."""
import networkx as nx
import pytest
import torch
from harness import perturb, random_dag
from torch_geometric.data import Data

from plstm_graph import PLSTMConv, topological_levels
from plstm_graph.loader import DAGNeighborLoader, DAGNeighborSampler


def _graph(num_nodes=40, edge_prob=0.15, seed=0, edge_dim=None, feat=5):
    edge_index = random_dag(num_nodes, edge_prob, seed=seed)  # random node ids
    g = torch.Generator().manual_seed(seed)
    data = Data(x=torch.randn(num_nodes, feat, generator=g, dtype=torch.float64),
                edge_index=edge_index, y=torch.arange(num_nodes), num_nodes=num_nodes)
    if edge_dim is not None:
        data.edge_attr = torch.randn(edge_index.size(1), edge_dim, generator=g,
                                     dtype=torch.float64)
    return data


def _longest_path(edge_index, num_nodes):
    return int(topological_levels(edge_index, num_nodes).max()) if edge_index.numel() else 0


def _ancestors(edge_index, num_nodes, targets):
    g = nx.DiGraph()
    g.add_nodes_from(range(num_nodes))
    g.add_edges_from(edge_index.t().tolist())
    out = set(targets)
    for t in targets:
        out |= nx.ancestors(g, t)
    return out


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("edge_dim", [None, 3])
def test_full_depth_minibatch_equals_full_graph(mode, edge_dim):
    data = _graph(edge_dim=edge_dim, seed=1)
    n = data.num_nodes
    conv = perturb(PLSTMConv(5, 8, heads=2, mode=mode, edge_dim=edge_dim).double())
    full = conv(data.x, data.edge_index, data.get("edge_attr"))
    depth = _longest_path(data.edge_index, n)
    assert depth >= 4  # deep enough that truncating the cone would matter
    loader = DAGNeighborLoader(data, [-1] * depth, batch_size=7, shuffle=True,
                               generator=torch.Generator().manual_seed(0))
    got = torch.full_like(full, float("nan"))
    for batch in loader:
        out = conv(batch.x, batch.edge_index, batch.get("edge_attr"))
        got[batch.n_id[:batch.batch_size]] = out[:batch.batch_size]
    torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-10)


def test_without_stubs_p_mode_differs():
    """The out-degree stubs are what makes P-mode exact: without them the transitions of a
    cone node are normalised over fewer out-edges."""
    data = _graph(seed=1)
    conv = perturb(PLSTMConv(5, 8, heads=2, mode="P").double())
    full = conv(data.x, data.edge_index)
    depth = _longest_path(data.edge_index, data.num_nodes)
    differs = False
    for batch in DAGNeighborLoader(data, [-1] * depth, batch_size=7, keep_out_degree=False):
        assert batch.num_stub_nodes == 0
        out = conv(batch.x, batch.edge_index)[:batch.batch_size]
        differs |= not torch.allclose(out, full[batch.n_id[:batch.batch_size]], atol=1e-8)
    assert differs


def test_truncated_depth_is_not_exact():
    data = _graph(seed=1)
    conv = perturb(PLSTMConv(5, 8, heads=2, mode="D").double())
    full = conv(data.x, data.edge_index)
    level = topological_levels(data.edge_index, data.num_nodes)
    deepest = (level == level.max()).nonzero().view(-1)
    # one hop back from the deepest nodes misses most of their ancestors
    batch = next(iter(DAGNeighborLoader(data, [-1], input_nodes=deepest,
                                        batch_size=deepest.numel())))
    out = conv(batch.x, batch.edge_index)[:batch.batch_size]
    assert not torch.allclose(out, full[deepest], atol=1e-6)
    # the full depth restores them
    batch = next(iter(DAGNeighborLoader(data, [-1] * int(level.max()), input_nodes=deepest,
                                        batch_size=deepest.numel())))
    out = conv(batch.x, batch.edge_index)[:batch.batch_size]
    torch.testing.assert_close(out, full[deepest], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("keep_out_degree", [True, False])
def test_sample_is_a_sub_dag_with_targets_first(keep_out_degree):
    data = _graph(num_nodes=60, edge_prob=0.2, seed=3, edge_dim=2)
    n, edges = data.num_nodes, data.edge_index
    depth = _longest_path(edges, n)
    g = torch.Generator().manual_seed(0)
    for num_neighbors in ([-1] * depth, [2, 1, 3], [0, 2]):
        loader = DAGNeighborLoader(data, num_neighbors, batch_size=9, shuffle=True,
                                   keep_out_degree=keep_out_degree, sampling_generator=g,
                                   generator=torch.Generator().manual_seed(1))
        seen = []
        for batch in loader:
            b, stubs = batch.batch_size, batch.num_stub_nodes
            num = batch.num_nodes
            targets = batch.n_id[:b]
            seen += targets.tolist()
            assert torch.equal(targets, loader.input_nodes[batch.input_id])
            assert torch.equal(batch.y, data.y[batch.n_id])  # node attributes follow n_id
            assert torch.equal(batch.x, data.x[batch.n_id])
            assert torch.equal(batch.edge_attr, data.edge_attr[batch.e_id])
            # every local edge is the global edge it names (stubs: a copy of the head)
            assert torch.equal(batch.n_id[batch.edge_index], edges[:, batch.e_id])
            assert batch.e_id.unique().numel() == batch.e_id.numel()
            cone = batch.n_id[:num - stubs]
            assert cone.unique().numel() == cone.numel()  # no node twice, stubs aside
            # acyclic: the sampler's output levels without a cycle error
            topological_levels(batch.edge_index, num, method="networkx")
            # hop accounting
            assert batch.num_sampled_nodes[0] == b
            assert sum(batch.num_sampled_nodes) == num - stubs
            assert sum(batch.num_sampled_edges) == batch.edge_index.size(1) - stubs
            assert len(batch.num_sampled_nodes) == len(num_neighbors) + 1
            # stubs: the last nodes and edges, leaves fed by one stub edge each
            stub_edges = batch.edge_index[:, batch.edge_index.size(1) - stubs:]
            assert torch.equal(stub_edges[1], torch.arange(num - stubs, num))
            assert bool((batch.edge_index[1, :batch.edge_index.size(1) - stubs]
                         < num - stubs).all())
            # everything sampled is an ancestor of a target
            assert set(cone.tolist()) <= _ancestors(edges, n, targets.tolist())
            if num_neighbors[0] == -1 and len(num_neighbors) >= depth:
                assert set(cone.tolist()) == _ancestors(edges, n, targets.tolist())
        assert sorted(seen) == list(range(n))


def test_stubs_restore_the_out_degree():
    data = _graph(num_nodes=50, edge_prob=0.2, seed=4)
    sampler = DAGNeighborSampler(data.edge_index, data.num_nodes, [2, 2])
    full_out = torch.bincount(data.edge_index[0], minlength=data.num_nodes)
    s = sampler.sample(torch.tensor([7, 3, 30]), torch.Generator().manual_seed(0))
    local_out = torch.bincount(s.edge_index[0], minlength=s.node.numel())
    cone = s.edge_index[:, :s.edge_index.size(1) - s.num_stubs]
    has_in = torch.zeros(s.node.numel(), dtype=torch.bool)
    has_in[cone[1]] = True
    has_out = torch.zeros(s.node.numel(), dtype=torch.bool)
    has_out[cone[0]] = True
    # nodes that pass states on inside the cone see the full graph's out-degree
    transit = (has_in & has_out).nonzero().view(-1)
    assert transit.numel() > 0 and s.num_stubs > 0
    assert torch.equal(local_out[transit], full_out[s.node[transit]])
    # and only they get stubs: e.g. a target with out-edges in the graph but none in the cone
    stub_tails = s.edge_index[0, s.edge_index.size(1) - s.num_stubs:]
    assert bool((has_in & has_out)[stub_tails].all())
    leaf_targets = [i for i in range(3) if not has_out[i] and full_out[s.node[i]] > 0]
    assert leaf_targets and all(local_out[i] == 0 for i in leaf_targets)


def test_fan_in_and_depth_bound_the_sample():
    # a wide layered DAG where every node has many in-edges
    torch.manual_seed(0)
    layers, width, fan = 6, 30, 8
    src, dst = [], []
    for layer in range(1, layers):
        for w in range(width):
            parents = torch.randperm(width)[:fan] + (layer - 1) * width
            src += parents.tolist()
            dst += [layer * width + w] * fan
    perm = torch.randperm(layers * width)  # random node ids
    edge_index = perm[torch.tensor([src, dst])]
    data = Data(x=torch.randn(layers * width, 3), edge_index=edge_index,
                num_nodes=layers * width)
    targets = perm[(layers - 1) * width:]
    num_neighbors = [3, 2, 2]
    loader = DAGNeighborLoader(data, num_neighbors, input_nodes=targets, batch_size=4,
                               keep_out_degree=False,
                               sampling_generator=torch.Generator().manual_seed(0))
    for batch in loader:
        b = batch.batch_size
        bound, frontier = b, b
        for hop, k in enumerate(num_neighbors):
            assert batch.num_sampled_edges[hop] <= frontier * k
            frontier = frontier * k
            bound += frontier
        assert batch.num_nodes <= bound
        assert batch.edge_index.size(1) <= sum(batch.num_sampled_nodes[h] * k for h, k
                                               in enumerate(num_neighbors))
        indeg = torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)
        assert int(indeg[:b].max()) == 3  # every target has 8 in-edges and keeps exactly 3
        assert int(indeg.max()) <= 3
        # depth: nothing beyond the third hop back
        level = topological_levels(batch.edge_index, batch.num_nodes)
        assert int(level.max()) <= len(num_neighbors)


def test_fan_in_sampling_is_uniform():
    # one node with 6 parents, fan-in 2: every parent is picked with probability 1/3
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [6, 6, 6, 6, 6, 6]])
    sampler = DAGNeighborSampler(edge_index, 7, [2])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(7)
    for _ in range(3000):
        s = sampler.sample(torch.tensor([6]), g)
        assert s.edge_index.size(1) == 2
        counts[s.node[1:]] += 1
    assert torch.allclose(counts[:6] / 3000, torch.full((6,), 1 / 3), atol=0.04)


def test_sampling_generator_makes_batches_reproducible():
    data = _graph(num_nodes=60, edge_prob=0.2, seed=5)

    def run():
        loader = DAGNeighborLoader(data, [2, 2], batch_size=10,
                                   sampling_generator=torch.Generator().manual_seed(7))
        return [b.e_id for b in loader]

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_edgeless_and_empty_graphs():
    data = Data(x=torch.randn(5, 2), edge_index=torch.empty(2, 0, dtype=torch.long),
                num_nodes=5)
    (batch,) = list(DAGNeighborLoader(data, [-1, -1], batch_size=5))
    assert batch.num_nodes == 5 and batch.edge_index.shape == (2, 0)
    assert batch.num_sampled_nodes == [5, 0, 0]
    out = PLSTMConv(2, 4)(batch.x, batch.edge_index)
    assert out.shape == (5, 4)
    empty = Data(x=torch.randn(0, 2), edge_index=torch.empty(2, 0, dtype=torch.long),
                 num_nodes=0)
    assert list(DAGNeighborLoader(empty, [1], batch_size=4)) == []


def test_bad_input():
    data = _graph(num_nodes=10, seed=0)
    with pytest.raises(TypeError, match="num_neighbors"):
        DAGNeighborLoader(data, 3)
    with pytest.raises(ValueError, match="num_neighbors"):
        DAGNeighborLoader(data, [2, -2])
    with pytest.raises(ValueError, match="twice"):
        DAGNeighborLoader(data, [1], input_nodes=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="range"):
        DAGNeighborLoader(data, [1], input_nodes=torch.tensor([10]))
    with pytest.raises(ValueError, match="mask"):
        DAGNeighborLoader(data, [1], input_nodes=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="Data"):
        DAGNeighborLoader(data.edge_index, [1])
    with pytest.raises(ValueError, match="collate_fn"):
        DAGNeighborLoader(data, [1], collate_fn=list)
    cyclic = Data(x=torch.randn(3, 1), edge_index=torch.tensor([[0, 1, 2], [1, 2, 0]]),
                  num_nodes=3)
    with pytest.raises(ValueError, match="cycle"):
        DAGNeighborLoader(cyclic, [1])
    sampler = DAGNeighborSampler(data.edge_index, 10, [1])
    with pytest.raises(ValueError, match="distinct"):
        sampler.sample(torch.tensor([2, 2]))
    with pytest.raises(TypeError):
        sampler.sample(torch.tensor([2.0]))
    # a failed call leaves the sampler usable
    assert sampler.sample(torch.tensor([2, 3])).num_targets == 2
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4]] = True
    loader = DAGNeighborLoader(data, [1], input_nodes=mask, batch_size=8)
    assert next(iter(loader)).n_id[:2].tolist() == [1, 4]


def test_worker_processes_give_the_same_cones():
    data = _graph(num_nodes=50, edge_prob=0.2, seed=6)
    depth = _longest_path(data.edge_index, data.num_nodes)
    # full depth and fan-in: no randomness, so workers must reproduce the in-process batches
    kwargs = dict(batch_size=8, keep_out_degree=True)
    local = [b.e_id for b in DAGNeighborLoader(data, [-1] * depth, **kwargs)]
    forked = [b.e_id for b in DAGNeighborLoader(data, [-1] * depth, num_workers=2, **kwargs)]
    assert len(local) == len(forked) and all(torch.equal(a, b) for a, b in zip(local, forked))
