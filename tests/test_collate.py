"""``collate_dags`` / ``DAGDataLoader`` against PyG's ``Batch.from_data_list`` (the reference):
the same batch, attribute by attribute, on prepared and plain graphs, with its fallbacks."""
import pytest
import torch
from torch_geometric.data import Batch, Data, HeteroData
from torch_geometric.loader import DataLoader

from harness import random_dag, undirected_graph
import plstm_graph.collate as collate_mod
from plstm_graph import DAGData, DAGDataLoader, DAGPlan, PLSTMNet, PrepareDAG, collate_dags


def _graphs(count, seed=0, prepare=True, edge_dim=3):
    out = []
    for i in range(count):
        n = [0, 1, 7, 12, 5, 9, 2][(i + seed) % 7]  # odd sizes, an empty and a one-node graph
        data = undirected_graph(n, seed=seed * 100 + i, edge_dim=edge_dim, feat=4) if n else \
            Data(x=torch.zeros(0, 4, dtype=torch.float64), edge_index=torch.zeros(2, 0,
                 dtype=torch.long), edge_attr=torch.zeros(0, edge_dim, dtype=torch.float64),
                 num_nodes=0)
        data.y = torch.tensor([i % 2])
        out.append(PrepareDAG()(data) if prepare else data)
    return out


def _same_batch(got, want):
    assert type(got).__name__ == type(want).__name__
    assert list(got._store._mapping) == list(want._store._mapping)
    for key, value in want._store._mapping.items():
        mine = got._store._mapping[key]
        if isinstance(value, torch.Tensor):
            assert mine.dtype == value.dtype and torch.equal(mine, value), key
        else:
            assert mine == value, key
    assert got.num_graphs == want.num_graphs
    assert list(got._slice_dict) == list(want._slice_dict)
    for key in want._slice_dict:
        assert torch.equal(got._slice_dict[key], want._slice_dict[key]), key
        assert torch.equal(got._inc_dict[key], want._inc_dict[key]), key


def _refuse(*args, **kwargs):
    raise AssertionError("collate_dags fell back to Batch.from_data_list")


@pytest.fixture
def no_pyg(monkeypatch):
    """Make the PyG fallback fail, so that a test proves the fast path ran."""
    monkeypatch.setattr(collate_mod.Batch, "from_data_list", _refuse)


