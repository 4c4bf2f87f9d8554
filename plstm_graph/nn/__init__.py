"""Layers: the pLSTM convolution and the pre-norm residual blocks of the paper's graph model."""
from .blocks import MLPBlock, PLSTMBlock
from .conv import PLSTMConv

__all__ = ["PLSTMConv", "PLSTMBlock", "MLPBlock"]
