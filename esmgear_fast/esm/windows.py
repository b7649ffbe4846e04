"""Overlapping windows for sequences longer than the model window.

Rule (``long_sequences="window"``): a sequence of ``L > W`` residues (``W = max_residues``, 1022 for
ESM-2) is cut into windows of exactly ``W`` residues starting at ``0, S, 2S, ...`` with stride
``S = W - overlap``; the last window is aligned to the end (starts at ``L - W``). Every window is
encoded as its own sequence (with its own BOS/EOS, positions restarting at 0, like fair-esm on the
substring). Each residue takes its output from the window in which it is **most central**: the
window maximising ``min(i - start, start + W - 1 - i)``; ties go to the earlier window. With the
default ``overlap = 512`` every residue except those within 255 of a true sequence end sees at
least 255 residues of context on both sides.

``long_sequences="truncate"`` reproduces the ESM-GearNet paper / TorchDrug: only the first ``W``
residues are encoded; the remaining residues get **zero** vectors (so the node count still matches
the structure). ``long_sequences="error"`` raises.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

__all__ = ["window_starts", "assign_windows"]


def window_starts(length: int, window: int, overlap: int) -> List[int]:
    """Start residue of every window for a sequence of ``length`` residues (``[0]`` if it fits)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window {window}")
    if length <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def assign_windows(length: int, window: int, starts: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each residue, the window it is taken from and its offset inside that window.

    Returns:
        ``window_index int64 [L]`` and ``offset int64 [L]`` (``offset = i - starts[window_index]``).
    """
    i = torch.arange(length)
    s = torch.tensor(starts)
    inside = (i[None, :] >= s[:, None]) & (i[None, :] < s[:, None] + window)
    centrality = torch.minimum(i[None, :] - s[:, None], s[:, None] + window - 1 - i[None, :])
    centrality = torch.where(inside, centrality, torch.full_like(centrality, -1))
    # argmax returns the first maximum -> ties go to the earlier window
    best = centrality.argmax(0)
    return best, i - s[best]
