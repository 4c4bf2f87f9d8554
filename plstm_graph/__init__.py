"""pLSTM (parallelizable Linear Source Transition Mark networks) on DAGs for PyTorch Geometric.

Layout: :mod:`plstm_graph.dag` (orientation, levels, line graphs, multitree, the scan
schedule), :mod:`plstm_graph.transforms` (per-graph preparation for ``DataLoader`` batches),
:mod:`plstm_graph.ops` (``plstm_dag`` and its torch/native backends), :mod:`plstm_graph.nn`
(``PLSTMConv`` and blocks), :mod:`plstm_graph.models` (``PLSTMNet``) and
:mod:`plstm_graph.datasets` (bundled data), :mod:`plstm_graph.collate` (``DAGDataLoader``:
PyG's batches of prepared graphs, built faster), :mod:`plstm_graph.loader` (mini-batches of
one large DAG).
"""
from .collate import DAGDataLoader, collate_dags
from .dag import line_graph, multitree, reverse_dag, to_dag, topological_levels
from .loader import DAGNeighborLoader, DAGNeighborSampler
from .models import PLSTMNet
from .nn import PLSTMConv
from .ops import WITH_CUDA, WITH_NATIVE, plstm_dag
from .transforms import DAGData, DAGPlan, PrepareDAG

__version__ = "0.1.0"

__all__ = [
    "plstm_dag", "line_graph", "multitree", "topological_levels", "to_dag", "reverse_dag",
    "PLSTMConv", "PLSTMNet", "PrepareDAG", "DAGData", "DAGPlan", "DAGNeighborLoader",
    "DAGNeighborSampler", "DAGDataLoader", "collate_dags",
    "WITH_NATIVE", "WITH_CUDA", "__version__",
]
