"""One pre-LayerNorm ESM-2 transformer layer on packed tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import PackedSequences, RotarySelfAttention

__all__ = ["EsmLayer"]


class EsmLayer(nn.Module):
    """``x + Attn(LN(x))`` then ``x + FC2(GELU(FC1(LN(x))))`` (exact erf GELU), as in ESM-2.

    Shapes: ``x`` ``[T, D]`` -> ``[T, D]``.
    """

    def __init__(self, embed_dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-5, attn_impl: str = "auto"):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.self_attn = RotarySelfAttention(embed_dim, num_heads, attn_impl)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)

    def forward(self, x: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), packed)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
