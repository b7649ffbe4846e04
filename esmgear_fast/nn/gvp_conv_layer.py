"""A full GVP-GNN layer: GVP convolution + residual + norm, then GVP feed-forward + residual + norm
(gvp-pytorch's ``GVPConvLayer``, non-autoregressive)."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import nn

from .gvp import GVP, check_dims
from .gvp_conv import GVPConv
from .gvp_dropout import GVPDropout
from .gvp_layer_norm import GVPLayerNorm

ScalarVector = Tuple[torch.Tensor, torch.Tensor]


class GVPConvLayer(nn.Module):
    r"""One GVP-GNN layer on node features ``x = (s [N, ns], V [N, nv, 3])`` with edge features
    ``(e_s [E, se], e_V [E, ve, 3])``, in gvp-pytorch's order::

        dh = conv(x, edge_index, edge_attr)               # GVPConv, mean of GVP messages
        x  = norm[0](x + dropout[0](dh))                  # tuple sum, GVPDropout, GVPLayerNorm
        dh = ff_func(x)                                   # node-wise GVPs
        x  = norm[1](x + dropout[1](dh))

    ``ff_func`` with ``n_feedforward == 1`` is one GVP ``node_dims -> node_dims`` without
    activations; otherwise ``node_dims -> (4 ns, 2 nv)``, ``n_feedforward - 2`` GVPs
    ``(4 ns, 2 nv) -> (4 ns, 2 nv)`` and ``(4 ns, 2 nv) -> node_dims`` without activations.
    All GVPs share ``activations`` / ``vector_gate`` (except where stated). Output shapes equal
    the input shapes.

    Submodule names are gvp-pytorch's (``conv``, ``norm``, ``dropout``, ``ff_func``), so its
    state dicts load with ``strict=True``. ``node_mask`` (bool [N]) updates only those nodes
    (the others are returned unchanged; unlike gvp-pytorch the input tensors are not modified in
    place). The autoregressive mode (``autoregressive=True`` / ``autoregressive_x``) of
    gvp-pytorch is not implemented and raises.
    """

    def __init__(self, node_dims, edge_dims, n_message: int = 3, n_feedforward: int = 2, drop_rate: float = 0.1,
                 autoregressive: bool = False, activations=("relu", "sigmoid"), vector_gate: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        if autoregressive:
            raise NotImplementedError("GVPConvLayer(autoregressive=True) is not implemented")
        node_dims = check_dims("node_dims", node_dims)
        edge_dims = check_dims("edge_dims", edge_dims)
        if n_feedforward < 1:
            raise ValueError(f"n_feedforward must be >= 1, got {n_feedforward}")
        self.node_dims, self.edge_dims = node_dims, edge_dims
        self.conv = GVPConv(node_dims, node_dims, edge_dims, n_message, aggr="mean", activations=activations,
                            vector_gate=vector_gate, backend=backend)
        make_gvp = functools.partial(GVP, activations=activations, vector_gate=vector_gate, backend=backend)
        self.norm = nn.ModuleList([GVPLayerNorm(node_dims) for _ in range(2)])
        self.dropout = nn.ModuleList([GVPDropout(drop_rate) for _ in range(2)])
        if n_feedforward == 1:
            ff = [make_gvp(node_dims, node_dims, activations=(None, None))]
        else:
            hidden = (4 * node_dims[0], 2 * node_dims[1])
            ff = [make_gvp(node_dims, hidden)]
            ff.extend(make_gvp(hidden, hidden) for _ in range(n_feedforward - 2))
            ff.append(make_gvp(hidden, node_dims, activations=(None, None)))
        self.ff_func = nn.Sequential(*ff)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        for norm in self.norm:
            norm.reset_parameters()
        for module in self.ff_func:
            module.reset_parameters()

    def forward(self, x: ScalarVector, edge_index: torch.Tensor, edge_attr: ScalarVector,
                autoregressive_x: Optional[ScalarVector] = None,
                node_mask: Optional[torch.Tensor] = None) -> ScalarVector:
        if autoregressive_x is not None:
            raise NotImplementedError("GVPConvLayer: autoregressive_x is not implemented")
        dh = self.conv(x, edge_index, edge_attr)
        full = x
        if node_mask is not None:
            x = (x[0][node_mask], x[1][node_mask])
            dh = (dh[0][node_mask], dh[1][node_mask])
        ds, dv = self.dropout[0](dh)
        x = self.norm[0]((x[0] + ds, x[1] + dv))
        ds, dv = self.dropout[1](self.ff_func(x))
        x = self.norm[1]((x[0] + ds, x[1] + dv))
        if node_mask is not None:
            s = full[0].index_put((node_mask,), x[0])
            v = full[1].index_put((node_mask,), x[1])
            x = (s, v)
        return x

    def extra_repr(self) -> str:
        return f"node_dims={self.node_dims}, edge_dims={self.edge_dims}"
