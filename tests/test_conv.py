"""PLSTMConv, PrepareDAG / DAGData collation and DAGPlan."""
import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.loader import DataLoader

import plstm_graph
from plstm_graph import PLSTMConv, line_graph, multitree
from plstm_graph.transforms import DAGData, DAGPlan, PrepareDAG

from harness import perturb, plstm_oracle, random_dag, undirected_graph


def _conv_reference(conv, x, edge_index, line_index, edge_attr=None):
    """The layer's math written out with the float64 oracle as the scan."""
    n, h = x.size(0), conv.heads
    q = conv.lin_query(x).view(n, h, -1)
    k = conv.lin_key(x).view(n, h, -1)
    v = conv.lin_value(x).view(n, h, -1)
    src, dst = edge_index
    a, b = line_index
    ea = [] if edge_attr is None else [edge_attr]

    def lin(gate, node, parts):
        out = gate.node(x)[node]
        for layer, (feat, ids) in zip(gate.edges, parts):
            out = out + layer(feat)[ids]
        return out

    S = torch.sigmoid(lin(conv.source_gate, src, [(f, slice(None)) for f in ea]))
    M = torch.sigmoid(lin(conv.mark_gate, dst, [(f, slice(None)) for f in ea]))
    D = torch.sigmoid(conv.direct_gate.node(x))
    t = lin(conv.transition_gate, dst[a], [(f, i) for f in ea for i in (a, b)][:2 * len(ea)])
    if conv.mode == "D":
        T = torch.tanh(t)
    else:
        T = torch.empty_like(t)
        for j in range(t.size(0)):
            same = a == a[j]
            T[j] = t[j] / (conv.alpha + t[same].abs().sum(0))
    y = plstm_oracle(q, k, v, S, T, M, D, edge_index, line_index)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + conv.norm_eps) * conv.norm_weight
    return conv.lin_out(y.reshape(n, -1))


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("edge_dim", [None, 3])
def test_conv_matches_written_out_math(mode, edge_dim):
    num_nodes = 13
    ei = random_dag(num_nodes, 0.3, seed=4)
    line = line_graph(ei, num_nodes)
    if mode == "D":
        line = multitree(ei, line)
    conv = perturb(PLSTMConv(5, 7, heads=2, mode=mode, edge_dim=edge_dim, key_dim=3,
                              value_dim=4).double())
    x = torch.randn(num_nodes, 5, dtype=torch.float64)
    attr = torch.randn(ei.size(1), 3, dtype=torch.float64) if edge_dim else None
    out = conv(x, ei, attr, line_index=line)
    ref = _conv_reference(conv, x, ei, line, attr)
    assert out.shape == (num_nodes, 7)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    # computing the line graph itself gives the same result
    torch.testing.assert_close(conv(x, ei, attr), out, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not plstm_graph.WITH_NATIVE, reason="needs the native ops")
@pytest.mark.parametrize("algorithm", ["scan", "closed_form"])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_conv_algorithms_match_written_out_math(algorithm, mode):
    """Both native algorithms behind the layer, values and gradients, against the reference
    written out with the oracle (and therefore against each other)."""
    ei = torch.cat([random_dag(9, 0.35, seed=2), random_dag(6, 0.5, seed=3) + 9], 1)
    num_nodes = 16  # node 15 is isolated
    line = line_graph(ei, num_nodes)
    if mode == "D":
        line = multitree(ei, line)
    conv = perturb(PLSTMConv(5, 6, heads=2, mode=mode, edge_dim=2, key_dim=3, value_dim=2,
                              backend="native", algorithm=algorithm).double())
    x = torch.randn(num_nodes, 5, dtype=torch.float64, requires_grad=True)
    attr = torch.randn(ei.size(1), 2, dtype=torch.float64)
    out = conv(x, ei, attr, line_index=line)
    ref = _conv_reference(conv, x, ei, line, attr)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(out)
    params = [x] + list(conv.parameters())
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_p_mode_transitions_are_normalised():
    ei = random_dag(20, 0.4, seed=1)
    line = line_graph(ei, 20)
    conv = perturb(PLSTMConv(4, 4, heads=3, key_dim=2, value_dim=2))
    x = torch.randn(20, 4) * 10
    _, T, _, _ = conv.gates(x, ei, line)
    total = torch.zeros(ei.size(1), 3).index_add_(0, line[0], T.abs())
    assert bool((total < 1).all())
    conv_t = perturb(PLSTMConv(4, 4, heads=3, key_dim=2, value_dim=2,
                                normalize_over="target"))
    _, T, _, _ = conv_t.gates(x, ei, line)
    total = torch.zeros(ei.size(1), 3).index_add_(0, line[1], T.abs())
    assert bool((total < 1).all())


