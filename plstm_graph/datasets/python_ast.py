r"""Directed-acyclic graphs of Python function ASTs (built offline).

Source
    The Python standard library of the running interpreter
    (``sysconfig.get_paths()['stdlib']``).  Directories named ``test``,
    ``tests``, ``idle_test``, ``site-packages``, ``dist-packages`` and
    ``__pycache__`` and files named ``test_*.py`` are skipped, as are files
    that fail to read or parse.  Files are visited in sorted order and then
    shuffled with a fixed seed, so a small ``max_graphs`` still samples many
    modules.  Within a file every ``FunctionDef`` / ``AsyncFunctionDef``
    (methods and nested functions included) becomes one graph, in source
    pre-order, at most ``max_per_file`` per file.  Functions with fewer than
    ``min_nodes`` or more than ``max_nodes`` graph nodes are skipped (not
    truncated), and exact duplicates (same structure *and* same label, e.g.
    the ~100 generated codec modules in ``encodings``) are kept only once.
    The data therefore depends on the Python version; the version is part of
    the cache key.

Graph
    Nodes are AST nodes of the function (the function definition itself is
    node 0).  ``expr_context`` nodes (``Load``/``Store``/``Del``) are dropped;
    operators (``Add``, ``Eq``, ``Not`` ...), ``arguments``, ``arg``,
    ``keyword`` etc. are kept.  Node ids are pre-order (DFS) positions.
    Edges:

    * ``parent -> child`` for every AST child (kind ``child_k``, where ``k``
      is the child's position among its parent's children, bucketed to
      0, 1, 2, 3+);
    * ``child_i -> child_{i+1}`` between consecutive children of the same
      parent (kind ``next_sibling``; disable with ``sibling_edges=False``).
      These give the DAG many distinct paths between node pairs
      (``p -> c2`` and ``p -> c1 -> c2``).

    Every edge goes from a smaller to a larger pre-order id (a child follows
    its parent, and a later sibling follows the whole subtree of an earlier
    one), so the graph is acyclic and node ids happen to be a topological
    order.  The graph is *not* symmetrised.

Features (same for both tasks)
    * ``node_type`` ``[N]`` long: index into :data:`AST_NODE_TYPES` (a fixed,
      sorted vocabulary of the concrete AST classes of the running ``ast``
      module, ``expr_context`` excluded), or :data:`MASK_INDEX` for masked
      nodes (node task only).
    * ``x`` ``[N, NUM_NODE_TYPES + 1]`` float: one-hot of ``node_type``; the
      last column is the MASK indicator.
    * ``edge_type`` ``[E]`` long and ``edge_attr`` ``[E, 5]`` float (one-hot)
      over :data:`EDGE_TYPES`.
    * ``file_id`` ``[1]`` long: index into ``dataset.files`` (source file).

Labels
    ``task="graph"``: ``y`` ``[1]`` = coarse *function-name* class
    (method-name prediction reduced to :data:`GRAPH_CLASSES`).  The name is
    split into sub-tokens (``snake_case`` / ``camelCase``, leading
    underscores ignored) and the first sub-token is mapped to a verb group
    (:data:`NAME_GROUPS`); ``__dunder__`` methods form their own class and
    everything else is ``other``.  The name itself never appears in the
    graph (only node types are used).

    ``task="node"``: masked node-type prediction.  For each graph a fixed
    random ~``mask_rate`` of the non-root nodes (at least one) is masked:
    their ``x`` row is the MASK one-hot and ``node_type == MASK_INDEX``.
    ``y`` ``[N]`` holds the true type of every node and ``label_mask`` ``[N]``
    (bool) marks the masked nodes, i.e. the ones to score.  The mask depends
    only on ``seed`` and the function's location, not on the caps.

Splits
    :meth:`PythonASTDataset.split_by_file` returns a seeded train/val/test
    split in which all functions of one source file land in the same part.
"""

from __future__ import annotations

import _ast
import ast
import hashlib
import json
import os
import os.path as osp
import random
import re
import sys
import sysconfig
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch_geometric.data import Data, InMemoryDataset

from ._common import resolve_root
from .splits import Split, group_split

