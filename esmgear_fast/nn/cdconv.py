"""Continuous-discrete convolution (CDConv, Fan et al., ICLR 2023), the convolution of the CDConv encoder."""
import math
from typing import Optional, Sequence

import torch
from torch import nn

from .. import ops


def cdconv_kaiming_uniform_(tensor: torch.Tensor, fan: int) -> torch.Tensor:
    """The original CDConv initialisation: ``U(-b, b)`` with ``b = sqrt(3) * gain / sqrt(fan)`` and
    ``gain = sqrt(2 / (1 + 5))`` (Kaiming-uniform with ``a = sqrt(5)``), i.e. ``b = 1 / sqrt(fan)``.

    The original computes ``fan`` as the product of all dimensions after the first of the *declared*
    size: ``3 + 3 + 1`` times the kernel width for the first WeightNet layer, and only ``out_channels``
    for ``W`` (its declared first dimension is dropped), which is reproduced here.
    """
    gain = math.sqrt(2.0 / (1.0 + math.sqrt(5.0) ** 2))
    bound = math.sqrt(3.0) * gain / math.sqrt(fan)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


class _WeightNet(nn.Module):
    """The per-offset kernel MLP of CDConv: ``l`` separate weight sets, one per clamped sequence offset.

    Parameters (names of the original): ``Ws.{i}`` [l, K_{i-1}, K_i] with ``K_{-1} = 7`` and
    ``bs.{i}`` [l, K_i]. The MLP itself runs inside :func:`esmgear_fast.ops.cdconv`.
    """

    def __init__(self, l: int, kernel_channels: Sequence[int]):
        super().__init__()
        self.l = l
        self.kernel_channels = list(kernel_channels)
        dims = [7] + self.kernel_channels
        self.Ws = nn.ParameterList(nn.Parameter(torch.empty(l, dims[i], dims[i + 1]))
                                   for i in range(len(self.kernel_channels)))
        self.bs = nn.ParameterList(nn.Parameter(torch.empty(l, k)) for k in self.kernel_channels)

    def reset_parameters(self) -> None:
        for W, b in zip(self.Ws, self.bs):
            cdconv_kaiming_uniform_(W, W.shape[1] * W.shape[2])
            with torch.no_grad():
                b.zero_()


