"""The op layer: ``plstm_dag`` and its backends. It knows tensors and schedules, not modules."""
from .native import WITH_CUDA, WITH_NATIVE
from .dispatch import plstm_dag

__all__ = ["plstm_dag", "WITH_NATIVE", "WITH_CUDA"]
