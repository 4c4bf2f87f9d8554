"""PLSTMNet: shapes, batching, plans, gradients and permutation equivariance."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import to_undirected

from plstm_graph import DAGData, DAGPlan, PLSTMNet, PrepareDAG

IN, HIDDEN, OUT, EDGE_DIM = 5, 16, 3, 3


def random_undirected_graph(num_nodes: int, p: float, gen: torch.Generator,
                            edge_dim=EDGE_DIM) -> Data:
    """A random simple graph stored PyG-style (both directions, same attributes)."""
    iu = torch.triu_indices(num_nodes, num_nodes, offset=1)
    keep = torch.rand(iu.size(1), generator=gen) < p
    edges = iu[:, keep]
    attr = torch.randn(edges.size(1), edge_dim, generator=gen, dtype=torch.float64)
    edge_index, edge_attr = to_undirected(edges, attr, num_nodes=num_nodes)
    x = torch.randn(num_nodes, IN, generator=gen, dtype=torch.float64)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=num_nodes)


def random_dag(num_nodes: int, p: float, gen: torch.Generator, edge_dim=EDGE_DIM) -> Data:
    """A random DAG, edges from lower to higher id, stored in one direction only."""
    iu = torch.triu_indices(num_nodes, num_nodes, offset=1)
    keep = torch.rand(iu.size(1), generator=gen) < p
    edge_index = iu[:, keep]
    edge_attr = torch.randn(edge_index.size(1), edge_dim, generator=gen, dtype=torch.float64)
    x = torch.randn(num_nodes, IN, generator=gen, dtype=torch.float64)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=num_nodes)


def graphs(count=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = [random_undirected_graph(n, 0.3, gen) for n in (7, 1, 12, 4, 9, 15)[:count]]
    out.append(Data(x=torch.randn(3, IN, generator=gen, dtype=torch.float64),
                    edge_index=torch.empty(2, 0, dtype=torch.long),
                    edge_attr=torch.empty(0, EDGE_DIM, dtype=torch.float64),
                    num_nodes=3))  # a graph without edges
    for i, g in enumerate(out):
        g.y = torch.tensor([i % OUT])
    return out


def perturb_gates(model: torch.nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    """Give the zero-initialised gate weights random values so gates differ per node/edge."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_gate." in name:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def make_model(pool="mean", edge_dim=EDGE_DIM, num_layers=1, **kwargs) -> PLSTMNet:
    torch.manual_seed(0)
    model = PLSTMNet(IN, HIDDEN, OUT, num_layers=num_layers, heads=2, edge_dim=edge_dim,
                     pool=pool, **kwargs).double()
    perturb_gates(model)
    return model.eval()


def run(model, batch, use_edges=True):
    edge_attr = batch.dag_edge_attr if use_edges else None
    return model(batch.x, batch.dag_edge_index, edge_attr, batch.batch,
                 plan=DAGPlan.from_data(batch))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["mean", "sum", None])
@pytest.mark.parametrize("edge_dim", [EDGE_DIM, None])
def test_output_shapes(pool, edge_dim):
    data = [PrepareDAG()(g) for g in graphs()]
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    model = make_model(pool=pool, edge_dim=edge_dim)
    out = run(model, batch, use_edges=edge_dim is not None)
    rows = batch.num_graphs if pool is not None else batch.num_nodes
    assert out.shape == (rows, OUT)
    assert out.dtype == torch.float64
    assert torch.isfinite(out).all()


def test_invalid_pool():
    with pytest.raises(ValueError, match="pool"):
        PLSTMNet(IN, HIDDEN, OUT, pool="max")


def test_dataloader_batches_are_dagdata_with_edge_offsets():
    data = [PrepareDAG()(g) for g in graphs()]
    assert all(isinstance(d, DAGData) for d in data)
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    dag = batch.dag_edge_index
    # every line-graph arc still joins two edges that meet, across all graphs of the batch
    for line in (batch.line_index_p, batch.line_index_d, batch.line_index_d_rev.flip(0)):
        assert line.numel() > 0
        assert torch.equal(dag[1, line[0]], dag[0, line[1]])
    assert batch.line_index_p.size(1) == sum(d.line_index_p.size(1) for d in data)


