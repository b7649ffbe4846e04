"""Tuple layer norm for GVP scalar + vector channels (gvp-pytorch's ``LayerNorm``)."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

from .gvp import check_dims

# gvp-pytorch clamps the squared vector norm at this value before averaging.
SQUARED_NORM_EPS = 1e-8


class GVPLayerNorm(nn.Module):
    r"""Layer norm of ``(s, V)``: ``nn.LayerNorm`` on the scalars, and the vectors divided by the
    root mean square of their channel norms (no learnable vector parameters)::

        s' = LayerNorm(s)                                          # [n, s], eps 1e-5, affine
        V' = V / sqrt(mean_c max(sum_xyz V[:, c]^2, 1e-8))         # [n, v, 3], per row n

    The per-channel squared norm is clamped at 1e-8 *before* the mean (gvp-pytorch's
    ``_norm_no_nan(..., sqrt=False)``), so all-zero vectors stay zero instead of giving NaN.
    Rotations of ``V`` commute with the normalisation (equivariant).

    float16/bfloat16 vectors are normalised in float32 and cast back.

    With ``dims[1] == 0`` the input is the scalar tensor alone and only the LayerNorm applies.
    The parameter is gvp-pytorch's ``scalar_norm`` (``nn.LayerNorm(dims[0])``).
    """

    def __init__(self, dims):
        super().__init__()
        self.s, self.v = check_dims("dims", dims)
        self.scalar_norm = nn.LayerNorm(self.s)

    def reset_parameters(self) -> None:
        self.scalar_norm.reset_parameters()

    def forward(self, x: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]):
        if not self.v:
            if isinstance(x, (tuple, list)):
                raise ValueError(f"GVPLayerNorm{(self.s, 0)} takes the scalar tensor alone, got a tuple")
            return self.scalar_norm(x)
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ValueError(f"GVPLayerNorm{(self.s, self.v)} takes a tuple (s, V)")
        s, v = x
        if v.dim() < 2 or v.size(-1) != 3 or v.size(-2) != self.v:
            raise ValueError(f"GVPLayerNorm{(self.s, self.v)}: V must be [..., {self.v}, 3], got {tuple(v.shape)}")
        # Half precision is normalised in float32: 1e-8 is below float16's smallest subnormal, so
        # the clamp would not keep zero vectors from giving 0 / 0 there.
        work = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
        squared = torch.clamp(torch.sum(work * work, dim=-1, keepdim=True), min=SQUARED_NORM_EPS)
        rms = torch.sqrt(torch.mean(squared, dim=-2, keepdim=True))
        return self.scalar_norm(s), (work / rms).to(v.dtype)

    def extra_repr(self) -> str:
        return f"dims={(self.s, self.v)}"
