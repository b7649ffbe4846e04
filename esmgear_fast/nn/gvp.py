"""The Geometric Vector Perceptron layer (Jing et al., ICLR 2021), with gvp-pytorch's semantics."""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..reference.gvp import ACTIVATIONS, GVPWeights

ActivationSpec = Union[None, str, Callable[[torch.Tensor], torch.Tensor]]
ScalarVector = Tuple[torch.Tensor, torch.Tensor]

# gvp-pytorch code passes activations as functions; the ops take names. Only functions whose
# meaning is unambiguous are accepted, anything else raises instead of being guessed.
_NAMED_ACTIVATIONS = {
    F.relu: "relu", torch.relu: "relu",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.silu: "silu",
}


def activation_name(act: ActivationSpec) -> Optional[str]:
    """``None``, a name in ("relu", "sigmoid", "silu") or one of the matching torch functions
    (``F.relu``, ``torch.relu``, ``torch.sigmoid``, ``F.silu``) -> the op's activation name."""
    if act is None or isinstance(act, str):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {ACTIVATIONS}")
        return act
    try:
        return _NAMED_ACTIVATIONS[act]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported activation {act!r}: use None, 'relu', 'sigmoid', 'silu' or the "
                         f"torch functions F.relu / torch.sigmoid / F.silu") from None


def check_dims(name: str, dims) -> Tuple[int, int]:
    try:
        scalars, vectors = (int(d) for d in dims)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (n_scalar, n_vector), got {dims!r}") from None
    if scalars < 0 or vectors < 0:
        raise ValueError(f"{name} must be non-negative, got {dims!r}")
    return scalars, vectors