def test_init_follows_contract():
    conv = PLSTMConv(16, 8, heads=2, edge_dim=3)
    # source/mark/direct start at sigmoid(0) = 0.5 (the authors' -5 does not learn)
    assert torch.all(conv.source_gate.node.bias == 0)
    assert torch.all(conv.mark_gate.node.bias == 0)
    assert torch.all(conv.direct_gate.node.bias == 0)
    assert torch.all(PLSTMConv(16, 8, gate_bias=-5).mark_gate.node.bias == -5)
    assert torch.all(conv.transition_gate.node.bias == 6.0)
    assert torch.all(conv.source_gate.node.weight == 0)
    assert torch.all(conv.transition_gate.edges[1].weight == 0)
    assert PLSTMConv(16, 8, mode="D").transition_gate.node.bias[0] == 2.0
    # a single-successor arc starts deep in the carrying regime, T > 0.9
    t0 = conv.transition_gate.node.bias[0].detach()
    assert 0.9 < float(t0 / (0.5 + t0.abs())) < 0.95
    assert 0.95 < float(torch.tanh(torch.tensor(2.0))) < 0.97
    big = PLSTMConv(4000, 8, heads=2)
    std = big.lin_query.weight.std().item()
    assert abs(std - (2 / (5 * 4000)) ** 0.5) < 0.1 * std


def test_reset_parameters_and_repr():
    conv = PLSTMConv(8, 8, heads=2, mode="D", edge_dim=4)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    perturb(conv)
    conv.reset_parameters()
    after = conv.state_dict()
    for name in ("source_gate.node.bias", "transition_gate.node.weight", "norm_weight"):
        assert torch.equal(before[name], after[name])
    assert repr(conv) == "PLSTMConv(8, 8, heads=2, mode='D', edge_dim=4)"


def test_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        PLSTMConv(4, 4, mode="X")
    with pytest.raises(ValueError, match="key_dim"):
        PLSTMConv(4, 2, heads=4)
    conv = PLSTMConv(4, 4, heads=2, edge_dim=3)
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="edge_attr"):
        conv(torch.randn(3, 4), ei)
    with pytest.raises(ValueError, match="edge_attr must have shape"):
        conv(torch.randn(3, 4), ei, torch.randn(2, 5))
    with pytest.raises(ValueError, match="x must have shape"):
        conv(torch.randn(3, 5), ei, torch.randn(2, 3))
    with pytest.raises(ValueError, match="cycle"):
        PLSTMConv(4, 4, heads=2)(torch.randn(3, 4), torch.tensor([[0, 1, 2], [1, 2, 0]]))


