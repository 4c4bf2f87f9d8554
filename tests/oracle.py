"""The test oracles, straight from docs/contract.md: the pLSTM recurrence run edge by edge in
float64 (:func:`plstm_oracle`, and :func:`chain_oracle` for paths too long for it), the D-mode
multitree pruning (:func:`multitree_oracle`) and the topological generations it visits in
(:func:`node_generations`).

They share no code with the package. The recurrence takes its own topological order from a
depth-first search, keeps states in a dict, and gets gradients from plain autograd through the
loop. Graph builders, the implementation matrix and the runners are in ``harness.py``.
"""
import torch

_NAMES = ("query", "key", "value", "source", "transition", "mark", "direct")


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




def chain_oracle(x, nodes, edge_index, line_index, grad_seed=0):
    """Float64 forward and autograd backward of the recurrence on a path, step by step along
    ``nodes``: no schedule, no levels, no oracle readout loop over all node pairs."""
    length = nodes.numel() - 1
    eid = torch.empty(length + 1, dtype=torch.long)  # eid[node] = the edge leaving node
    eid[edge_index[0]] = torch.arange(length)
    edges = eid[nodes[:-1]].tolist()
    arc_into = torch.full((length,), -1, dtype=torch.long)
    arc_into[line_index[1]] = torch.arange(line_index.size(1))
    arcs = arc_into[eid[nodes[1:-1]]].tolist()  # arc into the i-th edge, i >= 1
    q, k, v, S, T, M, D = (x[n] for n in _NAMES)
    # one gather per input, then per-step views (indexing a leaf inside the loop would give
    # every step a backward that writes a whole zero gradient: quadratic time)
    edges = torch.tensor(edges)
    writes = (S[edges][:, :, None, None] * k[nodes[:-1]][:, :, :, None] *
              v[nodes[:-1]][:, :, None, :]).unbind(0)
    gates = T[torch.tensor(arcs, dtype=torch.long)][:, :, None, None].unbind(0)
    marks = M[edges][:, :, None].unbind(0)
    queries = q[nodes[1:]].unbind(0)
    reads = []
    state = None
    for i in range(length):
        state = writes[i] if i == 0 else writes[i] + gates[i - 1] * state
        reads.append(marks[i] * torch.einsum("hkv,hk->hv", state, queries[i]))
    y = D[..., None] * (q * k).sum(-1, keepdim=True) * v
    y = y.index_add(0, nodes[1:], torch.stack(reads))
    g = torch.Generator().manual_seed(grad_seed)
    wgt = torch.rand(y.shape, generator=g, dtype=torch.float64).to(y.dtype) - 0.5
    (y * wgt).sum().backward()
    return y.detach(), {n: x[n].grad for n in _NAMES}


def node_generations(edge_index, num_nodes):
    """Longest-path level of every node (sources are 0), by a plain Python Kahn loop."""
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    indeg = [0] * num_nodes
    succ = [[] for _ in range(num_nodes)]
    for u, w in zip(src, dst):
        indeg[w] += 1
        succ[u].append(w)
    level = [0] * num_nodes
    ready = [n for n in range(num_nodes) if indeg[n] == 0]
    seen = 0
    while ready:
        n = ready.pop()
        seen += 1
        for w in succ[n]:
            level[w] = max(level[w], level[n] + 1)
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    if seen != num_nodes:
        raise ValueError("node_generations called on a cyclic graph")
    return level


def multitree_oracle(edge_index, line_index, node_level=None):
    """The contract's pruning rule (docs/contract.md, "D-mode"), arc by arc.

    Line-graph nodes (edges) are visited in topological order (level of the tail node, then
    edge id; the levels are :func:`node_generations` unless ``node_level`` is given); the
    predecessors of each edge earliest-first (same key; copies of one arc by column); the arc
    ``p -> c`` is dropped when ``c`` is already reachable, through kept arcs, from ``p`` or an
    ancestor of ``p``. Ancestor sets are Python ``int`` bitsets over the edge positions, freed
    once every arc leaving an edge was visited, so it also runs on graphs of 3e5 edges.
    """
    num_edges, num_arcs = edge_index.size(1), line_index.size(1)
    if num_arcs == 0:
        return line_index.clone()
    if node_level is None:
        num_nodes = int(edge_index.max()) + 1
        level = node_generations(edge_index, num_nodes)
    else:
        level = node_level.tolist()
    src = edge_index[0].tolist()
    order = sorted(range(num_edges), key=lambda e: (level[src[e]], e))
    pos = [0] * num_edges
    for i, e in enumerate(order):
        pos[e] = i
    tails, heads = line_index[0].tolist(), line_index[1].tolist()
    arc_order = sorted(range(num_arcs), key=lambda j: (pos[heads[j]], pos[tails[j]], j))
    pending = [0] * num_edges  # unvisited out-arcs of every edge
    for p in tails:
        pending[p] += 1
    ancestors = {}
    keep = [False] * num_arcs
    acc, current = 0, -1
    for j in arc_order:
        c, p = heads[j], tails[j]
        if c != current:
            if current >= 0:
                ancestors[current] = acc | (1 << pos[current])
            current, acc = c, 0
        anc_p = ancestors.get(p, 1 << pos[p])
        if not anc_p & acc:
            keep[j] = True
            acc |= anc_p
        pending[p] -= 1
        if pending[p] == 0:
            ancestors.pop(p, None)
    return line_index[:, torch.tensor(keep, dtype=torch.bool, device=line_index.device)]