@pytest.mark.parametrize("pool", ["mean", "sum", None])
@pytest.mark.parametrize("edge_dim", [EDGE_DIM, None])
def test_batched_equals_per_graph(pool, edge_dim):
    data = [PrepareDAG()(g) for g in graphs()]
    model = make_model(pool=pool, edge_dim=edge_dim, num_layers=2)
    use_edges = edge_dim is not None
    with torch.no_grad():
        batched = run(model, next(iter(DataLoader(data, batch_size=len(data)))), use_edges)
        single = torch.cat([run(model, next(iter(DataLoader([d], batch_size=1))), use_edges)
                            for d in data])
    assert batched.shape == single.shape
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-10)


def test_batched_equals_per_graph_float32_and_shuffled_order():
    data = [PrepareDAG()(g) for g in graphs()]
    model = make_model(pool=None).float()
    for d in data:
        d.x, d.dag_edge_attr = d.x.float(), d.dag_edge_attr.float()
    order = [3, 0, 5, 2, 4, 1]
    with torch.no_grad():
        batched = run(model, next(iter(DataLoader([data[i] for i in order],
                                                  batch_size=len(data)))))
        single = torch.cat([run(model, next(iter(DataLoader([data[i]], batch_size=1))))
                            for i in order])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_edge_features_matter():
    data = [PrepareDAG()(g) for g in graphs()]
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    model = make_model(pool=None)
    with torch.no_grad():
        out = run(model, batch)
        batch.dag_edge_attr = batch.dag_edge_attr + 1.0
        changed = run(model, batch)
    assert not torch.allclose(out, changed)


@pytest.mark.parametrize("edge_dim", [EDGE_DIM, None])
@pytest.mark.parametrize("pool", ["mean", None])
def test_plan_none_equals_transform_plan(edge_dim, pool):
    raw = graphs()
    data = [PrepareDAG()(g) for g in raw]
    model = make_model(pool=pool, edge_dim=edge_dim)
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    with torch.no_grad():
        planned = run(model, batch, use_edges=edge_dim is not None)
        # the original undirected edges: the model orients them itself, by node id
        by_itself = model(batch.x, batch.edge_index,
                          batch.edge_attr if edge_dim is not None else None, batch.batch)
    torch.testing.assert_close(planned, by_itself, rtol=1e-12, atol=1e-12)
    # also for a single graph without a batch vector
    g = raw[2]
    with torch.no_grad():
        single_plan = model(g.x, g.edge_index, g.edge_attr,
                            plan=DAGPlan.from_data(PrepareDAG()(g)))
        single_none = model(g.x, g.edge_index, g.edge_attr)
    torch.testing.assert_close(single_plan, single_none, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("edge_dim", [EDGE_DIM, None])
def test_gradients_reach_every_parameter(edge_dim):
    data = [PrepareDAG()(g) for g in graphs()]
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    model = make_model(pool="mean", edge_dim=edge_dim).train()
    out = run(model, batch, use_edges=edge_dim is not None)
    torch.nn.functional.cross_entropy(out, batch.y).backward()
    names = []
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), name
        if p.grad.abs().max() == 0:
            names.append(name)
    assert not names, f"zero gradient for {names}"


def test_gradients_at_initialisation_reach_gates():
    """Even before any perturbation (zero gate weights), gate weights get a gradient."""
    data = [PrepareDAG()(g) for g in graphs()]
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    torch.manual_seed(0)
    model = PLSTMNet(IN, HIDDEN, OUT, num_layers=1, heads=2, edge_dim=EDGE_DIM).double()
    out = run(model, batch)
    torch.nn.functional.cross_entropy(out, batch.y).backward()
    for name, p in model.named_parameters():
        if "_gate." in name:
            assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("edge_dim", [EDGE_DIM, None])
