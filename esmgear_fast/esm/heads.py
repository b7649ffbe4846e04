"""Masked-language-model head of ESM-2 (output weight tied to the token embedding)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskedLMHead"]


class MaskedLMHead(nn.Module):
    """``logits = LN(GELU(dense(x))) @ E^T + bias`` with ``E`` the token embedding ``[V, D]``.

    Shapes: ``x`` ``[N, D]`` -> ``[N, V]`` (``V = 33``).
    """

    def __init__(self, embed_dim: int, embedding: nn.Embedding, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))
        self._embedding = [embedding]  # tied weight; a list so it is not registered twice

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(F.gelu(self.dense(x)))
        return F.linear(x, self.weight) + self.bias
