"""DistributedDataParallel with PLSTMNet: two gloo processes on the loopback interface.

Two ranks that each take half of every global batch must end with parameters identical to each
other and equal (up to float rounding) to one process trained on the whole batch. With a mean
loss per rank over equally many graphs, DDP's gradient average is the gradient of the mean over
the global batch, so the single process uses the mean over all of it.
"""
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from plstm_graph import DAGPlan, PLSTMNet, PrepareDAG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2
PER_RANK = 6  # graphs per rank and step
STEPS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphs(root):
    from plstm_graph.datasets import load_mutag

    dataset = load_mutag(root=root, pre_transform=PrepareDAG())
    return [dataset[i] for i in range(WORLD * PER_RANK * STEPS)]


def _model():
    torch.manual_seed(1234)
    return PLSTMNet(7, 16, 2, num_layers=1, edge_dim=4)


def _step(model, optimizer, graphs):
    from torch_geometric.loader import DataLoader

    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    optimizer.zero_grad()
    logits = model(batch.x, batch.dag_edge_index, None, batch.batch,
                   plan=DAGPlan.from_data(batch))
    loss = F.cross_entropy(logits, batch.y)  # the mean over this process's graphs
    loss.backward()
    optimizer.step()


def _optimizer(params):
    # momentum, so that a wrong gradient in one step also shows in the later ones
    return torch.optim.SGD(params, lr=0.2, momentum=0.9)


def _global_batch(graphs, step):
    return graphs[step * WORLD * PER_RANK:(step + 1) * WORLD * PER_RANK]


def _worker(rank, port, root, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        graphs = _graphs(root)
        model = _model()
        # no find_unused_parameters: DDP raises in the next step if a parameter got no gradient
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = _optimizer(ddp.parameters())
        for step in range(STEPS):
            _step(ddp, optimizer, _global_batch(graphs, step)[rank::WORLD])
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path):
    root = str(tmp_path / "data")
    graphs = _graphs(root)  # processed here once; the workers only load it
    mp.spawn(_worker, args=(_free_port(), root, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = _optimizer(model.parameters())
    for step in range(STEPS):
        _step(model, optimizer, _global_batch(graphs, step))
    single = model.state_dict()

    assert ranks[0].keys() == single.keys()
    moved = 0
    for name in single:
        # DDP keeps the copies bitwise identical: the same averaged gradient, the same step
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], single[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
        moved += int(not torch.allclose(single[name], initial[name]))
    assert moved > len(single) // 2  # the steps did change the model


def test_ddp_half_batches_would_differ(tmp_path):
    """The check above can fail: one rank's half alone gives other parameters."""
    graphs = _graphs(str(tmp_path / "data"))
    models = []
    for part in (slice(None), slice(0, None, WORLD)):
        model = _model()
        optimizer = _optimizer(model.parameters())
        for step in range(STEPS):
            _step(model, optimizer, _global_batch(graphs, step)[part])
        models.append(model.state_dict())
    assert any(not torch.allclose(models[0][k], models[1][k], rtol=1e-4, atol=1e-5)
               for k in models[0])


def _run_example(tmp_path, launcher):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("PYTEST_CURRENT_TEST", None)  # PyG stays silent about processing under pytest
    ckpt = tmp_path / "ckpt.pt"
    cmd = launcher + [os.path.join(ROOT, "examples", "distributed_training.py"),
                      "--epochs", "1", "--root", str(tmp_path / "data"),
                      "--checkpoint", str(ckpt)]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    return lines, torch.load(ckpt, weights_only=False), proc.stderr


def test_example_torchrun_two_processes(tmp_path):
    lines, ckpt, log = _run_example(tmp_path, [sys.executable, "-m", "torch.distributed.run",
                                               "--standalone", "--nproc_per_node=2"])
    # the data set was processed by one rank only (PyG announces every processing run)
    assert log.count("Processing...") == 1, log[-3000:]
    assert lines[-1].startswith("SUMMARY") and "world size 2" in lines[-1]
    assert ckpt["checksum"] in lines[-1] and ckpt["world_size"] == 2
    # only rank 0 prints: one data line, one line per epoch, the checkpoint and the summary
    assert sum(line.startswith("SUMMARY") for line in lines) == 1
    assert sum(line.startswith("epoch") for line in lines) == 1
    # the checksum is of the saved parameters
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import distributed_training

    model = PLSTMNet(7, 64, 2, edge_dim=4)
    model.load_state_dict(ckpt["model"])
    assert distributed_training.parameter_checksum(model) == ckpt["checksum"]


def test_example_plain_python(tmp_path):
    lines, ckpt, _ = _run_example(tmp_path, [sys.executable])
    assert lines[-1].startswith("SUMMARY") and "world size 1" in lines[-1]
    assert ckpt["world_size"] == 1


def test_checksum_detects_a_changed_parameter():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import distributed_training

    a, b = _model(), _model()
    assert distributed_training.parameter_checksum(a) == \
        distributed_training.parameter_checksum(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert distributed_training.parameter_checksum(a) != \
        distributed_training.parameter_checksum(b)