def _check_fast_path(graphs, monkeypatch, **kwargs):
    """``collate_dags`` with PyG's collation made to fail, against PyG's own batch."""
    want = Batch.from_data_list(graphs, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(collate_mod.Batch, "from_data_list", _refuse)
        got = collate_dags(graphs, **kwargs)
    _same_batch(got, want)
    return got


@pytest.mark.parametrize("count", [1, 2, 7, 19])
@pytest.mark.parametrize("seed", [0, 3])
def test_prepared_batches_equal_pyg(count, seed, monkeypatch):
    assert isinstance(_check_fast_path(_graphs(count, seed), monkeypatch), DAGData)


def test_line_graph_indices_are_offset_by_edges(no_pyg):
    graphs = [g for g in _graphs(7) if g.line_index_p.numel()]
    batch = collate_dags(graphs)
    start = 0
    for i, g in enumerate(graphs):
        stop = start + g.line_index_p.size(1)
        offset = sum(h.dag_edge_index.size(1) for h in graphs[:i])
        assert torch.equal(batch.line_index_p[:, start:stop], g.line_index_p + offset)
        start = stop


def test_graphs_come_back_out(no_pyg):
    graphs = _graphs(9, seed=1)
    batch = collate_dags(graphs)
    for i, (back, orig) in enumerate(zip(batch.to_data_list(), graphs)):
        for key, value in orig._store._mapping.items():
            mine = back[key]
            assert (torch.equal(mine, value) if isinstance(value, torch.Tensor)
                    else mine == value), (i, key)
    assert torch.equal(batch[4].line_index_d, graphs[4].line_index_d)


def test_follow_batch_and_exclude_keys(monkeypatch):
    graphs = _graphs(6, seed=2)
    for kwargs in (dict(follow_batch=["dag_edge_index", "x", "y"]),
                   dict(exclude_keys=["edge_attr", "line_index_p"]),
                   dict(follow_batch=["dag_level"], exclude_keys=["y"])):
        _check_fast_path(graphs, monkeypatch, **kwargs)


def test_plain_data_with_int32_index_and_scalars(monkeypatch):
    graphs = []
    for i in range(5):
        ei = random_dag(6 + i, 0.4, seed=i)
        graphs.append(Data(x=torch.randn(6 + i, 2), edge_index=ei.to(torch.int32),
                           label=torch.tensor(float(i)), face_index=ei[:1].clone()))
    assert _check_fast_path(graphs, monkeypatch).edge_index.dtype == torch.int32


class _Custom(Data):
    def __inc__(self, key, value, *args, **kwargs):
        return 100 if key == "extra" else super().__inc__(key, value, *args, **kwargs)


def _fallback_cases():
    base = _graphs(3, seed=1, prepare=False)  # no empty graph: PyG cannot max() its sub_batch
    custom = [_Custom(**{k: v for k, v in g._store._mapping.items()}) for g in base]
    for c in custom:
        c.extra = torch.tensor([1, 2])
    extra_key = [g.clone() for g in base]
    extra_key[1].only_here = torch.ones(1)
    mixed_dtype = [g.clone() for g in base]
    mixed_dtype[2].x = mixed_dtype[2].x.float()
    strings = [g.clone() for g in base]
    for j, g in enumerate(strings):
        g.name = f"g{j}"
    bool_index = [g.clone() for g in base]
    for g in bool_index:
        g.mask_index = torch.ones(g.num_nodes, dtype=torch.bool)
    own_batch = [g.clone() for g in base]
    for g in own_batch:
        g.sub_batch = torch.zeros(g.num_nodes, dtype=torch.long)
    mixed_class = [base[0], PrepareDAG()(base[1])]
    return dict(custom=custom, extra_key=extra_key, mixed_dtype=mixed_dtype, strings=strings,
                bool_index=bool_index, own_batch=own_batch, mixed_class=mixed_class)


@pytest.mark.parametrize("name", sorted(_fallback_cases()))
def test_what_the_fast_path_does_not_know_goes_to_pyg(name):
    graphs = _fallback_cases()[name]
    calls = []
    original = Batch.from_data_list.__func__

    def spy(cls, *args, **kwargs):
        calls.append(1)
        return original(cls, *args, **kwargs)

    want = Batch.from_data_list(graphs)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(collate_mod.Batch, "from_data_list", classmethod(spy))
        got = collate_dags(graphs)
    assert calls, "expected the PyG fallback"
    assert list(got._store._mapping) == list(want._store._mapping)
    for key, value in want._store._mapping.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key


def test_heterogeneous_graphs_go_to_pyg():
    graphs = []
    for i in range(2):
        h = HeteroData()
        h["a"].x = torch.randn(3 + i, 2)
        h["a", "to", "a"].edge_index = torch.tensor([[0, 1], [1, 2]])
        graphs.append(h)
    got = collate_dags(graphs)
    assert torch.equal(got["a", "to", "a"].edge_index, torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5]]))


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="at least one graph"):
        collate_dags([])
    graphs = _graphs(3)
    del graphs[1].line_index_p
    with pytest.raises(ValueError, match=r"graph 1 .*'line_index_p'.*exclude_keys"):
        collate_dags(graphs)
    h = HeteroData()
    h["a"].x = torch.ones(2, 1)
    with pytest.raises(TypeError, match="graph 1 of the batch is a HeteroData"):
        collate_dags([graphs[0], h])
    # excluding the key is the way out, and then the batch is PyG's
    _same_batch(collate_dags(graphs, exclude_keys=["line_index_p"]),
                Batch.from_data_list(graphs, exclude_keys=["line_index_p"]))


def test_loader_gives_pyg_batches_and_the_same_model_output():
    graphs = _graphs(23, seed=4)
    mine = DAGDataLoader(graphs, batch_size=5, shuffle=True,
                         generator=torch.Generator().manual_seed(0))
    pyg = DataLoader(graphs, batch_size=5, shuffle=True,
                     generator=torch.Generator().manual_seed(0))
    assert isinstance(mine, DataLoader) and len(mine) == len(pyg) == 5
    torch.manual_seed(0)
    model = PLSTMNet(4, 8, 2, edge_dim=3).double()
    model.eval()
    for got, want in zip(mine, pyg):
        _same_batch(got, want)
        out = model(got.x, got.edge_index, got.edge_attr, got.batch, plan=DAGPlan.from_data(got))
        ref = model(want.x, want.edge_index, want.edge_attr, want.batch,
                    plan=DAGPlan.from_data(want))
        assert torch.equal(out, ref)


def test_loader_with_a_worker_process():
    graphs = _graphs(8, seed=5)
    mine = list(DAGDataLoader(graphs, batch_size=3, num_workers=1))
    pyg = list(DataLoader(graphs, batch_size=3))
    assert len(mine) == len(pyg) == 3
    for got, want in zip(mine, pyg):
        _same_batch(got, want)


def test_loader_passes_other_samples_to_pyg():
    loader = DAGDataLoader([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])], batch_size=2)
    assert torch.equal(next(iter(loader)), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