@pytest.mark.parametrize("mode", ["P", "D"])
def test_permuting_node_ids_permutes_output(mode):
    n = 15
    ei = random_dag(n, 0.3, seed=7)
    conv = perturb(PLSTMConv(5, 6, heads=2, mode=mode, edge_dim=2, key_dim=3,
                              value_dim=3).double())
    x = torch.randn(n, 5, dtype=torch.float64)
    attr = torch.randn(ei.size(1), 2, dtype=torch.float64)
    perm = torch.randperm(n)  # new id of old node i is perm[i]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    out = conv(x, ei, attr)
    out_p = conv(x[inv], perm[ei], attr)
    torch.testing.assert_close(out_p[perm], out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("edge_dim", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_dataloader_batch_equals_per_graph(mode, edge_dim, reverse):
    graphs = [undirected_graph(n, seed, edge_dim) for seed, n in
              enumerate([7, 1, 12, 9, 3, 15, 10])]
    graphs.append(Data(x=torch.randn(4, 6, dtype=torch.float64),
                       edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=4))
    if edge_dim:
        graphs[-1].edge_attr = torch.empty(0, edge_dim, dtype=torch.float64)
    prepared = [PrepareDAG()(g) for g in graphs]
    assert all(isinstance(p, DAGData) for p in prepared)
    conv = perturb(PLSTMConv(6, 5, heads=2, mode=mode, edge_dim=edge_dim, key_dim=3,
                              value_dim=3).double())
    batch = next(iter(DataLoader(prepared, batch_size=len(prepared))))
    out = conv(batch.x, **_view(DAGPlan.from_data(batch), mode, reverse, edge_dim))
    singles = torch.cat([conv(p.x, **_view(DAGPlan.from_data(p), mode, reverse, edge_dim))
                         for p in prepared])
    torch.testing.assert_close(out, singles, rtol=1e-10, atol=1e-10)
    # and the schedule-free path (line graph + levels computed by the layer) agrees
    view = _view(DAGPlan.from_data(batch), mode, reverse, edge_dim)
    free = conv(batch.x, view["edge_index"], view["edge_attr"])
    torch.testing.assert_close(free, out, rtol=1e-10, atol=1e-10)


def _view(plan, mode, reverse, edge_dim):
    view = plan.view(mode, reverse)
    if edge_dim is None:
        view["edge_attr"] = None
    return view


def test_prepare_dag_stores_consistent_schedule():
    data = PrepareDAG()(undirected_graph(11, 3, edge_dim=2))
    dag = data.dag_edge_index
    assert dag.size(1) * 2 == data.edge_index.size(1)
    assert bool((dag[0] < dag[1]).all())  # oriented by id
    assert torch.equal(data.line_index_p, line_graph(dag, 11))
    assert torch.equal(data.line_index_d, multitree(dag, data.line_index_p))
    assert torch.equal(data.line_index_d_rev, multitree(dag.flip(0), data.line_index_p.flip(0)))
    lvl, lvl_rev = data.dag_level, data.dag_level_rev
    assert bool((lvl[dag[0]] < lvl[dag[1]]).all())
    assert bool((lvl_rev[dag[1]] < lvl_rev[dag[0]]).all())
    assert data.dag_edge_attr.shape == (dag.size(1), 2)


def test_prepare_dag_on_directed_input_keeps_edges():
    ei = random_dag(9, 0.4, seed=2)
    data = PrepareDAG()(Data(edge_index=ei, num_nodes=9))
    assert torch.equal(data.dag_edge_index, ei)
    cyc = Data(edge_index=torch.tensor([[0, 1, 2], [1, 2, 0]]), num_nodes=3)
    with pytest.raises(ValueError, match="cycle"):
        PrepareDAG()(cyc)
    with pytest.raises(ValueError, match="orient"):
        PrepareDAG(orient="sideways")


def test_collation_offsets():
    prepared = [PrepareDAG()(undirected_graph(n, s)) for s, n in enumerate([6, 8, 5])]
    batch = next(iter(DataLoader(prepared, batch_size=3)))
    e_off = n_off = 0
    for i, p in enumerate(prepared):
        e = p.dag_edge_index.size(1)
        lp = p.line_index_p.size(1)
        start = sum(q.line_index_p.size(1) for q in prepared[:i])
        assert torch.equal(batch.line_index_p[:, start:start + lp], p.line_index_p + e_off)
        assert torch.equal(batch.dag_level[n_off:n_off + p.num_nodes], p.dag_level)
        e_off += e
        n_off += p.num_nodes


class _PreparedDataset(InMemoryDataset):
    def __init__(self, root):
        super().__init__(root, pre_transform=PrepareDAG())
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self):
        return []

    @property
    def processed_file_names(self):
        return ["data.pt"]

    def download(self):
        pass

    def process(self):
        data_list = [self.pre_transform(undirected_graph(n, s)) for s, n in
                     enumerate([5, 9, 7, 4])]
        self.save(data_list, self.processed_paths[0])


def test_pre_transform_in_dataset_keeps_collation(tmp_path):
    ds = _PreparedDataset(str(tmp_path))
    ds = _PreparedDataset(str(tmp_path))  # second time from the processed file
    assert isinstance(ds[0], DAGData)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    offsets = torch.tensor([0] + [ds[i].dag_edge_index.size(1) for i in range(3)]).cumsum(0)
    first = [ds[i].line_index_p + offsets[i] for i in range(4)]
    assert torch.equal(batch.line_index_p, torch.cat(first, dim=1))


def test_plan_from_graph_orients_and_caches():
    g = undirected_graph(10, 5)
    plan = DAGPlan.from_graph(g.edge_index, 10)
    v1 = plan.view("D")
    v2 = plan.view("D")
    assert v1["schedule"] is v2["schedule"]
    assert bool((v1["edge_index"][0] < v1["edge_index"][1]).all())
    with pytest.raises(ValueError, match="PrepareDAG"):
        DAGPlan.from_data(g)


def test_gradients_reach_every_parameter():
    g = PrepareDAG()(undirected_graph(12, 1, edge_dim=3))
    for mode in "PD":
        conv = PLSTMConv(6, 4, heads=2, mode=mode, edge_dim=3).double()
        out = conv(g.x, **DAGPlan.from_data(g).view(mode))
        out.pow(2).sum().backward()
        for name, p in conv.named_parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert conv.transition_gate.node.bias.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# PLSTMConv as a MessagePassing layer and on plain PyG input
# ---------------------------------------------------------------------------------------------
def _same_params(conv, **kwargs):
    other = PLSTMConv(conv.in_channels, conv.out_channels, heads=conv.heads, mode=conv.mode,
                      edge_dim=conv.edge_dim, key_dim=conv.key_dim, value_dim=conv.value_dim,
                      **kwargs).to(conv.lin_out.weight.dtype)
    other.load_state_dict(conv.state_dict())
    return other


@pytest.mark.parametrize("aggr", ["mean", "max", "min", ["sum", "mean"]])
def test_aggr_other_than_sum_is_refused(aggr):
    with pytest.raises(ValueError, match="aggr"):
        PLSTMConv(4, 4, heads=2, aggr=aggr)
    assert PLSTMConv(4, 4, heads=2, aggr="sum").aggr == "add"


def test_node_dim_and_decomposed_layers_are_refused():
    with pytest.raises(ValueError, match="node_dim"):
        PLSTMConv(4, 4, heads=2, node_dim=1)
    with pytest.raises(ValueError, match="decomposed"):
        PLSTMConv(4, 4, heads=2, decomposed_layers=2)


@pytest.mark.parametrize("mode", ["P", "D"])
def test_flow_target_to_source_runs_the_reversed_dag(mode):
    ei = random_dag(14, 0.3, seed=11)
    conv = perturb(PLSTMConv(5, 6, heads=2, mode=mode, edge_dim=2).double())
    rev = _same_params(conv, flow="target_to_source")
    x = torch.randn(14, 5, dtype=torch.float64)
    attr = torch.randn(ei.size(1), 2, dtype=torch.float64)
    out = rev(x, ei, attr)
    torch.testing.assert_close(out, conv(x, ei.flip(0), attr), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, conv(x, ei, attr))


def test_lazy_in_channels():
    ei = random_dag(9, 0.4, seed=3)
    lazy = PLSTMConv(-1, 8, heads=2, edge_dim=3)
    assert lazy.in_channels == -1
    x, attr = torch.randn(9, 5), torch.randn(ei.size(1), 3)
    out = lazy(x, ei, attr)
    assert out.shape == (9, 8) and lazy.in_channels == 5
    assert lazy.lin_query.weight.shape == (8, 5)
    assert torch.all(lazy.source_gate.node.weight == 0)  # the layer's own init, not PyG's
    eager = PLSTMConv(5, 8, heads=2, edge_dim=3)
    eager.load_state_dict(lazy.state_dict())
    torch.testing.assert_close(eager(x, ei, attr), out)
    # a lazy layer loads a state dict before its first call
    fresh = PLSTMConv(-1, 8, heads=2, edge_dim=3)
    fresh.load_state_dict(eager.state_dict())
    torch.testing.assert_close(fresh(x, ei, attr), out)
    with pytest.raises(ValueError, match="in_channels"):
        PLSTMConv(-3, 8)


def test_undirected_input_is_oriented_by_node_id():
    g = undirected_graph(12, 3, edge_dim=2)
    conv = perturb(PLSTMConv(6, 4, heads=2, edge_dim=2).double())
    dag, attr = plstm_graph.to_dag(g.edge_index, g.edge_attr, 12)
    want = conv(g.x, dag, attr)
    torch.testing.assert_close(conv(g.x, g.edge_index, g.edge_attr), want)
    # the stored order of the two directions does not matter
    perm = torch.randperm(g.edge_index.size(1))
    torch.testing.assert_close(conv(g.x, g.edge_index[:, perm], g.edge_attr[perm]), want)
    with pytest.raises(ValueError, match="cycle"):  # orient='none' keeps both directions
        _same_params(conv, orient="none")(g.x, g.edge_index, g.edge_attr)


def test_cycle_error_says_what_to_do():
    ei = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 3]])
    with pytest.raises(ValueError, match=r"cycle.*to_dag"):
        PLSTMConv(4, 4, heads=2)(torch.randn(4, 4), ei)