class GVP(nn.Module):
    r"""Geometric Vector Perceptron: maps scalar and vector channels ``(s, V)`` to ``(s', V')``
    equivariantly (rotations act on the last, xyz axis of ``V``), exactly as gvp-pytorch's ``GVP``.

    Shapes: ``s`` [n, si], ``V`` [n, vi, 3] -> ``s'`` [n, so], ``V'`` [n, vo, 3]; ``h = h_dim or
    max(vi, vo)``. With :math:`\|x\| = \sqrt{\max(\sum_{xyz} x^2, 10^{-8})}` (never zero, so the
    gradient stays finite)::

        V_h = wh(V)                       # [n, h, 3]   linear over channels, no bias
        s'  = ws([s, ||V_h||])            # [n, so]     scalars first, then the h norms
        V'  = wv(V_h)                     # [n, vo, 3]  no bias
        if vector_gate:  V' = V' * sigmoid(wsv(act_v(s')))     # act_v = identity when None
        elif act_v:      V' = V' * act_v(||V'||)
        s'  = act_s(s')

    Without vector inputs (``vi == 0``) ``s' = act_s(ws(s))`` and ``V'`` is zeros; without vector
    outputs (``vo == 0``) only ``s'`` is returned. Inputs/outputs follow gvp-pytorch: a tuple
    ``(s, V)``, or the scalar tensor alone when there are no vector channels on that side.

    Args:
        in_dims, out_dims: ``(n_scalar, n_vector)``.
        h_dim: hidden vector channels (default ``max(vi, vo)``).
        activations: ``(scalar_act, vector_act)``: ``None``, ``"relu"``, ``"sigmoid"``, ``"silu"``
            or the matching torch functions.
        vector_gate: gate the output vectors by the scalars (GVP-GNN v2) instead of by their norms.
        backend: backend of :func:`esmgear_fast.ops.gvp` (``None``: the global default).

    Parameters (gvp-pytorch names, so its state dicts load with ``strict=True``): ``wh``
    (``Linear(vi, h, bias=False)``, only if vi), ``ws`` (``Linear(si + h, so)``), ``wv``
    (``Linear(h, vo, bias=False)``, if vi and vo), ``wsv`` (``Linear(so, vo)``, if vi, vo and
    vector_gate) and gvp-pytorch's empty ``dummy_param``.
    """

    def __init__(self, in_dims, out_dims, h_dim: Optional[int] = None,
                 activations=("relu", "sigmoid"), vector_gate: bool = False, backend: Optional[str] = None):
        super().__init__()
        self.si, self.vi = check_dims("in_dims", in_dims)
        self.so, self.vo = check_dims("out_dims", out_dims)
        self.vector_gate = bool(vector_gate)
        scalar_act, vector_act = activations
        self.scalar_act = activation_name(scalar_act)
        self.vector_act = activation_name(vector_act)
        self.backend = backend
        if self.vi:
            self.h_dim = int(h_dim or max(self.vi, self.vo))
            self.wh = nn.Linear(self.vi, self.h_dim, bias=False)
            self.ws = nn.Linear(self.h_dim + self.si, self.so)
            if self.vo:
                self.wv = nn.Linear(self.h_dim, self.vo, bias=False)
                if self.vector_gate:
                    self.wsv = nn.Linear(self.so, self.vo)
        else:
            self.h_dim = 0
            self.ws = nn.Linear(self.si, self.so)
        # Kept (empty, unused) only so gvp-pytorch state dicts load with strict=True.
        self.dummy_param = nn.Parameter(torch.empty(0))

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default initialisation, as in gvp-pytorch."""
        for name in ("wh", "ws", "wv", "wsv"):
            layer = getattr(self, name, None)
            if layer is not None:
                layer.reset_parameters()

    def weights(self) -> GVPWeights:
        """This layer's parameters as the :class:`~esmgear_fast.reference.gvp.GVPWeights` of the
        functional op :func:`esmgear_fast.ops.gvp` (tensors are the parameters themselves, so
        gradients flow back to them)."""
        has_v = bool(self.vi)
        has_vo = has_v and bool(self.vo)
        gate = has_vo and self.vector_gate
        return GVPWeights(
            wh=self.wh.weight if has_v else None,
            ws_weight=self.ws.weight,
            ws_bias=self.ws.bias,
            wv=self.wv.weight if has_vo else None,
            wsv_weight=self.wsv.weight if gate else None,
            wsv_bias=self.wsv.bias if gate else None,
            scalar_act=self.scalar_act,
            vector_act=self.vector_act,
            vector_gate=gate,
        )

    def forward(self, x: Union[torch.Tensor, ScalarVector]):
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError(f"GVP expects (s, V) or s, got a sequence of {len(x)}")
            s, v = x
        else:
            s, v = x, None
        if not isinstance(s, torch.Tensor) or s.dim() != 2 or s.size(1) != self.si:
            raise ValueError(f"GVP{(self.si, self.vi)}: scalar input must be [n, {self.si}], got "
                             f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
        if self.vi:
            if v is None:
                raise ValueError(f"GVP{(self.si, self.vi)} needs vector input V [n, {self.vi}, 3], got only scalars")
            if v.dim() != 3 or v.size(0) != s.size(0) or v.size(1) != self.vi or v.size(2) != 3:
                raise ValueError(f"GVP{(self.si, self.vi)}: vector input must be [{s.size(0)}, {self.vi}, 3], "
                                 f"got {tuple(v.shape)}")
        elif v is not None and v.numel() and v.size(-2) != 0:
            raise ValueError(f"GVP{(self.si, 0)} has no vector inputs but got V of shape {tuple(v.shape)}")
        else:
            v = None
        s_out, v_out = ops.gvp(s, v, self.weights(), backend=self.backend)
        if self.vo:
            if v_out is None:  # vi == 0: gvp-pytorch returns zero vectors
                v_out = s_out.new_zeros(s_out.size(0), self.vo, 3)
            return s_out, v_out
        return s_out

    def extra_repr(self) -> str:
        return (f"in_dims={(self.si, self.vi)}, out_dims={(self.so, self.vo)}, h_dim={self.h_dim}, "
                f"activations={(self.scalar_act, self.vector_act)}, vector_gate={self.vector_gate}")
