from typing import Callable, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from .. import ops
from ..backend import BackendUnavailableError, resolve
from ..ops.relational_csr import RelationalCSR
from ..ops.relational_linear import BACKENDS as FUSED_BACKENDS
from ..ops.relational_linear import BACKENDS_CUDA as FUSED_BACKENDS_CUDA


def _activation(activation: Union[str, Callable, None]) -> Optional[Callable]:
    if isinstance(activation, str):
        if not hasattr(F, activation):
            raise ValueError(f"unknown activation {activation!r}: not a function of torch.nn.functional")
        return getattr(F, activation)
    return activation


# Aggregate size from which the CPU fused kernel is used by default (see uses_fused).
FUSED_CPU_MIN_BYTES = 64 * 2**20

class GeometricRelationalGraphConv(nn.Module):
    r"""GearNet's relational graph convolution, with TorchDrug's semantics and parameter names.

    For N nodes with features ``x`` [N, D], typed edges j -> i (R relations) and edge weights
    :math:`w_e` (default 1):

    .. math::
        a_i &= \big[\textstyle\sum_{e=(j\to i),\,r(e)=0} w_e x_j \;\|\; \dots \;\|\;
                \sum_{e=(j\to i),\,r(e)=R-1} w_e x_j\big] \in \mathbb{R}^{R D} \\
        h_i &= \mathrm{act}\big(\mathrm{BN}(W_{\text{linear}}\, a_i + b_{\text{linear}}
               + W_{\text{self\_loop}}\, x_i + b_{\text{self\_loop}})\big)

    i.e. ``act(BN(linear(relational_aggregate(x)) + self_loop(x)))``. There is no degree
    normalisation (TorchDrug's ``GeometricRelationalGraphConv``; unlike ``RelationalGraphConv``).

    Parameters (TorchDrug names, so TorchDrug state dicts load with ``strict=True``):
        ``linear``: ``Linear(num_relation * input_dim, output_dim)``; ``self_loop``:
        ``Linear(input_dim, output_dim)``; ``batch_norm``: ``BatchNorm1d(output_dim)`` or None;
        ``edge_linear``: ``Linear(edge_input_dim, input_dim)`` or None.

    With ``edge_input_dim``, each edge's feature ``edge_linear(f_e)`` weighted by :math:`w_e` is
    added to the (target, relation) block of :math:`a_i`, as TorchDrug does.

    Shapes: ``forward(x [N, input_dim], edge_index [2, E] (row 0 source j, row 1 target i),
    edge_type [E] in [0, num_relation), edge_weight [E] or None, edge_feature [E, edge_input_dim]
    or None, csr=None) -> [N, output_dim]``. Works from plain PyTorch / PyG code (a PyG
    ``edge_index`` already has this orientation). ``csr``: the graph's
    :func:`esmgear_fast.ops.relational_csr`, built once and shared by all layers on that graph
    (else each call sorts the edges itself).

    Fusion (``fused``): ``None`` (default) computes ``linear(aggregate)`` with the fused
    :func:`esmgear_fast.ops.relational_linear` whenever the layer's backend offers it on x's device
    and there are no edge features: always with Triton; with the C++ CPU kernel only when the
    [N, R*input_dim] aggregate would take at least 64 MB (below that the unfused path is faster on
    CPU). The aggregate is then never stored (nor saved for backward). ``True`` requires it, ``False`` always runs the
    unfused aggregate-then-Linear path. Results agree to floating-point rounding.

    Note: TorchDrug's positional order is ``(input_dim, output_dim, num_relation,
    edge_input_dim, batch_norm, activation)``; here ``edge_input_dim`` is a keyword argument.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_relation: int,
        batch_norm: bool = False,
        activation: Union[str, Callable, None] = "relu",
        edge_input_dim: Optional[int] = None,
        backend: Optional[str] = None,
        fused: Optional[bool] = None,
    ):
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.num_relation = num_relation
        self.edge_input_dim = edge_input_dim
        self.backend = backend
        self.fused = fused
        self.batch_norm = nn.BatchNorm1d(output_dim) if batch_norm else None
        self.activation = _activation(activation)
        self.self_loop = nn.Linear(input_dim, output_dim)
        self.linear = nn.Linear(num_relation * input_dim, output_dim)
        self.edge_linear = nn.Linear(edge_input_dim, input_dim) if edge_input_dim else None

    def reset_parameters(self) -> None:
        for module in (self.self_loop, self.linear, self.edge_linear, self.batch_norm):
            if module is not None:
                module.reset_parameters()

    def aggregate(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_type: torch.Tensor,
        edge_weight: Optional[torch.Tensor] = None,
        edge_feature: Optional[torch.Tensor] = None,
        csr: Optional[RelationalCSR] = None,
    ) -> torch.Tensor:
        """The [N, num_relation * input_dim] relation-wise neighbour sums (TorchDrug's
        ``message_and_aggregate``)."""
        update = ops.relational_aggregate(x, edge_index, edge_type, self.num_relation, edge_weight,
                                          backend=self.backend, csr=csr)
        if self.edge_linear is not None:
            if edge_feature is None:
                raise ValueError("GeometricRelationalGraphConv: edge_input_dim is set, so edge_feature is required")
            message = self.edge_linear(edge_feature.to(self.edge_linear.weight.dtype))
            if edge_weight is not None:
                message = message * edge_weight.unsqueeze(-1)
            n = x.size(0)
            extra = message.new_zeros(n * self.num_relation, self.input_dim)
            extra.index_add_(0, edge_index[1] * self.num_relation + edge_type, message)
            update = update + extra.view(n, self.num_relation * self.input_dim)
        return update

    def combine(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return self._finish(self.linear(update) + self.self_loop(x))

    def uses_fused(self, x: torch.Tensor, edge_feature: Optional[torch.Tensor] = None) -> bool:
        """Whether :meth:`forward` takes the fused path for this input (see the class docstring)."""
        if self.fused is False or self.edge_linear is not None:
            if self.fused and self.edge_linear is not None:
                raise ValueError("GeometricRelationalGraphConv: fused=True is not possible with edge features")
            return False
        if self.fused:
            return True
        offered = FUSED_BACKENDS_CUDA if x.device.type == "cuda" else FUSED_BACKENDS
        try:
            chosen = resolve("relational_linear", self.backend, x.device, offered)
        except BackendUnavailableError:
            return False
        if chosen == "extension":
            # Measured on CPU (benchmarks/bench_gearnet.py): the C++ fused kernel is 5-25 % slower
            # than aggregate-then-GEMM while the aggregate is small, and as fast or faster (storing
            # 2-4x less for backward) once the [N, R*D] aggregate reaches tens of MB.
            return x.size(0) * self.num_relation * x.size(1) * x.element_size() >= FUSED_CPU_MIN_BYTES
        return chosen != "reference" and not (chosen == "triton" and x.dtype == torch.float64)

    def _finish(self, output: torch.Tensor) -> torch.Tensor:
        if self.batch_norm is not None:
            output = self.batch_norm(output)
        if self.activation is not None:
            output = self.activation(output)
        return output

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_type: torch.Tensor,
        edge_weight: Optional[torch.Tensor] = None,
        edge_feature: Optional[torch.Tensor] = None,
        csr: Optional[RelationalCSR] = None,
    ) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.size(1) != self.input_dim:
            raise ValueError(
                f"GeometricRelationalGraphConv: x must have shape [N, {self.input_dim}], got "
                f"{list(getattr(x, 'shape', []))}"
            )
        if self.uses_fused(x, edge_feature):
            update = ops.relational_linear(x, edge_index, edge_type, self.num_relation, self.linear.weight,
                                           self.linear.bias, edge_weight, backend=self.backend, csr=csr)
            return self._finish(update + self.self_loop(x))
        return self.combine(x, self.aggregate(x, edge_index, edge_type, edge_weight, edge_feature, csr))

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, output_dim={self.output_dim}, num_relation={self.num_relation}"
