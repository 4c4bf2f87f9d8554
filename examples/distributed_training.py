#!/usr/bin/env python
"""Data-parallel training of ``PLSTMNet`` on MUTAG with ``DistributedDataParallel``.

One process per device (``torchrun``), each with a full copy of the model and its own shard of
every epoch's graphs (``DistributedSampler``); gradients are averaged across processes after
every backward pass, so all copies take the same optimiser step and stay identical.

* Backend: ``nccl`` with one GPU per process when CUDA is available, ``gloo`` on CPU otherwise
  (``--backend`` overrides).
* Data: the dataset is prepared (``PrepareDAG`` as ``pre_transform``) once. Rank 0 processes it
  into the dataset root while the others wait on a barrier, then they load the processed files.
  On several machines without a shared file system pass ``--node-local-data``: local rank 0 of
  every machine prepares its own copy.
* Metrics: loss and accuracy are summed over all ranks (``all_reduce``) before printing. Only
  rank 0 prints and writes the checkpoint.
* The last line starts with ``SUMMARY`` and names the world size and a checksum of the trained
  parameters that every rank computed for itself (``all_gather``); the run fails if two ranks
  disagree.

Launch::

    python examples/distributed_training.py                           # one process
    torchrun --standalone --nproc_per_node=2 examples/distributed_training.py

    # several machines: the same command on each, HOST being one of them that all can reach
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:29400 --rdzv_id=mutag examples/distributed_training.py

With several network interfaces, name the one to use with ``GLOO_SOCKET_IFNAME`` (CPU) or
``NCCL_SOCKET_IFNAME`` (GPU). Without a file system shared by the machines add
``--node-local-data``.

``--batch-size`` is per process: the global batch is ``world size x batch size`` graphs.
The split is 90/10 (stratified, ``--seed``): train on 90%, report accuracy on the other 10%.
The default 50 epochs take about 10 s on two CPU processes and learn (training accuracy 0.88,
test accuracy 0.63-0.74 on the 19 test graphs of this split, majority 0.63).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import os.path as osp
import socket
import sys
import time
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

try:
    import plstm_graph
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import plstm_graph

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import prepared_root, stratified_folds  # noqa: E402


from plstm_graph import DAGDataLoader, DAGPlan, PLSTMNet, PrepareDAG  # noqa: E402


# ---------------------------------------------------------------------------------------------
# process group
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "auto"):
    """``(rank, world_size, local_rank, device)`` after joining the process group.

    Under ``torchrun`` the rendezvous comes from its environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...). A plain ``python`` run becomes a group of one on a free loopback
    port, so that the training code is the same in both cases."""
    use_cuda = torch.cuda.is_available() and backend in ("auto", "nccl")
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        init_method = "env://"
    else:
        rank, world, local_rank = 0, 1, 0
        init_method = f"tcp://127.0.0.1:{free_port()}"
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    kwargs = dict(backend=backend, init_method=init_method, rank=rank, world_size=world,
                  timeout=datetime.timedelta(minutes=10))
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator to this rank's GPU
    dist.init_process_group(**kwargs)
    return rank, world, local_rank, device


def all_sum(values: List[float], device) -> List[float]:
    """Element-wise sum over all ranks (float64, so that counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def parameter_checksum(module: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of every parameter's bytes, in ``named_parameters`` order:
    equal on two ranks only if their parameters are bitwise equal."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def agreed_checksum(module: torch.nn.Module, world: int) -> str:
    """The parameter checksum, after checking that every rank computed the same one."""
    mine = parameter_checksum(module)
    every = [None] * world
    dist.all_gather_object(every, mine)
    if len(set(every)) != 1:
        raise RuntimeError(f"ranks disagree on the trained parameters: {every}")
    return mine


# ---------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------
def load_dataset(root: Optional[str], preparer: bool):
    """MUTAG with ``PrepareDAG`` as ``pre_transform``, processed by one process only.

    ``preparer`` processes (PyG skips it when the processed files exist) and then releases
    the others from the barrier; they only ever read the finished files. Every rank calls
    the barrier exactly once, in the same place."""
    from plstm_graph.datasets import load_mutag

    root = prepared_root(root)
    if preparer:
        dataset = load_mutag(root=root, pre_transform=PrepareDAG())
        dist.barrier()
    else:
        dist.barrier()
        dataset = load_mutag(root=root, pre_transform=PrepareDAG())
    return dataset


def split(dataset, seed: int):
    """Stratified 90/10 train/test index lists (the same on every rank)."""
    labels = dataset.y.tolist()
    folds = stratified_folds(labels, 10, seed)
    test = folds[0]
    train = sorted(i for f in folds[1:] for i in f)
    return train, test


def build_model(dataset) -> PLSTMNet:
    # PLSTMNet's own defaults (layers, heads, gate and transition biases, no dropout); the bond
    # types are edge features
    return PLSTMNet(dataset.num_features, 64, dataset.num_classes, edge_dim=4)


def forward(model, batch):
    """Logits of a prepared batch (its ``DAGPlan`` built once and shared by all blocks)."""
    return model(batch.x, batch.dag_edge_index, None, batch.batch, plan=DAGPlan.from_data(batch))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train_epoch(ddp_model, loader, optimizer, device):
    """Local ``[loss sum, correct, graphs]`` of one epoch (summed over ranks by the caller)."""
    ddp_model.train()
    loss_sum = correct = count = 0.0
    for batch in loader:
        batch = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = forward(ddp_model, batch)
        # mean over this rank's graphs; DDP averages the gradients over ranks, which is the
        # gradient of the mean over the global batch when every rank holds as many graphs
        # (DistributedSampler pads the shards to equal length)
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * batch.num_graphs
        correct += int((logits.argmax(-1) == batch.y).sum())
        count += batch.num_graphs
    return [loss_sum, correct, count]


@torch.no_grad()
def evaluate(model, loader, device):
    """Local ``[loss sum, correct, graphs]`` on this rank's part of the test set."""
    model.eval()
    loss_sum = correct = count = 0.0
    for batch in loader:
        batch = batch.to(device)
        logits = forward(model, batch)
        loss_sum += float(F.cross_entropy(logits, batch.y, reduction="sum"))
        correct += int((logits.argmax(-1) == batch.y).sum())
        count += batch.num_graphs
    return [loss_sum, correct, count]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=50, help="training epochs")
    p.add_argument("--batch-size", type=int, default=32, help="graphs per batch per process")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW learning rate (cosine schedule)")
    p.add_argument("--seed", type=int, default=0, help="seed of split, init and shuffling")
    p.add_argument("--root", default=None, help="dataset cache (default: plstm_graph's)")
    p.add_argument("--node-local-data", action="store_true",
                   help="local rank 0 of every machine prepares the data (no shared "
                        "file system); default: global rank 0 only")
    p.add_argument("--checkpoint", default=osp.join("checkpoints", "mutag_ddp.pt"),
                   help="where rank 0 saves the trained model ('' for nowhere)")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="process group backend (auto: nccl with CUDA, else gloo)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op CPU threads per process")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be positive")
    if args.batch_size < 1:
        p.error("--batch-size must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rank, world, local_rank, device = init_distributed(args.backend)
    try:
        return run(args, rank, world, local_rank, device)
    finally:
        dist.destroy_process_group()


def run(args, rank, world, local_rank, device) -> dict:
    def log(*parts):
        if rank == 0:
            print(*parts, flush=True)

    t0 = time.perf_counter()
    preparer = local_rank == 0 if args.node_local_data else rank == 0
    dataset = load_dataset(args.root, preparer)
    train_idx, test_idx = split(dataset, args.seed)
    log(f"MUTAG: {len(dataset)} graphs ({len(train_idx)} train, {len(test_idx)} test) | "
        f"world size {world}, backend {dist.get_backend()}, device {device} | "
        f"global batch {world * args.batch_size} | data ready in "
        f"{time.perf_counter() - t0:.1f}s")

    torch.manual_seed(args.seed)  # every rank builds the same initial model
    model = build_model(dataset).to(device)
    # Every parameter of PLSTMNet takes part in every forward pass (gates of edge-less or
    # arc-less batches still get a zero gradient through their empty gathers), so DDP needs no
    # find_unused_parameters and its per-iteration graph traversal.
    ddp_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                        else None)
    optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=args.lr, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

    train_set = dataset[train_idx]
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed)
    train_loader = DAGDataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    # test shards without DistributedSampler's padding, so that every graph counts once
    test_loader = DAGDataLoader(dataset[test_idx[rank::world]], batch_size=256)

    # DistributedSampler repeats a few graphs so that every rank gets as many batches
    pad = world * len(sampler) - len(train_set)
    padded = f", {pad} repeated by the sampler" if pad else ""
    history = []
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        start = time.perf_counter()
        tr_loss, tr_correct, tr_count = all_sum(
            train_epoch(ddp_model, train_loader, optimizer, device), device)
        scheduler.step()
        te_loss, te_correct, te_count = all_sum(evaluate(model, test_loader, device), device)
        row = dict(epoch=epoch, train_loss=tr_loss / tr_count, train_acc=tr_correct / tr_count,
                   test_loss=te_loss / te_count, test_acc=te_correct / te_count,
                   seconds=time.perf_counter() - start)
        history.append(row)
        log(f"epoch {epoch:3d} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} "
            f"({int(tr_count)} graphs{padded}) | test loss {row['test_loss']:.4f} "
            f"acc {row['test_acc']:.3f} ({int(te_count)} graphs) | {row['seconds']:.1f}s")

    checksum = agreed_checksum(model, world)
    if rank == 0 and args.checkpoint:
        os.makedirs(osp.dirname(osp.abspath(args.checkpoint)), exist_ok=True)
        torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                        epoch=args.epochs, args=vars(args), world_size=world,
                        checksum=checksum), args.checkpoint)
        log(f"checkpoint: {args.checkpoint}")
    total = time.perf_counter() - t0
    summary = (f"SUMMARY MUTAG DDP world size {world} ({dist.get_backend()}), "
               f"{args.epochs} epochs: test acc {history[-1]['test_acc']:.3f}, "
               f"train loss {history[-1]['train_loss']:.4f} | parameter checksum {checksum} "
               f"(all ranks agree) | {total:.1f}s")
    log(summary)
    return dict(history=history, checksum=checksum, world_size=world, summary=summary,
                seconds=total)


if __name__ == "__main__":
    main()
