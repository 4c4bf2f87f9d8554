"""Pre-norm residual blocks around :class:`PLSTMConv`, as in the pLSTM paper's graph model."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .conv import PLSTMConv


class MLPBlock(torch.nn.Module):
    """``x + Dropout(Linear(GELU(Linear(LayerNorm(x)))))`` with a 4x hidden width."""

    def __init__(self, channels: int, expansion: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels)
        self.lin1 = torch.nn.Linear(channels, expansion * channels)
        self.lin2 = torch.nn.Linear(expansion * channels, channels)
        self.dropout = torch.nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        for module in (self.norm, self.lin1, self.lin2):
            module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.lin2(torch.nn.functional.gelu(self.lin1(self.norm(x)))))


class PLSTMBlock(torch.nn.Module):
    """``x + Dropout(PLSTMConv(LayerNorm(x)))`` followed by an :class:`MLPBlock`.

    Args:
        channels (int): Width of the residual stream.
        heads (int): pLSTM heads.
        mode (str): ``"P"`` or ``"D"``.
        edge_dim (int, optional): Edge feature width passed to the layer's gates.
        dropout (float): Dropout on both residual branches.
        mlp_ratio (int): Hidden width of the MLP block as a multiple of ``channels``.
        **kwargs: Further :class:`PLSTMConv` arguments.
    """

    def __init__(self, channels: int, heads: int = 4, mode: str = "P",
                 edge_dim: Optional[int] = None, dropout: float = 0.0, mlp_ratio: int = 4,
                 **kwargs):
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels)
        self.conv = PLSTMConv(channels, channels, heads=heads, mode=mode, edge_dim=edge_dim,
                              **kwargs)
        self.dropout = torch.nn.Dropout(dropout)
        self.mlp = MLPBlock(channels, expansion=mlp_ratio, dropout=dropout)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.conv.reset_parameters()
        self.mlp.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                **dag) -> Tensor:
        x = x + self.dropout(self.conv(self.norm(x), edge_index, edge_attr, **dag))
        return self.mlp(x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.conv})"
