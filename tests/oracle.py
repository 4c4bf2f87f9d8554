"""The test oracle: the pLSTM recurrence run edge by edge, in float64, straight from
docs/contract.md.

It shares no code with the package. Its own topological order comes from a depth-first search,
states live in a dict, and gradients come from plain autograd through the loop.
"""
import random

import torch


def _topological_edges(edge_index):
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    succ = {}
    for u, w in zip(src, dst):
        succ.setdefault(u, []).append(w)
    order, state = [], {}

    for root in sorted(set(src) | set(dst)):
        if state.get(root):
            continue
        stack = [(root, iter(succ.get(root, [])))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                order.append(node)
                stack.pop()
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(succ.get(nxt, []))))
            elif state[nxt] == 1:
                raise ValueError("cycle")
    rank = {n: i for i, n in enumerate(reversed(order))}
    return sorted(range(len(src)), key=lambda e: rank[src[e]])


def plstm_oracle(q, k, v, S, T, M, D, edge_index, line_index):
    """y[N,H,V] for one DAG; all tensors are used as given (pass float64)."""
    N, H, _ = q.shape
    Vw = v.shape[-1]
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    incoming = {}
    for j, (a, b) in enumerate(line_index.t().tolist()):
        assert dst[a] == src[b]
        incoming.setdefault(b, []).append((j, a))
    states = {}
    for e in _topological_edges(edge_index):
        u = src[e]
        c = S[e][:, None, None] * k[u][:, :, None] * v[u][:, None, :]
        for j, a in incoming.get(e, []):
            c = c + T[j][:, None, None] * states[a]
        states[e] = c
    rows = []
    for n in range(N):
        y = D[n][:, None] * (q[n] * k[n]).sum(-1, keepdim=True) * v[n]
        for e in range(len(src)):
            if dst[e] == n:
                y = y + M[e][:, None] * torch.einsum("hkv,hk->hv", states[e], q[n])
        rows.append(y)
    if not rows:
        return q.new_zeros(0, H, Vw)
    return torch.stack(rows)


def random_dag(num_nodes, edge_prob=0.3, seed=0, max_span=None, shuffle=True):
    """Random DAG whose node ids are a random permutation of a hidden topological order."""
    rng = random.Random(seed)
    perm = list(range(num_nodes))
    if shuffle:
        rng.shuffle(perm)
    edges = []
    for i in range(num_nodes):
        hi = num_nodes if max_span is None else min(num_nodes, i + 1 + max_span)
        for j in range(i + 1, hi):
            if rng.random() < edge_prob:
                edges.append((perm[i], perm[j]))
    rng.shuffle(edges)
    if not edges:
        return torch.empty(2, 0, dtype=torch.long)
    return torch.tensor(edges, dtype=torch.long).t().contiguous()


def disjoint_union(parts):
    """One graph of several ``(edge_index, num_nodes)`` parts side by side (node ids offset),
    as a PyG batch lays them out; returns ``(edge_index, num_nodes)``."""
    offset, shifted = 0, [torch.empty(2, 0, dtype=torch.long)]
    for edge_index, num_nodes in parts:
        shifted.append(edge_index + offset)
        offset += num_nodes
    return torch.cat(shifted, 1), offset


def random_inputs(num_nodes, num_edges, num_arcs, heads=2, kdim=3, vdim=4, seed=0,
                  dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, lo=-1.0, hi=1.0):
        x = torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
        return x.to(dtype).requires_grad_(requires_grad)

    return dict(
        query=r(num_nodes, heads, kdim), key=r(num_nodes, heads, kdim),
        value=r(num_nodes, heads, vdim), source=r(num_edges, heads, lo=0, hi=1),
        transition=r(num_arcs, heads, lo=-0.6, hi=0.6), mark=r(num_edges, heads, lo=0, hi=1),
        direct=r(num_nodes, heads, lo=0, hi=1))
