"""pLSTM (parallelizable Linear Source Transition Mark networks) on DAGs for PyTorch Geometric."""
from .dag import line_graph, multitree, reverse_dag, to_dag, topological_levels
from .ops import WITH_CUDA, WITH_NATIVE, plstm_dag

__version__ = "0.1.0"

__all__ = [
    "plstm_dag", "line_graph", "multitree", "topological_levels", "to_dag", "reverse_dag",
    "WITH_NATIVE", "WITH_CUDA", "__version__",
]