class CDConv(nn.Module):
    r"""Continuous-discrete convolution over a packed batch of residues (C-alpha level).

    For every residue ``i`` and every neighbour ``j`` of the same protein with ``|p_j - p_i| < r``
    (self loop included, no neighbour cap), with ``R_i`` the [3, 3] local frame of ``i`` (rows are
    the frame axes), ``s = l // 2`` and ``n_i, n_j`` residue numbers::

        d_ij   = |p_j - p_i|
        t_ij   = R_i (p_j - p_i) / (d_ij + 1e-9)                    direction in i's frame   [3]
        o_ij   = rowwise_dot(R_i, R_j)                             frame agreement          [3]
        k_ij   = clamp(n_j - n_i, -s, s)                           discrete sequence offset
        w_ij   = WeightNet_{k_ij + s}([t_ij, o_ij, d_ij])          kernel vector            [K]
                 (per layer m: h <- LeakyReLU_0.2(h @ Ws[m][k_ij + s] + bs[m][k_ij + s]))
        g_ij   = 0.5 - 0.5 * tanh(16 * (d_ij / r) * (|k_ij| / s) - 14)     smooth window
        out_i  = vec( sum_j (g_ij w_ij) x_j^T ) @ W                 [K * C_in] @ [K * C_in, C_out]

    where ``vec`` flattens the [K, C_in] outer product kernel-major (index ``k * C_in + c``), as the
    original does.

    Parameter names and shapes are the original's (``WeightNet.Ws.{i}`` [l, K_{i-1}, K_i] with
    ``K_{-1} = 7``, ``WeightNet.bs.{i}`` [l, K_i], ``W`` [K * C_in, C_out]), so state dicts of the
    original layer (hehefan/Continuous-Discrete-Convolution, ProteinWorkshop, ESM-GearNet's port) load
    with ``strict=True``.

    Args:
        r: spatial radius (Angstrom) of the neighbourhood and of the smooth window.
        l: sequence kernel size, odd >= 3 (``l // 2`` is the largest offset); ``seq_cutoff`` in ESM-GearNet.
        kernel_channels: widths ``K_i`` of the WeightNet layers (``kernel_dims``); ``K = kernel_channels[-1]``.
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        backend: backend of :func:`esmgear_fast.ops.cdconv` (``None``: the global choice).

    Shapes in :meth:`forward`: ``x`` [N, C_in], ``pos`` [N, 3], ``seq`` [N] or [N, 1] integer residue
    numbers, ``ori`` [N, 3, 3] or [N, 9] frames (e.g. :func:`esmgear_fast.models.residue_frames`),
    ``batch`` [N] sorted protein index (``None``: one protein), ``edge_index`` [2, E] optional
    precomputed edges (row 0 source j, row 1 target i); output [N, C_out].
    """

    def __init__(self, r: float, l: int, kernel_channels: Sequence[int], in_channels: int, out_channels: int,
                 backend: Optional[str] = None):
        super().__init__()
        if r <= 0:
            raise ValueError(f"CDConv: radius r must be > 0, got {r}")
        if int(l) != l or l < 3 or int(l) % 2 == 0:
            # Offsets are clamped to [-(l // 2), l // 2]: exactly l WeightNets only for odd l.
            raise ValueError(f"CDConv: sequence kernel size l must be an odd integer >= 3, got {l}")
        kernel_channels = list(kernel_channels)
        if not kernel_channels or any(int(k) <= 0 for k in kernel_channels):
            raise ValueError(
                f"CDConv: kernel_channels must be a non-empty list of positive ints, got {kernel_channels}")
        self.r = float(r)
        self.l = int(l)
        self.kernel_channels = kernel_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.backend = backend
        self.WeightNet = _WeightNet(self.l, kernel_channels)
        self.W = nn.Parameter(torch.empty(kernel_channels[-1] * in_channels, out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original initialisation (see :func:`cdconv_kaiming_uniform_`); WeightNet biases zero."""
        self.WeightNet.reset_parameters()
        cdconv_kaiming_uniform_(self.W, self.out_channels)

    def edges(self, pos: torch.Tensor, batch: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The original's receptive field: radius-``r`` graph within each protein, no cap, self loops."""
        return ops.radius_graph(pos, self.r, batch, max_num_neighbors=None, loop=True)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, seq: torch.Tensor, ori: torch.Tensor,
                batch: Optional[torch.Tensor] = None, edge_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        n = pos.shape[0] if pos.dim() == 2 else -1
        if pos.dim() != 2 or pos.shape[1] != 3:
            raise ValueError(f"CDConv: pos must be [N, 3], got {tuple(pos.shape)}")
        if x.dim() != 2 or x.shape[0] != n or x.shape[1] != self.in_channels:
            raise ValueError(f"CDConv: x must be [N={n}, in_channels={self.in_channels}], got {tuple(x.shape)}")
        if seq.dim() == 2 and seq.shape[1] == 1:
            seq = seq.squeeze(1)
        if seq.dim() != 1 or seq.shape[0] != n:
            raise ValueError(f"CDConv: seq must be [N={n}] or [N, 1] residue numbers, got {tuple(seq.shape)}")
        if seq.is_floating_point() or seq.is_complex() or seq.dtype == torch.bool:
            raise ValueError(f"CDConv: seq must hold integer residue numbers, got dtype {seq.dtype}")
        if ori.dim() == 2 and ori.shape[1] == 9:
            ori = ori.reshape(-1, 3, 3)
        if ori.dim() != 3 or ori.shape[0] != n or ori.shape[1:] != (3, 3):
            raise ValueError(f"CDConv: ori must be [N={n}, 3, 3] or [N, 9] frames, got {tuple(ori.shape)}")
        if edge_index is None:
            edge_index = self.edges(pos, batch)
        return ops.cdconv(x, pos, ori, seq.long(), edge_index, list(self.WeightNet.Ws), list(self.WeightNet.bs),
                          self.W, self.r, self.l, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"r={self.r}, l={self.l}, kernel_channels={self.kernel_channels}, "
                f"in_channels={self.in_channels}, out_channels={self.out_channels}")