#: Bump when the graph construction changes; part of the cache key.
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Vocabularies (fixed, derived from the ``ast`` module, never from data)
# ---------------------------------------------------------------------------

def _concrete_ast_classes() -> Tuple[str, ...]:
    classes = {
        name: obj for name, obj in vars(_ast).items()
        if isinstance(obj, type) and issubclass(obj, ast.AST)
    }
    abstract = {
        name for name, cls in classes.items()
        if any(other is not cls and issubclass(other, cls)
               for other in classes.values())
    }
    contexts = {name for name, cls in classes.items()
                if issubclass(cls, ast.expr_context)}
    return tuple(sorted(set(classes) - abstract - contexts))


#: Sorted names of the AST node classes used as node types.
AST_NODE_TYPES: Tuple[str, ...] = _concrete_ast_classes()
NUM_NODE_TYPES: int = len(AST_NODE_TYPES)
#: ``node_type`` value (and ``x`` column) of masked nodes.
MASK_INDEX: int = NUM_NODE_TYPES
_TYPE_INDEX: Dict[str, int] = {n: i for i, n in enumerate(AST_NODE_TYPES)}

#: Edge kinds, in ``edge_type`` / ``edge_attr`` order.
EDGE_TYPES: Tuple[str, ...] = (
    "child_0", "child_1", "child_2", "child_3+", "next_sibling")
NUM_EDGE_TYPES: int = len(EDGE_TYPES)
_SIBLING = EDGE_TYPES.index("next_sibling")

#: Graph-task classes: first name sub-token -> verb group.
NAME_GROUPS: Dict[str, Tuple[str, ...]] = {
    "get": ("get", "fetch", "lookup", "find", "search", "select",
            "getstate", "value", "keys", "count", "index"),
    "set": ("set", "put", "assign", "update", "reset", "clear"),
    "predicate": ("is", "has", "can", "should", "needs", "supports",
                  "contains", "exists", "equals", "allow", "allowed"),
    "read": ("read", "load", "parse", "decode", "unpack", "scan", "recv",
             "receive", "readline", "readlines", "readinto", "deserialize",
             "from", "feed", "seek", "tell"),
    "write": ("write", "dump", "save", "encode", "pack", "send", "print",
              "format", "serialize", "emit", "to", "as", "repr", "str",
              "render", "show", "log", "warn", "display", "writelines",
              "sendfile", "pprint", "report", "debug", "trace", "error"),
    "create": ("create", "make", "new", "build", "init", "setup", "copy",
               "clone", "gen", "generate", "compile", "construct"),
    "check": ("check", "validate", "verify", "assert", "test", "ensure",
              "expect", "require", "compare", "match", "cmp", "ok"),
    "modify": ("add", "append", "insert", "extend", "remove", "delete", "del",
               "pop", "push", "discard", "register", "unregister", "replace",
               "convert", "normalize", "fix", "transform", "apply", "split",
               "join", "extract", "expand", "wrap", "escape", "quote",
               "filter", "map", "reduce", "resolve", "truncate", "move"),
    "lifecycle": ("close", "open", "start", "stop", "run", "handle", "do",
                  "process", "call", "execute", "exec", "visit", "wait",
                  "connect", "shutdown", "finish", "flush", "begin", "end",
                  "enter", "exit", "cleanup", "main", "on", "dispatch",
                  "initialize", "finalize", "destroy", "cancel", "release",
                  "acquire", "install", "terminate", "poll", "notify",
                  "accept", "bind", "detach"),
}
#: Graph-task class names, in label order.
GRAPH_CLASSES: Tuple[str, ...] = ("dunder",) + tuple(NAME_GROUPS) + ("other",)
_TOKEN_CLASS: Dict[str, int] = {
    tok: 1 + gi for gi, toks in enumerate(NAME_GROUPS.values()) for tok in toks
}

_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages",
                        "dist-packages", "__pycache__"})
_SUBTOKEN_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def name_subtokens(name: str) -> List[str]:
    """Lower-cased sub-tokens of an identifier (snake_case and camelCase)."""
    return [t.lower() for t in _SUBTOKEN_RE.findall(name)]