def test_dtype_mismatch_raises():
    ei = torch.tensor([[0, 1], [1, 2]])
    conv = PLSTMConv(4, 4, heads=2, edge_dim=2)
    with pytest.raises(TypeError, match="float64"):
        conv(torch.randn(3, 4, dtype=torch.float64), ei, torch.randn(2, 2))
    with pytest.raises(TypeError, match="edge_attr"):
        conv(torch.randn(3, 4), ei, torch.randint(0, 3, (2, 2)))
    with pytest.raises(TypeError, match="edge_attr has dtype"):
        conv(torch.randn(3, 4), ei, torch.randn(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="edge_index"):
        conv(torch.randn(3, 4), ei.float(), torch.randn(2, 2))
    sparse = torch.sparse_coo_tensor(ei, torch.ones(2), (3, 3))
    with pytest.raises(TypeError, match="sparse"):
        conv(torch.randn(3, 4), sparse, torch.randn(2, 2))
    # the whole layer in float64 works
    assert conv.double()(torch.randn(3, 4, dtype=torch.float64), ei,
                         torch.randn(2, 2, dtype=torch.float64)).dtype == torch.float64


def test_preparation_is_cached_per_edge_index_tensor(monkeypatch):
    import plstm_graph.nn.conv as conv_module

    calls = []
    real = conv_module.build_schedule
    monkeypatch.setattr(conv_module, "build_schedule",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ei = random_dag(10, 0.3, seed=5)
    conv = perturb(PLSTMConv(4, 4, heads=2, mode="D").double())
    x = torch.randn(10, 4, dtype=torch.float64)
    first = conv(x, ei)
    assert torch.equal(conv(x, ei), first) and len(calls) == 1
    torch.testing.assert_close(conv(x * 2, ei.clone()), conv(x * 2, ei))
    assert len(calls) == 3  # the clone is another tensor; then ei is prepared again
    ei[:, 0] = ei[:, 0].flip(0)  # in-place change (a reversed edge): prepared again
    other = conv(x, ei)
    assert len(calls) == 4 and not torch.allclose(other, first)
    uncached = _same_params(conv, cached=False)
    torch.testing.assert_close(uncached(x, ei), other)
    conv.reset_parameters()  # clears the cache
    conv(x, ei)
    assert len(calls) == 6  # (one for the uncached layer)


def _masked_reference(conv, x, edge_index, mask):
    """The layer with the state of every edge scaled by its mask, from the written-out math."""
    line = line_graph(edge_index, x.size(0))
    if conv.mode == "D":
        line = multitree(edge_index, line)
    handle = conv.register_propagate_forward_pre_hook(lambda *a: None)  # (hooks do not matter)
    handle.remove()
    n, h = x.size(0), conv.heads
    q, k, v, logits = conv.node_projections(x)
    S, T, M, D = conv.gates(x, edge_index, line, None, logits)
    S = S * mask[:, None]
    T = T * mask[line[1], None]
    y = plstm_oracle(q, k, v, S, T, M, D, edge_index, line)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + conv.norm_eps) * conv.norm_weight
    return conv.lin_out(y.reshape(n, -1))


@pytest.mark.parametrize("mode", ["P", "D"])
def test_edge_mask_scales_the_state_an_edge_carries(mode):
    ei = random_dag(12, 0.35, seed=8)
    conv = perturb(PLSTMConv(4, 6, heads=2, mode=mode).double())
    x = torch.randn(12, 4, dtype=torch.float64)
    mask = torch.rand(ei.size(1), dtype=torch.float64)
    mask[0] = 0.0
    torch.testing.assert_close(conv(x, ei, edge_mask=mask), _masked_reference(conv, x, ei, mask))
    torch.testing.assert_close(conv(x, ei, edge_mask=torch.ones_like(mask)), conv(x, ei))


def test_explainer_edge_masks_act_on_the_given_edges():
    from torch_geometric.explain import Explainer, GNNExplainer

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = PLSTMConv(6, 8, heads=2)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x, edge_index):
            return self.head(torch.relu(self.conv(x, edge_index)))

    torch.manual_seed(0)
    g = undirected_graph(12, 2)
    model = perturb(Net().double())
    explainer = Explainer(model, algorithm=GNNExplainer(epochs=20), explanation_type="model",
                          edge_mask_type="object", node_mask_type=None,
                          model_config=dict(mode="multiclass_classification",
                                            task_level="node", return_type="raw"))
    explanation = explainer(g.x, g.edge_index, index=11)
    mask = explanation.edge_mask
    assert mask.shape == (g.edge_index.size(1),)
    assert float(mask.max() - mask.min()) > 1e-3  # not constant
    # the explainer's mask goes through the layer exactly like edge_mask on the DAG
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
    raw = torch.randn(g.edge_index.size(1), dtype=torch.float64)
    set_masks(model, raw, g.edge_index, apply_sigmoid=True)
    explained = model.conv(g.x, g.edge_index)
    clear_masks(model)
    dag, edge_map, _ = plstm_graph.dag.orientation.orient(g.edge_index, 12, "id")
    dag_mask = torch.ones(dag.size(1), dtype=torch.float64).scatter_reduce(
        0, edge_map, raw.sigmoid(), "prod")
    torch.testing.assert_close(explained, model.conv(g.x, dag, edge_mask=dag_mask))


