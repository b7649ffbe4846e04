"""Rotary position embeddings for packed sequences (ESM-2 / RoFormer, "rotate half" convention)."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["rotary_tables", "apply_rotary"]


def rotary_tables(positions: torch.Tensor, head_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for token positions.

    Args:
        positions: ``int64 [T]`` position of every packed token within its own sequence (BOS is 0).
        head_dim: ``d``, even.

    Returns:
        ``cos, sin``: ``float32 [T, 1, d]`` (broadcast over heads). Computed in float32 exactly as
        fair-esm does: ``inv_freq = 1 / 10000^(2i/d)``, angle ``= position * inv_freq``, duplicated
        over the two halves of the head.
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None, :], emb.sin()[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[T, H, d]``) by the tables; computed in float32, returned in ``x.dtype``."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
