"""Tuple dropout for GVP scalar + vector channels (gvp-pytorch's ``Dropout``)."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

from .gvp_vector_dropout import GVPVectorDropout


class GVPDropout(nn.Module):
    r"""Dropout of ``(s, V)``: ``nn.Dropout(p)`` on the scalars ``s [n, ns]`` (element-wise) and
    :class:`GVPVectorDropout` on the vectors ``V [n, nv, 3]`` (whole channels); both rescale kept
    entries by ``1 / (1 - p)`` in training and are the identity in eval mode. A plain tensor input
    is treated as scalars. Random numbers are drawn in gvp-pytorch's order (scalars, then vectors).

    Submodules carry gvp-pytorch's names: ``sdropout`` and ``vdropout`` (whose empty
    ``dummy_param`` appears in the state dict).
    """

    def __init__(self, drop_rate: float):
        super().__init__()
        self.sdropout = nn.Dropout(drop_rate)
        self.vdropout = GVPVectorDropout(drop_rate)

    def reset_parameters(self) -> None:
        """No learnable parameters."""

    def forward(self, x: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]):
        if isinstance(x, torch.Tensor):
            return self.sdropout(x)
        s, v = x
        return self.sdropout(s), self.vdropout(v)
