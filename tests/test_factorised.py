"""``PLSTMConv(transition_form="factorised")``: P-mode transitions with edge features as
``t_n beta_b``, run node-level with ``beta`` as the op's carry, against the same per-arc
transitions written out on the line graph and fed to ``plstm_dag`` with ``line_index``."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import to_undirected

import plstm_graph
import plstm_graph.nn.conv as conv_module
from plstm_graph import DAGPlan, PLSTMConv, PLSTMNet, PrepareDAG, line_graph, plstm_dag
from plstm_graph.nn import PLSTMBlock

from harness import GRAPHS, forbid_line_graphs, plstm_oracle, random_dag

TIGHT = dict(rtol=1e-10, atol=1e-10)
IN, OUT, EDGE_DIM, HEADS = 5, 6, 3, 2


@pytest.fixture
def node_level_everywhere(monkeypatch):
    """The node-level path on sparse graphs too (the layer picks per-arc there for speed)."""
    monkeypatch.setattr(conv_module, "NODE_LEVEL_MIN_ARCS_PER_EDGE", -1.0)


def _conv(seed=0, scale=0.5, **kwargs):
    kwargs = dict(dict(heads=HEADS, edge_dim=EDGE_DIM, transition_form="factorised",
                       orient="none"), **kwargs)
    conv = PLSTMConv(IN, OUT, **kwargs).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return conv


def _features(n, e, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    return (torch.randn(n, IN, generator=g, dtype=torch.float64),
            torch.randn(e, EDGE_DIM, generator=g, dtype=torch.float64))


def _affine(lin, inp):
    out = inp @ lin.weight.t()
    return out if lin.bias is None else out + lin.bias


def arc_transitions(conv, x, edge_index, edge_attr, line):
    """``T_{a->b}`` per arc from the written-out factorised form: the logit ``t_n beta_b``
    normalised like every P-mode logit (over the arcs leaving ``a``, or entering ``b``)."""
    src, dst = edge_index
    t = _affine(conv.transition_gate.node, x)                                     # [N, H]
    beta = (_affine(conv.transition_factor_gate.node, x)[src] +
            conv.transition_factor_gate.edges[0](edge_attr))                      # [E, H]
    logit = t[dst[line[0]]] * beta[line[1]]
    axis = line[0] if conv.normalize_over == "source" else line[1]
    total = logit.new_zeros(edge_index.size(1), conv.heads).index_add(0, axis, logit.abs())
    return logit / (conv.alpha + total[axis])


def reference(conv, x, edge_index, edge_attr, edge_mask=None, oracle=False):
    """The layer from its parameters: per-arc transitions on the full line graph, fed to
    ``plstm_dag`` with ``line_index`` (or to the float64 oracle)."""
    n, h = x.size(0), conv.heads
    src, dst = edge_index
    line = line_graph(edge_index, n)
    q = (x @ conv.lin_query.weight.t()).reshape(n, h, conv.key_dim)
    k = (x @ conv.lin_key.weight.t()).reshape(n, h, conv.key_dim)
    v = (x @ conv.lin_value.weight.t()).reshape(n, h, conv.value_dim)
    S = torch.sigmoid(_affine(conv.source_gate.node, x)[src] +
                      conv.source_gate.edges[0](edge_attr))
    M = torch.sigmoid(_affine(conv.mark_gate.node, x)[dst] + conv.mark_gate.edges[0](edge_attr))
    D = torch.sigmoid(_affine(conv.direct_gate.node, x))
    T = arc_transitions(conv, x, edge_index, edge_attr, line)
    if edge_mask is not None:
        S = S * edge_mask[:, None]
        T = T * edge_mask[line[1], None]
    if oracle:
        y = plstm_oracle(q, k, v, S, T, M, D, edge_index, line)
    else:
        y = plstm_dag(q, k, v, S, T, M, D, edge_index, line, backend="torch")
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + conv.norm_eps) * conv.norm_weight
    return conv.lin_out(y.reshape(n, h * conv.value_dim))


def _compare(conv, x, edge_index, edge_attr, edge_mask=None):
    xs = [x.clone().requires_grad_(True), edge_attr.clone().requires_grad_(True)]
    out = conv(xs[0], edge_index, xs[1], edge_mask=edge_mask)
    ys = [x.clone().requires_grad_(True), edge_attr.clone().requires_grad_(True)]
    ref = reference(conv, ys[0], edge_index, ys[1], edge_mask)
    torch.testing.assert_close(out, ref, **TIGHT)
    if out.numel() == 0:
        return
    g = torch.randn_like(out)
    params = list(conv.parameters())
    got = torch.autograd.grad(out, xs + params, g, allow_unused=True)
    want = torch.autograd.grad(ref, ys + params, g, allow_unused=True)
    for i, (a, b) in enumerate(zip(got, want)):
        if a is None or b is None:  # (unused on edgeless graphs: the edge-feature maps)
            assert (a is None or not a.any()) and (b is None or not b.any()), i
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"grad {i}: {m}")


@pytest.mark.parametrize("normalize_over", ["source", "target"])
@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("backend", [None, "torch"])
def test_node_level_equals_per_arc_transitions(node_level_everywhere, normalize_over, graph,
                                               backend):
    edge_index, n = GRAPHS[graph]()
    conv = _conv(seed=len(graph), normalize_over=normalize_over, backend=backend)
    assert conv.node_level_transitions()
    prepared = conv.prepare(edge_index, n)
    if edge_index.size(1):  # (without edges there is nothing to choose: 0 arcs, 0 edges)
        assert prepared.line_index is None  # node-level: no line graph
        assert isinstance(prepared.schedule, plstm_graph.dag.NodeSchedule)
    x, e = _features(n, edge_index.size(1), seed=len(graph))
    _compare(conv, x, edge_index, e)


@pytest.mark.parametrize("graph", ["random12", "dense60", "sparse31", "edgeless"])
def test_default_density_rule_gives_the_same_function(graph):
    """Without the fixture, sparse graphs run the factorised transitions per arc (faster
    there), dense ones node-level: the same function either way."""
    edge_index, n = GRAPHS[graph]()
    conv = _conv(seed=3)
    dense = conv_module.prefers_node_level(conv_module.count_arcs(edge_index, n),
                                           edge_index.size(1))
    assert (conv.prepare(edge_index, n).line_index is None) == dense
    x, e = _features(n, edge_index.size(1), seed=3)
    _compare(conv, x, edge_index, e)


def test_reference_agrees_with_the_oracle():
    """The written-out reference itself, through plstm_dag, against the per-edge oracle."""
    edge_index, n = GRAPHS["random12"]()
    conv = _conv(seed=4)
    x, e = _features(n, edge_index.size(1))
    torch.testing.assert_close(reference(conv, x, edge_index, e),
                               reference(conv, x, edge_index, e, oracle=True), **TIGHT)


@pytest.mark.parametrize("normalize_over", ["source", "target"])
def test_per_arc_path_on_a_given_line_graph(node_level_everywhere, normalize_over):
    """A prepared per-arc view (line_index given) computes T_{a->b} = T_n g_b per arc."""
    edge_index, n = GRAPHS["dense60"]()
    conv = _conv(seed=5, normalize_over=normalize_over)
    x, e = _features(n, edge_index.size(1))
    plan = DAGPlan.from_graph(edge_index, n, orient="none")
    out = conv(x, edge_attr=e, **{k: v for k, v in plan.view("P").items() if k != "edge_attr"})
    torch.testing.assert_close(out, reference(conv, x, edge_index, e), **TIGHT)
    node_view = plan.view("P", node_level_transitions=True)
    assert node_view["line_index"] is None
    node_view["edge_attr"] = e
    torch.testing.assert_close(conv(x, **node_view), out, **TIGHT)


def test_gradcheck(node_level_everywhere):
    edge_index, n = random_dag(7, 0.6, seed=3), 7
    conv = _conv(seed=2, heads=2, key_dim=2, value_dim=3)
    x, e = _features(n, edge_index.size(1))
    names = ["transition_gate.node.weight", "transition_gate.node.bias",
             "transition_factor_gate.node.weight", "transition_factor_gate.node.bias",
             "transition_factor_gate.edges.0.weight", "source_gate.edges.0.weight"]
    params = dict(conv.named_parameters())
    inputs = (x.requires_grad_(True), e.requires_grad_(True)) + tuple(
        params[k].detach().clone().requires_grad_(True) for k in names)

    def f(x, e, *weights):
        return torch.func.functional_call(conv, dict(zip(names, weights)), (x, edge_index, e))

    assert conv.prepare(edge_index, n).line_index is None
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("normalize_over", ["source", "target"])
@pytest.mark.parametrize("scale", [0.5, 5.0])
def test_normalisation_bound(normalize_over, scale):
    """P-mode's bound: the absolute transitions leaving any incoming edge (or, with
    normalize_over="target", entering any outgoing edge) sum to less than one; and the
    node-level pair (T_n, carry) gives exactly these per-arc transitions."""
    edge_index, n = random_dag(40, 0.4, seed=9), 40
    conv = _conv(seed=7, scale=scale, normalize_over=normalize_over)
    x, e = _features(n, edge_index.size(1), seed=2)
    x, e = x * scale, e * scale
    line = line_graph(edge_index, n)
    with torch.no_grad():
        _, T, _, _ = conv.gates(x, edge_index, line, e)
    axis = line[0] if normalize_over == "source" else line[1]
    total = T.new_zeros(edge_index.size(1), HEADS).index_add(0, axis, T.abs())
    assert float(total.max()) < 1.0
    assert float(total.max()) > 0.5  # (the bound is not met trivially)
    assert (T < 0).any() and (T > 0).any()  # signed, like every P-mode transition
    with torch.no_grad():
        torch.testing.assert_close(T, arc_transitions(conv, x, edge_index, e, line), **TIGHT)
    with torch.no_grad():
        _, node_t, _, _, carry = conv.gates(x, edge_index, None, e, return_carry=True)
    torch.testing.assert_close(node_t[edge_index[1, line[0]]] * carry[line[1]], T, **TIGHT)


def test_starts_from_the_arc_forms_transitions(node_level_everywhere):
    """Zero gate weights: the factorised and the arc layer are the same function."""
    torch.manual_seed(0)
    arc = PLSTMConv(IN, OUT, heads=HEADS, edge_dim=EDGE_DIM)
    fact = PLSTMConv(IN, OUT, heads=HEADS, edge_dim=EDGE_DIM, transition_form="factorised")
    missing, unexpected = fact.load_state_dict(arc.state_dict(), strict=False)
    assert all(k.startswith("transition_factor_gate.") for k in missing)
    assert all(k.startswith("transition_gate.edges.") for k in unexpected)
    edge_index, n = GRAPHS["dense60"]()
    x, e = (t.float() for t in _features(n, edge_index.size(1)))
    torch.testing.assert_close(fact(x, edge_index, e), arc(x, edge_index, e),
                               rtol=1e-5, atol=1e-6)


def test_builds_no_line_graph_on_dense_graphs(monkeypatch):
    forbid_line_graphs(monkeypatch, conv_module)
    edge_index, n = GRAPHS["dense60"]()
    x, e = _features(n, edge_index.size(1))
    _conv()(x, edge_index, e).sum().backward()
    with pytest.raises(AssertionError, match="line_graph"):  # the arc form needs it
        _conv(transition_form="arc")(x, edge_index, e)


def test_lazy_layer(node_level_everywhere):
    edge_index, n = GRAPHS["random12"]()
    conv = PLSTMConv(-1, OUT, heads=HEADS, edge_dim=EDGE_DIM, transition_form="factorised")
    conv = conv.double()
    x, e = _features(n, edge_index.size(1))
    conv(x, edge_index, e)
    assert conv.transition_factor_gate.node.weight.shape == (HEADS, IN)
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    _compare(conv, x, edge_index, e)


# ---------------------------------------------------------------------------------------------
# edge masks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize_over", ["source", "target"])
def test_edge_mask_scales_the_state_an_edge_carries(node_level_everywhere, normalize_over):
    edge_index, n = GRAPHS["random12"]()
    conv = _conv(seed=8, normalize_over=normalize_over)
    x, e = _features(n, edge_index.size(1))
    mask = torch.rand(edge_index.size(1), dtype=torch.float64)
    mask[0] = 0.0
    _compare(conv, x, edge_index, e, edge_mask=mask)
    torch.testing.assert_close(conv(x, edge_index, e, edge_mask=torch.ones_like(mask)),
                               conv(x, edge_index, e))


def test_explainer_edge_masks(node_level_everywhere):
    from torch_geometric.explain import Explainer, GNNExplainer
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _conv(seed=1, orient="auto")
            self.head = torch.nn.Linear(OUT, 3).double()

        def forward(self, x, edge_index, edge_attr):
            return self.head(torch.relu(self.conv(x, edge_index, edge_attr)))

    torch.manual_seed(0)
    dag = random_dag(12, 0.4, seed=2)
    x, attr = _features(12, dag.size(1), seed=4)
    edge_index, edge_attr = to_undirected(dag, attr, num_nodes=12)
    model = Net()
    explainer = Explainer(model, algorithm=GNNExplainer(epochs=20), explanation_type="model",
                          edge_mask_type="object", node_mask_type=None,
                          model_config=dict(mode="multiclass_classification",
                                            task_level="node", return_type="raw"))
    mask = explainer(x, edge_index, index=11, edge_attr=edge_attr).edge_mask
    assert mask.shape == (edge_index.size(1),)
    assert float(mask.max() - mask.min()) > 1e-3  # not constant
    raw = torch.randn(edge_index.size(1), dtype=torch.float64)
    set_masks(model, raw, edge_index, apply_sigmoid=True)
    explained = model.conv(x, edge_index, edge_attr)
    clear_masks(model)
    oriented, edge_map, first = plstm_graph.dag.orientation.orient(edge_index, 12, "id")
    dag_mask = torch.ones(oriented.size(1), dtype=torch.float64).scatter_reduce(
        0, edge_map, raw.sigmoid(), "prod")
    torch.testing.assert_close(explained, reference(model.conv, x, oriented, edge_attr[first],
                                                    dag_mask), **TIGHT)


# ---------------------------------------------------------------------------------------------
# PLSTMNet and blocks
# ---------------------------------------------------------------------------------------------
def _graphs(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate((9, 1, 14, 5, 11)[:count]):
        iu = torch.triu_indices(n, n, offset=1)
        edges = iu[:, torch.rand(iu.size(1), generator=gen) < 0.5]
        attr = torch.randn(edges.size(1), EDGE_DIM, generator=gen, dtype=torch.float64)
        ei, ea = to_undirected(edges, attr, num_nodes=n)
        out.append(Data(x=torch.randn(n, IN, generator=gen, dtype=torch.float64),
                        edge_index=ei, edge_attr=ea, num_nodes=n, y=torch.tensor([i % 3])))
    out.append(Data(x=torch.randn(3, IN, generator=gen, dtype=torch.float64),
                    edge_index=torch.empty(2, 0, dtype=torch.long),
                    edge_attr=torch.empty(0, EDGE_DIM, dtype=torch.float64), num_nodes=3,
                    y=torch.tensor([0])))
    return out


def test_plstmnet_passes_the_form_to_its_p_blocks(node_level_everywhere):
    torch.manual_seed(0)
    model = PLSTMNet(IN, 16, 3, heads=2, edge_dim=EDGE_DIM, transition_form="factorised",
                     num_layers=2).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_gate." in name:
                p.add_(torch.randn_like(p) * 0.5)
    forms = [(b.conv.mode, b.conv.transition_form) for b in model.blocks]
    assert forms == [("P", "factorised"), ("D", "arc")] * 4
    batch = next(iter(DataLoader([PrepareDAG()(g) for g in _graphs(5)], batch_size=6)))
    plan = DAGPlan.from_data(batch)
    out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, plan=plan)
    assert (False, "node") in plan._schedules and (True, "node") in plan._schedules
    # the same blocks on the line graph (per-arc T_n g_b), and without a plan
    for b in model.blocks:
        b.conv._arc_transitions = True
    ref = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch,
                plan=DAGPlan.from_data(batch))
    torch.testing.assert_close(out, ref, **TIGHT)
    for b in model.blocks:
        b.conv._arc_transitions = False
    torch.testing.assert_close(model(batch.x, batch.edge_index, batch.edge_attr, batch.batch),
                               ref, **TIGHT)
    out.sum().backward()
    assert model.blocks[0].conv.transition_factor_gate.edges[0].weight.grad.abs().sum() > 0


def test_bad_transition_form():
    for bad in ("factorized", "ARC", "", None, 1):
        with pytest.raises(ValueError, match="transition_form must be one of"):
            PLSTMConv(IN, OUT, edge_dim=EDGE_DIM, transition_form=bad)
        with pytest.raises(ValueError, match="transition_form must be one of"):
            PLSTMNet(IN, 8, 2, edge_dim=EDGE_DIM, transition_form=bad)
    with pytest.raises(ValueError, match="P-mode only"):
        PLSTMConv(IN, OUT, mode="D", edge_dim=EDGE_DIM, transition_form="factorised")
    with pytest.raises(ValueError, match="P-mode only"):
        PLSTMBlock(8, mode="D", edge_dim=EDGE_DIM, transition_form="factorised")
    with pytest.raises(ValueError, match="needs edge_dim"):
        PLSTMConv(IN, OUT, transition_form="factorised")
    with pytest.raises(ValueError, match="needs edge_dim"):
        PLSTMNet(IN, 8, 2, transition_form="factorised")
    # node-level gates of an arc-form layer with edge features do not exist
    conv = PLSTMConv(IN, OUT, edge_dim=EDGE_DIM).double()
    x, e = _features(4, 2)
    with pytest.raises(ValueError, match="factorised"):
        conv.gates(x, torch.tensor([[0, 1], [1, 2]]), None, e)


# ---------------------------------------------------------------------------------------------
# PrepareDAG / DAGPlan: only the line graphs the layers need
# ---------------------------------------------------------------------------------------------
from plstm_graph.transforms import required_line_graphs  # noqa: E402

LINE_KEYS = ("line_index_p", "line_index_d", "line_index_d_rev")


def _model(**kwargs):
    torch.manual_seed(0)
    model = PLSTMNet(IN, 16, 3, heads=2, **kwargs).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_gate." in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def test_prepare_keeps_every_line_graph_by_default():
    g = _graphs(3)[2]
    full = PrepareDAG()(g)
    assert PrepareDAG().line_graphs == ("P", "D")
    assert all(k in full for k in LINE_KEYS)
    for names, kept in [("D", LINE_KEYS[1:]), (("D",), LINE_KEYS[1:]), ("P", LINE_KEYS[:1]),
                        (["D", "P"], LINE_KEYS), ((), ()), (None, ())]:
        data = PrepareDAG(line_graphs=names)(g)
        assert tuple(k for k in LINE_KEYS if k in data) == kept, names
        for k in kept:
            assert torch.equal(data[k], full[k])
        for k in ("dag_edge_index", "dag_level", "dag_level_rev", "dag_edge_attr"):
            assert torch.equal(data[k], full[k])
    assert "line_index_d_rev" not in PrepareDAG(reverse=False, line_graphs="D")(g)


def test_prepare_builds_no_line_graph_when_none_is_needed(monkeypatch):
    import plstm_graph.transforms as transforms

    forbid_line_graphs(monkeypatch, transforms, ("line_graph",))
    data = PrepareDAG(line_graphs=())(_graphs(3)[2])
    assert not any(k in data for k in LINE_KEYS)
    with pytest.raises(AssertionError, match="line_graph"):
        PrepareDAG(line_graphs="D")(_graphs(3)[2])  # the multitrees are pruned from it


def test_bad_line_graphs():
    for bad in ("X", ("P", "Q"), "PD", 3, True, ("p",)):
        with pytest.raises(ValueError, match="line_graphs takes names from"):
            PrepareDAG(line_graphs=bad)
        with pytest.raises(ValueError, match="line_graphs takes names from"):
            DAGPlan.from_graph(torch.tensor([[0], [1]]), 2, line_graphs=bad)
    with pytest.raises(ValueError, match="derives line_graphs"):
        PrepareDAG.for_model(_model(), line_graphs="P")
    with pytest.raises(ValueError, match="no PLSTMConv"):
        PrepareDAG.for_model(torch.nn.Linear(2, 2))


def test_required_line_graphs():
    assert required_line_graphs(_model(edge_dim=EDGE_DIM)) == ("P", "D")
    assert required_line_graphs(_model(edge_dim=EDGE_DIM, transition_form="factorised")) == \
        ("D",)
    assert required_line_graphs(_model()) == ("D",)
    assert required_line_graphs(PLSTMConv(IN, OUT)) == ()
    assert required_line_graphs(PLSTMConv(IN, OUT, edge_dim=EDGE_DIM)) == ("P",)
    assert required_line_graphs(PLSTMConv(IN, OUT, mode="D")) == ("D",)
    stack = torch.nn.ModuleList([PLSTMConv(IN, OUT), PLSTMConv(IN, OUT, mode="D")])
    assert required_line_graphs(stack) == ("D",)
    assert PrepareDAG.for_model(_model(edge_dim=EDGE_DIM, transition_form="factorised"),
                                reverse=False).line_graphs == ("D",)


@pytest.mark.parametrize("kwargs", [dict(edge_dim=EDGE_DIM, transition_form="factorised"),
                                    dict()])
def test_model_on_a_plan_without_the_full_line_graph(kwargs):
    model = _model(**kwargs)
    edge_dim = kwargs.get("edge_dim")
    pre = PrepareDAG.for_model(model)
    assert pre.line_graphs == ("D",)
    graphs = _graphs(5, seed=3)
    batch = next(iter(DataLoader([pre(g) for g in graphs], batch_size=6)))
    full = next(iter(DataLoader([PrepareDAG()(g) for g in graphs], batch_size=6)))
    assert "line_index_p" not in batch
    for key in LINE_KEYS[1:]:  # collated by edge counts as before
        assert torch.equal(batch[key], full[key])
    plan = DAGPlan.from_data(batch)
    assert plan.line_index_p is None and not plan.has_line_graph("P")
    assert "num_arcs_p=skipped" in repr(plan)
    attr = batch.edge_attr if edge_dim else None
    out = model(batch.x, batch.edge_index, attr, batch.batch, plan=plan)
    assert (False, "P") not in plan._schedules and (False, "node") in plan._schedules
    ref = model(full.x, full.edge_index, attr, full.batch, plan=DAGPlan.from_data(full))
    torch.testing.assert_close(out, ref, **TIGHT)
    built = DAGPlan.from_data(batch).build()
    assert set(built._schedules) == {(False, "D"), (True, "D"), (False, "node"), (True, "node")}
    moved = plan.to("cpu")
    assert moved.line_index_p is None and torch.equal(moved.line_index_d, plan.line_index_d)


def test_a_skipped_line_graph_is_a_clear_error():
    graphs = _graphs(3, seed=4)
    only_d = DAGPlan.from_data(next(iter(DataLoader(
        [PrepareDAG(line_graphs="D")(g) for g in graphs], batch_size=4))))
    with pytest.raises(ValueError, match="without the full .P-mode. line graph"):
        only_d.view("P")
    with pytest.raises(ValueError, match="without the full .P-mode. line graph"):
        only_d.view("P", reverse=True)
    only_d.view("P", reverse=True, node_level_transitions=True)  # fine: needs none
    arc_model = _model(edge_dim=EDGE_DIM)  # its P blocks need the line graph
    batch = next(iter(DataLoader([PrepareDAG(line_graphs="D")(g) for g in graphs],
                                 batch_size=4)))
    with pytest.raises(ValueError, match="PrepareDAG.for_model"):
        arc_model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, plan=only_d)
    only_p = DAGPlan.from_graph(random_dag(9, 0.5, seed=1), 9, line_graphs="P")
    with pytest.raises(ValueError, match="D-mode multitree, which"):
        only_p.view("D")
    with pytest.raises(ValueError, match="multitree of the reversed DAG"):
        only_p.view("D", reverse=True)
    no_rev = DAGPlan.from_graph(random_dag(9, 0.5, seed=1), 9, reverse=False)
    with pytest.raises(ValueError, match="no reversed DAG"):
        no_rev.view("P", reverse=True)
    # a conv on a plan without any line graph, node-level
    none = DAGPlan.from_graph(random_dag(9, 0.5, seed=1), 9, line_graphs=())
    conv = PLSTMConv(IN, OUT, heads=HEADS).double()
    x = torch.randn(9, IN, dtype=torch.float64)
    torch.testing.assert_close(conv(x, **none.view("P", node_level_transitions=True)),
                               conv(x, none.edge_index), **TIGHT)


def test_graph_classification_flag(tmp_path):
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), "examples"))
    import graph_classification as gc

    info = dict(num_features=IN, num_classes=3, edge_dim=EDGE_DIM)
    args = gc.parse_args(["--transition-form", "factorised"])
    model = gc.build_model("plstm", info, args)
    assert [b.conv.transition_form for b in model.net.blocks] == ["factorised", "arc"] * 2
    assert gc.parse_args([]).transition_form == "arc"
    # a results file from before the flag ran the arc form: --resume accepts it for "arc" only
    old = vars(gc.parse_args(["--output", str(tmp_path / "r.json")]))
    old.pop("transition_form")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(dataset="MUTAG", args=old, models={})))
    assert gc.previous_folds(str(path), gc.parse_args(["--output", str(path)])) == \
        {"MUTAG": {}}
    with pytest.raises(SystemExit, match="transition_form"):
        gc.previous_folds(str(path), gc.parse_args(["--output", str(path),
                                                    "--transition-form", "factorised"]))
