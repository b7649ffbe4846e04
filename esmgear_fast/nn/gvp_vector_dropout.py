"""Channel dropout for GVP vector features (gvp-pytorch's ``_VDropout``)."""
from __future__ import annotations

import torch
from torch import nn


class GVPVectorDropout(nn.Module):
    r"""Drops whole vector channels: in training, ``V [..., c, 3]`` becomes
    ``mask[..., c, None] * V / (1 - p)`` with ``mask ~ Bernoulli(1 - p)`` of shape ``V.shape[:-1]``,
    so the three coordinates of a channel are kept or dropped together (equivariant). Identity in
    eval mode.

    The mask is drawn exactly as gvp-pytorch does (one ``torch.bernoulli`` over a float32 tensor
    of shape ``V.shape[:-1]``), so under the same RNG state both give the same mask. ``p == 1``
    returns zeros (gvp-pytorch divides by zero there). Has gvp-pytorch's empty ``dummy_param``.
    """

    def __init__(self, drop_rate: float):
        super().__init__()
        if not 0.0 <= float(drop_rate) <= 1.0:
            raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate}")
        self.drop_rate = float(drop_rate)
        # Kept (empty, unused) only so gvp-pytorch state dicts load with strict=True.
        self.dummy_param = nn.Parameter(torch.empty(0))

    def reset_parameters(self) -> None:
        """No learnable parameters."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return v
        keep = 1.0 - self.drop_rate
        mask = torch.bernoulli(keep * torch.ones(v.shape[:-1], device=v.device))
        if keep == 0.0:
            return v * mask.unsqueeze(-1).to(v.dtype)
        return mask.unsqueeze(-1).to(v.dtype) * v / keep

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}"
