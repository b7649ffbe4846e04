"""GVP graph convolution: GVP messages over edges, mean-aggregated (gvp-pytorch's ``GVPConv``)."""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .. import ops
from .gvp import GVP, check_dims

ScalarVector = Tuple[torch.Tensor, torch.Tensor]


class GVPConv(nn.Module):
    r"""Message passing with GVPs (no residual, no feed-forward: see :class:`GVPConvLayer`).

    For every edge ``j -> i`` (``edge_index[0]`` = source j, ``edge_index[1]`` = target i)::

        m_ji = message_func(([s_j, e_s, s_i], [V_j, e_V, V_i]))    # channel concatenation
        s'_i, V'_i = mean over incoming edges of m_ji              # zeros for nodes without edges

    Shapes: nodes ``s`` [N, si], ``V`` [N, vi, 3]; edges ``e_s`` [E, se], ``e_V`` [E, ve, 3];
    output ``s'`` [N, so], ``V'`` [N, vo, 3]. The whole computation runs in the functional op
    :func:`esmgear_fast.ops.gvp_conv_message`.

    ``message_func`` (``nn.Sequential``, gvp-pytorch's name) holds ``n_layers`` GVPs:
    ``(2 si + se, 2 vi + ve) -> out_dims``, then ``out_dims -> out_dims``, the last one without
    activations; with ``n_layers == 1`` the single GVP maps to ``out_dims`` without activations.
    ``module_list`` replaces it with given :class:`GVP` modules. Only ``aggr="mean"`` (gvp-pytorch's
    non-autoregressive setting) is supported.
    """

    def __init__(self, in_dims, out_dims, edge_dims, n_layers: int = 3, module_list: Optional[Sequence[GVP]] = None,
                 aggr: str = "mean", activations=("relu", "sigmoid"), vector_gate: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        if aggr != "mean":
            raise ValueError(f"GVPConv supports aggr='mean' only (gvp-pytorch's autoregressive 'add' is not "
                             f"implemented), got {aggr!r}")
        self.si, self.vi = check_dims("in_dims", in_dims)
        self.so, self.vo = check_dims("out_dims", out_dims)
        self.se, self.ve = check_dims("edge_dims", edge_dims)
        self.backend = backend
        make_gvp = functools.partial(GVP, activations=activations, vector_gate=vector_gate, backend=backend)
        message_in = (2 * self.si + self.se, 2 * self.vi + self.ve)
        modules = list(module_list or [])
        if not modules:
            if n_layers < 1:
                raise ValueError(f"n_layers must be >= 1, got {n_layers}")
            if n_layers == 1:
                modules.append(make_gvp(message_in, (self.so, self.vo), activations=(None, None)))
            else:
                modules.append(make_gvp(message_in, (self.so, self.vo)))
                modules.extend(make_gvp((self.so, self.vo), (self.so, self.vo)) for _ in range(n_layers - 2))
                modules.append(make_gvp((self.so, self.vo), (self.so, self.vo), activations=(None, None)))
        for k, module in enumerate(modules):
            if not isinstance(module, GVP):
                raise TypeError(f"module_list[{k}] is a {type(module).__name__}; GVPConv's fused message "
                                f"op needs esmgear_fast.nn.GVP modules")
        self.message_func = nn.Sequential(*modules)

    def reset_parameters(self) -> None:
        for module in self.message_func:
            module.reset_parameters()

    def forward(self, x: ScalarVector, edge_index: torch.Tensor, edge_attr: ScalarVector) -> ScalarVector:
        s, v = x
        edge_s, edge_v = edge_attr
        n = s.size(0)
        if s.dim() != 2 or s.size(1) != self.si:
            raise ValueError(f"GVPConv: node scalars must be [N, {self.si}], got {tuple(s.shape)}")
        if v.dim() != 3 or tuple(v.shape) != (n, self.vi, 3):
            raise ValueError(f"GVPConv: node vectors must be [{n}, {self.vi}, 3], got {tuple(v.shape)}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"GVPConv: edge_index must be [2, E], got {tuple(edge_index.shape)}")
        num_edges = edge_index.size(1)
        if tuple(edge_s.shape) != (num_edges, self.se):
            raise ValueError(f"GVPConv: edge scalars must be [{num_edges}, {self.se}], got {tuple(edge_s.shape)}")
        if tuple(edge_v.shape) != (num_edges, self.ve, 3):
            raise ValueError(f"GVPConv: edge vectors must be [{num_edges}, {self.ve}, 3], got {tuple(edge_v.shape)}")
        gvps = [module.weights() for module in self.message_func]
        out_s, out_v = ops.gvp_conv_message(s, v, edge_s, edge_v, edge_index, gvps, num_nodes=n,
                                            backend=self.backend)
        if out_v is None:
            out_v = out_s.new_zeros(n, self.vo, 3)
        return out_s, out_v

    def extra_repr(self) -> str:
        return (f"in_dims={(self.si, self.vi)}, out_dims={(self.so, self.vo)}, "
                f"edge_dims={(self.se, self.ve)}, aggr='mean'")