def name_to_class(name: str) -> int:
    """Graph-task label (index into :data:`GRAPH_CLASSES`) of a function
    name."""
    if len(name) > 4 and name.startswith("__") and name.endswith("__"):
        return 0
    toks = name_subtokens(name)
    if not toks:
        return len(GRAPH_CLASSES) - 1
    return _TOKEN_CLASS.get(toks[0], len(GRAPH_CLASSES) - 1)


# ---------------------------------------------------------------------------
# AST -> graph
# ---------------------------------------------------------------------------

def _children(node: ast.AST) -> List[ast.AST]:
    return [c for c in ast.iter_child_nodes(node)
            if not isinstance(c, ast.expr_context)]


def function_to_graph(
    fn: ast.AST, sibling_edges: bool = True, max_nodes: Optional[int] = None,
) -> Optional[Tuple[List[int], List[Tuple[int, int]], List[int]]]:
    """Convert an AST subtree into ``(node_types, edges, edge_types)``.

    Node ids are pre-order positions; every edge ``(u, v)`` has ``u < v``.
    Returns ``None`` if the tree has more than ``max_nodes`` nodes.
    """
    node_types: List[int] = []
    edges: List[Tuple[int, int]] = []
    edge_types: List[int] = []
    # Stack entries: (ast node, parent id, position among parent's children,
    # id of the previous sibling or -1).  Pre-order ids are assigned on pop;
    # the previous sibling's id is only known after its whole subtree is
    # numbered, so siblings are pushed lazily (one at a time).
    stack: List[Tuple[ast.AST, int, int, List[ast.AST]]] = [(fn, -1, 0, [])]
    prev_sibling: Dict[Tuple[int, int], int] = {}
    while stack:
        node, parent, pos, rest = stack.pop()
        nid = len(node_types)
        if max_nodes is not None and nid >= max_nodes:
            return None
        node_types.append(_TYPE_INDEX[type(node).__name__])
        if parent >= 0:
            edges.append((parent, nid))
            edge_types.append(min(pos, 3))
            if sibling_edges and pos > 0:
                edges.append((prev_sibling[(parent, pos - 1)], nid))
                edge_types.append(_SIBLING)
            prev_sibling[(parent, pos)] = nid
        # Continue with the next sibling after this node's subtree.
        if rest:
            stack.append((rest[0], parent, pos + 1, rest[1:]))
        kids = _children(node)
        if kids:
            stack.append((kids[0], nid, 0, kids[1:]))
    return node_types, edges, edge_types