def test_node_permutation_equivariance_on_directed_dag(edge_dim):
    gen = torch.Generator().manual_seed(3)
    g = random_dag(14, 0.35, gen)
    n = g.num_nodes
    perm = torch.randperm(n, generator=gen)  # old id i -> new id perm[i]
    x_new = torch.empty_like(g.x)
    x_new[perm] = g.x
    h = Data(x=x_new, edge_index=perm[g.edge_index], edge_attr=g.edge_attr, num_nodes=n)
    assert not torch.equal(h.edge_index, g.edge_index)

    model = make_model(pool=None, edge_dim=edge_dim, num_layers=2)
    prep = PrepareDAG(orient="none")
    with torch.no_grad():
        out_g = run(model, next(iter(DataLoader([prep(g)], batch_size=1))), edge_dim is not None)
        out_h = run(model, next(iter(DataLoader([prep(h)], batch_size=1))), edge_dim is not None)
    torch.testing.assert_close(out_h[perm], out_g, rtol=1e-10, atol=1e-10)
    # graph-level outputs are invariant
    pooled = make_model(pool="sum", edge_dim=edge_dim)
    with torch.no_grad():
        a = run(pooled, next(iter(DataLoader([prep(g)], batch_size=1))), edge_dim is not None)
        b = run(pooled, next(iter(DataLoader([prep(h)], batch_size=1))), edge_dim is not None)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_reset_parameters_restores_gate_init():
    model = make_model()
    model.reset_parameters()
    for name, p in model.named_parameters():
        if "_gate." in name and name.endswith("weight"):
            assert p.abs().max() == 0, name


# ---------------------------------------------------------------------------------------------
# dtypes, plain batches, explanations
# ---------------------------------------------------------------------------------------------
def test_double_model_on_float32_prepared_batch_and_mismatch_raises():
    data = [PrepareDAG()(g) for g in graphs()]
    for g in data:  # a float32 data set
        g.x, g.edge_attr, g.dag_edge_attr = g.x.float(), g.edge_attr.float(), g.dag_edge_attr.float()
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    torch.manual_seed(0)
    model = PLSTMNet(IN, HIDDEN, OUT, num_layers=1, heads=2, edge_dim=EDGE_DIM)
    out32 = run(model, batch)
    with pytest.raises(TypeError, match="float64"):
        model(batch.x.double(), batch.dag_edge_index, None, batch.batch,
              plan=DAGPlan.from_data(batch))
    model = model.double()
    out64 = model(batch.x.double(), batch.dag_edge_index, None, batch.batch,
                  plan=DAGPlan.from_data(batch))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-5)
    plain = model(batch.x.double(), batch.edge_index, batch.edge_attr.double(), batch.batch)
    torch.testing.assert_close(plain, out64)


def test_plain_call_prepares_once_per_edge_index(monkeypatch):
    import plstm_graph.models as models

    calls = []
    real = models.DAGPlan.from_graph
    monkeypatch.setattr(models.DAGPlan, "from_graph",
                        staticmethod(lambda *a, **k: calls.append(1) or real(*a, **k)))
    batch = next(iter(DataLoader(graphs(), batch_size=7)))
    model = make_model()
    first = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    again = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    assert len(calls) == 1 and torch.equal(first, again)
    model(batch.x, batch.edge_index.clone(), batch.edge_attr, batch.batch)
    assert len(calls) == 2


def test_explainer_on_plstmnet_gives_a_mask_over_the_input_edges():
    from torch_geometric.explain import Explainer, GNNExplainer

    g = graphs(count=3)[2]
    model = make_model(pool=None, edge_dim=None)

    class NodeModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, edge_index):
            return self.net(x, edge_index)

    explainer = Explainer(NodeModel(), algorithm=GNNExplainer(epochs=10),
                          explanation_type="model", edge_mask_type="object",
                          node_mask_type=None,
                          model_config=dict(mode="multiclass_classification",
                                            task_level="node", return_type="raw"))
    mask = explainer(g.x, g.edge_index, index=5).edge_mask
    assert mask.shape == (g.edge_index.size(1),)
    assert float(mask.max() - mask.min()) > 1e-4


def test_compiled_plstmnet_no_graph_break_no_recompile():
    """torch.compile(model, dynamic=True, fullgraph=True) on prepared batches of changing size:
    no graph break, the eager numbers and gradients, and no recompile after the first batch.

    Without duck sizing: by default dynamic shapes assume that sizes which happened to be equal
    in the first batch (in a forest N == E + 1, the length of an edge CSR) stay equal, and
    recompile when a batch breaks that (README, torch.compile)."""
    import torch._dynamo
    import torch.fx.experimental._config as fx_config


    data = [PrepareDAG()(g) for g in graphs(count=6, seed=4)]
    batches = [next(iter(DataLoader(data[lo:hi], batch_size=hi - lo)))
               for lo, hi in ((0, 4), (1, 4), (2, 7), (0, 2), (3, 7))]
    plans = [DAGPlan.from_data(b).build() for b in batches]
    torch.manual_seed(0)
    model = PLSTMNet(IN, HIDDEN, OUT, edge_dim=EDGE_DIM, heads=2).double()
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
    try:
        with fx_config.patch(use_duck_shape=False):
            _run_compiled(compiled, model, batches, plans)
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()