def test_propagate_hooks_fire_and_message_hooks_are_refused():
    ei = random_dag(8, 0.4, seed=1)
    conv = PLSTMConv(4, 4, heads=2)
    seen = []
    conv.register_propagate_forward_pre_hook(lambda m, inputs: seen.append("pre"))
    conv.register_propagate_forward_hook(lambda m, inputs, out: out * 0 + 1)
    out = conv(torch.randn(8, 4), ei)
    assert seen == ["pre"] and torch.all(out == 1)
    for name in ("register_message_forward_pre_hook", "register_message_forward_hook",
                 "register_aggregate_forward_pre_hook", "register_aggregate_forward_hook"):
        with pytest.raises(ValueError, match="propagate"):
            getattr(conv, name)(lambda *a: None)


def test_to_dag_tuple_gets_a_hint():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    with pytest.raises(TypeError, match=r"to_dag\(\.\.\.\)\[0\]"):
        PLSTMConv(4, 8)(torch.randn(3, 4), plstm_graph.to_dag(ei))
    out = PLSTMConv(4, 8)(torch.randn(3, 4), plstm_graph.to_dag(ei)[0])
    assert out.shape == (3, 8)


def test_orient_bfs_runs_on_the_bfs_dag():
    from torch_geometric.utils import to_undirected
    gen = torch.Generator().manual_seed(3)
    n = 11
    iu = torch.triu_indices(n, n, offset=1)
    edge_index = to_undirected(iu[:, torch.rand(iu.size(1), generator=gen) < 0.35])
    x = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    conv = PLSTMConv(6, 8, heads=2, orient="bfs").double()
    perturb(conv)
    dag = plstm_graph.to_dag(edge_index, rank=plstm_graph.dag.bfs_rank(edge_index, n))[0]
    plain = PLSTMConv(6, 8, heads=2, orient="none").double()
    plain.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x, edge_index), plain(x, dag))
    with pytest.raises(ValueError, match="orient must be one of"):
        PLSTMConv(6, 8, orient="random")