def _iter_functions(tree: ast.AST) -> Iterator[ast.AST]:
    """Function definitions of a module in source pre-order."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_stdlib_files(stdlib: Optional[str] = None) -> List[str]:
    """Sorted stdlib ``.py`` paths (relative to ``stdlib``), tests skipped."""
    stdlib = stdlib or stdlib_dir()
    out: List[str] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fname in sorted(filenames):
            if fname.endswith(".py") and not fname.startswith("test_"):
                out.append(osp.relpath(osp.join(dirpath, fname), stdlib)
                           .replace(os.sep, "/"))
    out.sort()
    return out


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------

class PythonASTDataset(InMemoryDataset):
    r"""Function ASTs of the Python standard library as directed acyclic
    graphs; see the module docstring for the exact construction.

    Args:
        root: cache directory (default ``$PLSTM_GRAPH_DATA`` or
            ``~/.cache/plstm_graph``); files go to ``<root>/PythonAST/``.
        task: ``"graph"`` (function-name class) or ``"node"`` (masked
            node-type prediction).
        max_graphs: maximum number of functions (graphs).
        max_nodes: functions with more nodes are skipped.
        min_nodes: functions with fewer nodes are skipped.
        max_per_file: at most this many functions per source file.
        sibling_edges: add ``child_i -> child_{i+1}`` edges.
        mask_rate: node task: fraction of non-root nodes to mask.
        seed: controls file order and masking.
        transform, pre_transform, pre_filter, force_reload: as in
            :class:`~torch_geometric.data.InMemoryDataset`.

    Besides the PyG API the dataset has ``files`` (source files, indexed by
    ``file_id``), ``functions`` (one ``{"file", "name", "lineno"}`` dict per
    graph), ``class_names`` and ``build_info`` (statistics of the build).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        task: str = "graph",
        max_graphs: int = 8000,
        max_nodes: int = 256,
        min_nodes: int = 5,
        max_per_file: int = 64,
        sibling_edges: bool = True,
        mask_rate: float = 0.15,
        seed: int = 0,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = False,
    ) -> None:
        if task not in ("graph", "node"):
            raise ValueError(f"task must be 'graph' or 'node', got {task!r}")
        if not 0.0 < mask_rate < 1.0:
            raise ValueError("mask_rate must be in (0, 1)")
        if max_graphs < 1 or max_nodes < 2 or min_nodes > max_nodes:
            raise ValueError("invalid max_graphs / max_nodes / min_nodes")
        self.task = task
        self.config = {
            "format": FORMAT_VERSION,
            "python": "%d.%d" % sys.version_info[:2],
            "task": task,
            "max_graphs": int(max_graphs),
            "max_nodes": int(max_nodes),
            "min_nodes": int(min_nodes),
            "max_per_file": int(max_per_file),
            "sibling_edges": bool(sibling_edges),
            "mask_rate": float(mask_rate) if task == "node" else None,
            "seed": int(seed),
        }
        key = hashlib.sha1(json.dumps(self.config, sort_keys=True)
                           .encode()).hexdigest()[:12]
        self._stem = f"{task}_{key}"
        super().__init__(osp.join(resolve_root(root), "PythonAST"), transform,
                         pre_transform, pre_filter, log=log,
                         force_reload=force_reload)
        self.load(self.processed_paths[0])
        with open(self.processed_paths[1], encoding="utf-8") as fh:
            meta = json.load(fh)
        self.files: List[str] = meta["files"]
        self.functions: List[Dict] = meta["functions"]
        self.build_info: Dict = meta["build_info"]
        if meta["node_types"] != list(AST_NODE_TYPES):
            raise RuntimeError("cached PythonAST data was built with a "
                               "different AST vocabulary; use force_reload")

    # -- PyG plumbing -----------------------------------------------------
    @property
    def raw_file_names(self) -> List[str]:
        return []  # the "raw" data is the installed standard library

    @property
    def processed_file_names(self) -> List[str]:
        return [f"{self._stem}.pt", f"{self._stem}.json"]

    @property
    def num_classes(self) -> int:
        return len(GRAPH_CLASSES) if self.task == "graph" else NUM_NODE_TYPES

    @property
    def class_names(self) -> Tuple[str, ...]:
        return GRAPH_CLASSES if self.task == "graph" else AST_NODE_TYPES

    # -- building ---------------------------------------------------------
    def process(self) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        stdlib = stdlib_dir()
        files = list_stdlib_files(stdlib)
        random.Random(cfg["seed"]).shuffle(files)

        data_list: List[Data] = []
        functions: List[Dict] = []
        used_files: List[str] = []
        seen = set()
        n_parse_fail = n_size_skip = n_dup = 0
        for rel in files:
            if len(data_list) >= cfg["max_graphs"]:
                break
            try:
                with open(osp.join(stdlib, rel), "rb") as fh:
                    tree = ast.parse(fh.read(), filename=rel)
            except (SyntaxError, ValueError, UnicodeDecodeError, OSError,
                    RecursionError, MemoryError):
                n_parse_fail += 1
                continue
            file_id = None
            n_in_file = 0
            for fn in _iter_functions(tree):
                if (len(data_list) >= cfg["max_graphs"]
                        or n_in_file >= cfg["max_per_file"]):
                    break
                g = function_to_graph(fn, cfg["sibling_edges"],
                                      cfg["max_nodes"])
                if g is None or len(g[0]) < cfg["min_nodes"]:
                    n_size_skip += 1
                    continue
                label = name_to_class(fn.name)
                sig = hashlib.sha1(repr((label, g)).encode()).digest()
                if sig in seen:
                    n_dup += 1
                    continue
                seen.add(sig)
                if file_id is None:
                    file_id = len(used_files)
                    used_files.append(rel)
                data = self._make_data(g, label, file_id, rel, fn)
                if self.pre_filter is not None and not self.pre_filter(data):
                    continue
                if self.pre_transform is not None:
                    data = self.pre_transform(data)
                data_list.append(data)
                functions.append({"file": rel, "name": fn.name,
                                  "lineno": fn.lineno})
                n_in_file += 1
        if not data_list:
            raise RuntimeError(f"no functions found under {stdlib!r}")

        build_info = self._stats(data_list)
        build_info.update({
            "stdlib": stdlib, "files_scanned": len(files),
            "files_used": len(used_files), "parse_failures": n_parse_fail,
            "skipped_by_size": n_size_skip, "duplicates_dropped": n_dup,
            "build_seconds": round(time.perf_counter() - t0, 3),
        })
        self.save(data_list, self.processed_paths[0])
        meta = {"config": cfg, "node_types": list(AST_NODE_TYPES),
                "edge_types": list(EDGE_TYPES),
                "class_names": list(self.class_names if self.task == "node"
                                    else GRAPH_CLASSES),
                "files": used_files, "functions": functions,
                "build_info": build_info}
        tmp = self.processed_paths[1] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
        os.replace(tmp, self.processed_paths[1])

    def _make_data(self, g, label: int, file_id: int, rel: str,
                   fn: ast.AST) -> Data:
        node_types, edges, edge_types = g
        n = len(node_types)
        true_type = torch.tensor(node_types, dtype=torch.long)
        node_type = true_type.clone()
        if edges:
            edge_index = torch.tensor(edges, dtype=torch.long).t().contiguous()
        else:
            edge_index = torch.empty(2, 0, dtype=torch.long)
        edge_type = torch.tensor(edge_types, dtype=torch.long)
        kw = {}
        if self.task == "node":
            rng = random.Random(
                f"{self.config['seed']}|{rel}|{fn.lineno}|{fn.col_offset}")
            k = max(1, int(round(self.config["mask_rate"] * (n - 1))))
            masked = torch.tensor(sorted(rng.sample(range(1, n), k)),
                                  dtype=torch.long)
            label_mask = torch.zeros(n, dtype=torch.bool)
            label_mask[masked] = True
            node_type[masked] = MASK_INDEX
            kw["y"] = true_type
            kw["label_mask"] = label_mask
        else:
            kw["y"] = torch.tensor([label], dtype=torch.long)
        x = torch.zeros(n, NUM_NODE_TYPES + 1)
        x[torch.arange(n), node_type] = 1.0
        edge_attr = torch.zeros(edge_type.numel(), NUM_EDGE_TYPES)
        edge_attr[torch.arange(edge_type.numel()), edge_type] = 1.0
        return Data(x=x, edge_index=edge_index, edge_attr=edge_attr,
                    node_type=node_type, edge_type=edge_type,
                    file_id=torch.tensor([file_id], dtype=torch.long),
                    num_nodes=n, **kw)

    def _stats(self, data_list: Sequence[Data]) -> Dict:
        nodes = [d.num_nodes for d in data_list]
        edges = [d.edge_index.size(1) for d in data_list]
        info = {
            "num_graphs": len(data_list),
            "nodes_mean": round(sum(nodes) / len(nodes), 2),
            "nodes_max": max(nodes),
            "edges_mean": round(sum(edges) / len(edges), 2),
            "edges_max": max(edges),
        }
        if self.task == "graph":
            counts = [0] * len(GRAPH_CLASSES)
            for d in data_list:
                counts[int(d.y)] += 1
            info["class_counts"] = dict(zip(GRAPH_CLASSES, counts))
        else:
            info["masked_nodes"] = int(sum(int(d.label_mask.sum())
                                           for d in data_list))
        return info

    # -- splits -----------------------------------------------------------
    def split_by_file(self, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                      seed: int = 0) -> Split:
        """Seeded ``(train_idx, val_idx, test_idx)``; all functions of a
        source file fall into the same part.  Call it on the full dataset
        (not on an index-selected view)."""
        if self._indices is not None:
            raise RuntimeError("split_by_file() needs the full dataset")
        return group_split([f["file"] for f in self.functions], fractions,
                           seed)

    def __repr__(self) -> str:
        return f"PythonASTDataset({len(self)}, task={self.task!r})"