def _run_compiled(compiled, model, batches, plans):
    for i, (b, plan) in enumerate(zip(batches, plans)):
        if i == 1:  # from here on a recompile raises
            torch._dynamo.config.error_on_recompile = True
        args = (b.x, b.edge_index, b.edge_attr, b.batch)
        out = compiled(*args, plan=plan, batch_size=b.num_graphs)
        grads = torch.autograd.grad(out.pow(2).sum(), list(model.parameters()))
        ref = model(*args, plan=plan)
        ref_grads = torch.autograd.grad(ref.pow(2).sum(), list(model.parameters()))
        torch.testing.assert_close(out, ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r)


def test_plan_runs_p_blocks_without_edge_features_on_node_level_transitions(monkeypatch):
    """PLSTMNet without edge features on a plan: its P blocks take the node-level views (no
    line graph) and give what the same blocks give on the full line graph."""
    import plstm_graph.nn.conv as conv_module

    monkeypatch.setattr(conv_module, "NODE_LEVEL_MIN_ARCS_PER_EDGE", -1.0)  # also when sparse
    data = [PrepareDAG()(g) for g in graphs(count=6, seed=2)]
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    torch.manual_seed(0)
    model = PLSTMNet(IN, HIDDEN, OUT, heads=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    assert [b.conv.node_level_transitions() for b in model.blocks] == [True, False, True, False]
    plan = DAGPlan.from_data(batch)
    out = model(batch.x, batch.edge_index, None, batch.batch, plan=plan)
    assert (False, "node") in plan._schedules and (True, "node") in plan._schedules
    for b in model.blocks:
        b.conv._arc_transitions = True
    ref = model(batch.x, batch.edge_index, None, batch.batch, plan=DAGPlan.from_data(batch))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    # and a plain call (the layers prepare their own graphs) agrees too
    torch.testing.assert_close(model(batch.x, batch.edge_index, None, batch.batch), ref,
                               rtol=1e-9, atol=1e-10)


def test_node_level_view_errors():
    plan = DAGPlan.from_data(PrepareDAG()(graphs(count=1)[0]))
    with pytest.raises(ValueError, match="P-mode only"):
        plan.view("D", node_level_transitions=True)
    conv = PLSTMNet(IN, HIDDEN, OUT, edge_dim=EDGE_DIM).blocks[0].conv.double()
    view = plan.view("P", node_level_transitions=True)
    with pytest.raises(ValueError, match="NodeSchedule"):
        conv(torch.randn(plan.num_nodes, HIDDEN, dtype=torch.float64), **view)


@pytest.mark.parametrize("edge_dim", [EDGE_DIM, None])
def test_plain_call_with_orient_bfs_equals_the_bfs_transform_plan(edge_dim):
    raw = graphs()
    model = make_model(pool="mean", edge_dim=edge_dim, orient="bfs")
    data = [PrepareDAG(orient="bfs")(g) for g in raw]
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    attr = batch.edge_attr if edge_dim is not None else None
    with torch.no_grad():
        planned = run(model, batch, use_edges=edge_dim is not None)
        by_itself = model(batch.x, batch.edge_index, attr, batch.batch)
        by_id = make_model(pool="mean", edge_dim=edge_dim)
        by_id.load_state_dict(model.state_dict())
        id_out = by_id(batch.x, batch.edge_index, attr, batch.batch)
    torch.testing.assert_close(planned, by_itself, rtol=1e-12, atol=1e-12)
    # a different DAG (the graphs' ids are no BFS order), so a different function
    assert not torch.allclose(by_itself, id_out)


def test_orient_is_checked():
    with pytest.raises(ValueError, match="orient must be one of"):
        PLSTMNet(IN, HIDDEN, OUT, orient="random")
