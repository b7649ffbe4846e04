"""The CDConv encoder (Fan et al., ICLR 2023) as configured in ESM-GearNet, with the original
parameter names: residue frames, pair pooling, residual blocks, encoder, checkpoint mapping."""
from collections.abc import Sequence
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..nn.cdconv import CDConv as CDConvLayer

__all__ = ["CDConv", "CDConvBlock", "cdconv_pool", "cdconv_state_dict", "residue_frames"]


def _segments(num_nodes: int, batch: Optional[torch.Tensor], num_graphs: Optional[int], device, who: str):
    """Validated ``(batch, counts, starts)`` of a packed batch (``batch`` sorted, int64)."""
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
        if num_graphs is None:
            num_graphs = 1
    if batch.dim() != 1 or batch.shape[0] != num_nodes:
        raise ValueError(f"{who}: batch must be [N={num_nodes}], got {tuple(batch.shape)}")
    if batch.dtype != torch.long:
        raise ValueError(f"{who}: batch must be int64, got {batch.dtype}")
    if num_nodes and (bool((batch[1:] < batch[:-1]).any()) or int(batch[0]) < 0):
        raise ValueError(f"{who}: batch must be sorted and non-negative (residues of a protein contiguous)")
    if num_graphs is None:
        num_graphs = int(batch[-1]) + 1 if num_nodes else 0
    if num_nodes and int(batch[-1]) >= num_graphs:
        raise ValueError(f"{who}: batch holds protein index {int(batch[-1])} >= num_graphs={num_graphs}")
    counts = torch.bincount(batch, minlength=num_graphs)
    starts = counts.cumsum(0) - counts
    return batch, counts, starts, num_graphs


def residue_frames(pos: torch.Tensor, batch: Optional[torch.Tensor] = None,
                   num_graphs: Optional[int] = None) -> torch.Tensor:
    r"""Per-residue orthonormal frames from C-alpha positions, as CDConv / ESM-GearNet compute them.

    Within each protein (residues ``0..n-1``), with ``u_k = normalize(p_{k+1} - p_k)``, the frame of an
    inner residue ``k`` (``1 <= k <= n-2``) has the rows::

        b = normalize(u_{k-1} - u_k)          bisector of the C-alpha angle (points outward)
        v = normalize(u_{k-1} x u_k)          normal of the plane of the two virtual bonds
        o = normalize(b x v)                  in that plane, along the chain

    (``normalize(y) = y / max(|y|, 1e-12)``, ``F.normalize``), and the first and last residues copy
    the frame of their inner neighbour. ``[b, v, o]`` is right-handed (``o = b x v``) and rotates
    with the structure: ``R_k -> R_k Q^T`` for positions ``p -> Q p + t``.

    Differences from the original (``Orientation`` transform of ESM-GearNet, ``orientation`` of
    CDConv / ProteinWorkshop), which agrees with this function on every protein of ``n >= 3``
    residues except ``n = 5``:

    * frames are computed per protein of the packed batch (ProteinWorkshop's copy runs over the whole
      batch, mixing the last/first residues of neighbouring proteins);
    * ``n = 5``: the original calls ``torch.cross`` without ``dim`` on [3, 3] tensors, which crosses
      along the *residue* dimension; here the cross product is always over xyz;
    * ``n = 2`` (the original raises ``IndexError``): one bond direction ``u`` only, so the frame has
      ``o = u`` and ``b, v`` an arbitrary (deterministic) orthonormal completion; the CDConv features
      of a 2-residue protein depend only on the ``o`` axis (the only displacement is ``+-u``) and on
      ``rowwise_dot(R, R) = 1``, so they stay rotation invariant;
    * ``n = 1``: the identity frame (the only edge is the self loop, whose features are frame
      independent); ``n = 0``: nothing.

    Degenerate geometry (coincident or exactly collinear C-alphas) gives zero rows, as the original,
    never NaN.

    Args:
        pos: [N, 3] C-alpha positions (float), packed protein by protein.
        batch: [N] sorted protein index (``None``: one protein).
        num_graphs: number of proteins B (default ``batch[-1] + 1``).

    Returns:
        [N, 3, 3] frames, rows ``[b, v, o]``, dtype of ``pos``.
    """
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"residue_frames: pos must be [N, 3], got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise ValueError(f"residue_frames: pos must be floating point, got {pos.dtype}")
    num_nodes = pos.shape[0]
    batch, counts, starts, _ = _segments(num_nodes, batch, num_graphs, pos.device, "residue_frames")
    frames = torch.eye(3, dtype=pos.dtype, device=pos.device).repeat(num_nodes, 1, 1)
    if num_nodes < 2:
        return frames
    local = torch.arange(num_nodes, device=pos.device) - starts[batch]
    n = counts[batch]
    # Bond directions over the packed array; bonds that would cross proteins are never read.
    u = F.normalize(pos[1:] - pos[:-1], p=2, dim=1)
    # Inner frames: centre k uses bonds k-1 (k-1 -> k) and k (k -> k+1).
    u_in, u_out = u[:-1], u[1:]                                  # centre = index + 1
    b = F.normalize(u_in - u_out, p=2, dim=1)
    v = F.normalize(torch.linalg.cross(u_in, u_out, dim=1), p=2, dim=1)
    o = F.normalize(torch.linalg.cross(b, v, dim=1), p=2, dim=1)
    inner = torch.stack([b, v, o], dim=1)                        # [N-2, 3, 3], row c-1 = centre c
    long_ = n >= 3
    if bool(long_.any()):
        centre = starts[batch] + torch.minimum(local.clamp(min=1), n - 2)  # ends copy their inner neighbour
        idx = long_.nonzero().squeeze(1)
        frames[idx] = inner[centre[idx] - 1]
    two = (n == 2) & (local == 0)
    if bool(two.any()):
        first = two.nonzero().squeeze(1)
        axis = u[first]                                          # bond of the 2-residue protein
        # Completion: cross with the coordinate axis least aligned with u (never parallel to it).
        helper = torch.zeros_like(axis)
        helper[torch.arange(axis.shape[0], device=pos.device), axis.abs().argmin(dim=1)] = 1.0
        bb = F.normalize(torch.linalg.cross(axis, helper, dim=1), p=2, dim=1)
        vv = torch.linalg.cross(axis, bb, dim=1)                 # b x v = o  <=>  v = o x b
        frame2 = torch.stack([bb, vv, axis], dim=1)
        frames[first] = frame2
        frames[first + 1] = frame2
    return frames


def cdconv_pool(x: torch.Tensor, pos: torch.Tensor, seq: torch.Tensor, ori: torch.Tensor,
                batch: Optional[torch.Tensor] = None, num_graphs: Optional[int] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Halves every protein: residues ``2k`` and ``2k+1`` (positions within the protein) merge into one.

    ESM-GearNet's ``pooling``: a protein of ``n`` residues becomes ``ceil(n / 2)`` (an odd last residue
    stays alone); features and positions are averaged over each pair, the residue number is
    ``floor(n_{2k} / 2)`` (the first of the pair, as the original), the frames are averaged and each
    *row* renormalised (``F.normalize(dim=-1)``, as the original: the result is not re-orthogonalised,
    so pooled frames are orthonormal only approximately; rotations still act on them exactly).

    Pairs are taken by position in the packed batch, not by residue number (the original CDConv code
    pools by ``residue_number // 2``; ESM-GearNet by position, which is followed here), so gaps in the
    numbering do not change the pairing.

    Args: ``x`` [N, C], ``pos`` [N, 3], ``seq`` [N] integer residue numbers, ``ori`` [N, 3, 3],
    ``batch`` [N] sorted (``None``: one protein), ``num_graphs`` B.

    Returns ``(x, pos, seq, ori, batch)`` of the ``sum_b ceil(n_b / 2)`` pooled residues.
    """
    num_nodes = pos.shape[0]
    batch, counts, starts, num_graphs = _segments(num_nodes, batch, num_graphs, pos.device, "cdconv_pool")
    new_counts = torch.div(counts + 1, 2, rounding_mode="floor")
    new_starts = new_counts.cumsum(0) - new_counts
    local = torch.arange(num_nodes, device=pos.device) - starts[batch]
    old2new = torch.div(local, 2, rounding_mode="floor") + new_starts[batch]
    num_new = int(new_counts.sum())
    pair_size = torch.bincount(old2new, minlength=num_new).clamp(min=1)

    def mean(values):
        flat = values.reshape(num_nodes, -1)
        out = flat.new_zeros(num_new, flat.shape[1]).index_add_(0, old2new, flat)
        out = out / pair_size.unsqueeze(1).to(out.dtype)
        return out.reshape((num_new,) + values.shape[1:])

    first = local % 2 == 0
    new_seq = torch.div(seq[first], 2, rounding_mode="floor")
    new_batch = torch.repeat_interleave(torch.arange(num_graphs, device=pos.device), new_counts,
                                        output_size=num_new)
    return mean(x), mean(pos), new_seq, F.normalize(mean(ori), dim=-1), new_batch


class _Linear(nn.Module):
    """Original ``Linear``: ``module = Sequential(BatchNorm1d?, LeakyReLU, Dropout, Linear)``."""

    def __init__(self, in_channels, out_channels, batch_norm=True, dropout=0.0, bias=False,
                 negative_slope=0.1, momentum=0.2):
        super().__init__()
        parts = [nn.BatchNorm1d(in_channels, momentum=momentum)] if batch_norm else []
        parts += [nn.LeakyReLU(negative_slope), nn.Dropout(dropout), nn.Linear(in_channels, out_channels, bias=bias)]
        self.module = nn.Sequential(*parts)

    def forward(self, x):
        return self.module(x)


class _MLP(nn.Module):
    """Original ``MLP`` with ``mid_channels=None`` (the only use in CDConv blocks): ``module =
    Sequential(BatchNorm1d?, LeakyReLU, Dropout, Linear, BatchNorm1d?, LeakyReLU, Dropout)``."""

    def __init__(self, in_channels, out_channels, batch_norm=True, dropout=0.0, bias=False,
                 negative_slope=0.1, momentum=0.2):
        super().__init__()
        parts = [nn.BatchNorm1d(in_channels, momentum=momentum)] if batch_norm else []
        parts += [nn.LeakyReLU(negative_slope), nn.Dropout(dropout), nn.Linear(in_channels, out_channels, bias=bias)]
        if batch_norm:
            parts.append(nn.BatchNorm1d(out_channels, momentum=momentum))
        parts += [nn.LeakyReLU(negative_slope), nn.Dropout(dropout)]
        self.module = nn.Sequential(*parts)

    def forward(self, x):
        return self.module(x)


class CDConvBlock(nn.Module):
    r"""Residual CDConv block (the original ``BasicBlock`` / ESM-GearNet ``CDBlock``)::

        out = identity(x) + output(conv(input(x)))
        width    = int(out_channels * base_width / 64)
        input    = BN(C_in) -> LeakyReLU(0.1) -> Dropout -> Linear(C_in, width)
                   -> BN(width) -> LeakyReLU(0.1) -> Dropout
        conv     = CDConv(r, l, kernel_channels, width, width)
        output   = BN(width) -> LeakyReLU(0.1) -> Dropout -> Linear(width, C_out)
        identity = BN(C_in) -> LeakyReLU(0.1) -> Dropout -> Linear(C_in, C_out)   if C_in != C_out, else x

    (Linear layers without bias by default, BatchNorm momentum 0.2, all as the original.) Parameter
    names: ``identity.module.{0,3}``, ``input.module.{0,3,4}``, ``conv.WeightNet.{Ws,bs}.{i}``,
    ``conv.W``, ``output.module.{0,3}`` (without batch norm the Sequential indices shift as in the
    original). Shapes: ``x`` [N, C_in] -> [N, C_out]; other inputs as :class:`esmgear_fast.nn.CDConv`.
    """

    def __init__(self, r: float, l: int, kernel_channels, in_channels: int, out_channels: int,
                 base_width: float = 16.0, batch_norm: bool = True, dropout: float = 0.0, bias: bool = False,
                 negative_slope: float = 0.1, momentum: float = 0.2, backend: Optional[str] = None):
        super().__init__()
        common = dict(batch_norm=batch_norm, dropout=dropout, bias=bias, negative_slope=negative_slope,
                      momentum=momentum)
        self.identity = (_Linear(in_channels, out_channels, **common) if in_channels != out_channels
                         else nn.Sequential())
        width = int(out_channels * (base_width / 64.0))
        self.input = _MLP(in_channels, width, **common)
        self.conv = CDConvLayer(r, l, kernel_channels, width, width, backend=backend)
        self.output = _Linear(width, out_channels, **common)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, x, pos, seq, ori, batch=None, edge_index=None):
        shortcut = self.identity(x)
        hidden = self.conv(self.input(x), pos, seq, ori, batch, edge_index)
        return self.output(hidden) + shortcut


class CDConv(nn.Module):
    r"""CDConv encoder with ESM-GearNet's wiring (``models.CDConv`` of DeepGraphLearning/ESM-GearNet).

    ::

        h = embedding(x)                                     Linear(input_dim, embedding_dim, bias=False)
        frames = residue_frames(pos, batch)                  (unless given)
        for stage s in 0..S-1:                               S = len(hidden_dims)
            edges = radius graph of cutoffs[s] within each protein, no cap, self loops
            h = layers[2s](h, ...); h = layers[2s+1](h, ...) CDConvBlock(seq_cutoff, cutoffs[s], kernel_dims, ...)
            if s < S-1: h, pos, seq, frames, batch = cdconv_pool(...)    every protein halves
        graph_feature = mean of h over the residues of each protein

    Defaults are the published ESM-GearNet configuration (``esm_cdconv.yaml``): ``embedding_dim 16``,
    ``hidden_dims [256, 512, 1024, 2048]``, ``cutoffs [8, 12, 16, 20]``, ``seq_cutoff 21``,
    ``kernel_dims [32]``, ``base_width 16``, batch norm, dropout 0.2, no biases. ``input_dim`` is 1280
    when fed ESM-2-650M residue embeddings (series fusion) and 21 for residue one-hot (parallel fusion).
    Parameter names are the original's (``embedding``, ``layers.{2s,2s+1}.*``), see
    :func:`cdconv_state_dict`.

    :meth:`forward` inputs: ``x`` [N, input_dim], ``pos`` [N, 3] C-alpha positions, ``residue_number``
    [N] int (author residue numbers; gaps matter through the sequence offsets), ``batch`` [N] sorted
    (``None``: one protein), ``num_graphs`` B (proteins without residues get a zero feature),
    ``frames`` [N, 3, 3] (default :func:`residue_frames`).

    Returns ``{"graph_feature": [B, hidden_dims[-1]]}``. (ESM-GearNet also returns this graph feature
    broadcast to the residues as its ``node_feature``: ``graph_feature[batch]``.)

    In training mode BatchNorm needs more than one residue in the whole batch at every stage; a batch
    whose deepest stage has a single residue (one protein of <= 8 residues) raises PyTorch's
    BatchNorm error, as the original does. Evaluation mode has no such limit.
    """

    def __init__(self, input_dim: int = 1280, embedding_dim: int = 16, hidden_dims=(256, 512, 1024, 2048),
                 cutoffs=(8.0, 12.0, 16.0, 20.0), seq_cutoff: int = 21, kernel_dims=(32,), base_width: float = 16.0,
                 batch_norm: bool = True, dropout: float = 0.2, bias: bool = False, backend: Optional[str] = None):
        super().__init__()
        if not isinstance(hidden_dims, Sequence):
            hidden_dims = [hidden_dims]
        if len(cutoffs) != len(hidden_dims):
            raise ValueError(f"CDConv: need one cutoff per stage, got cutoffs={list(cutoffs)} for "
                             f"hidden_dims={list(hidden_dims)}")
        self.input_dim = input_dim
        self.output_dim = hidden_dims[-1]
        self.dims = [embedding_dim] + list(hidden_dims)
        self.cutoffs = [float(c) for c in cutoffs]
        self.seq_cutoff = seq_cutoff
        self.embedding = nn.Linear(input_dim, embedding_dim, bias=False)
        self.layers = nn.ModuleList()
        for s in range(len(hidden_dims)):
            for d_in in (self.dims[s], self.dims[s + 1]):
                self.layers.append(CDConvBlock(self.cutoffs[s], seq_cutoff, kernel_dims, d_in, self.dims[s + 1],
                                               base_width=base_width, batch_norm=batch_norm, dropout=dropout,
                                               bias=bias, backend=backend))

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: torch.Tensor, pos: torch.Tensor, residue_number: torch.Tensor,
                batch: Optional[torch.Tensor] = None, num_graphs: Optional[int] = None,
                frames: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        num_nodes = pos.shape[0]
        if x.dim() != 2 or x.shape != (num_nodes, self.input_dim):
            raise ValueError(f"CDConv encoder: x must be [N={num_nodes}, input_dim={self.input_dim}], "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"CDConv encoder: x must be a floating-point tensor (e.g. one-hot residues as float), "
                            f"got {x.dtype}")
        if residue_number.dim() != 1 or residue_number.shape[0] != num_nodes:
            raise ValueError(f"CDConv encoder: residue_number must be [N={num_nodes}], "
                             f"got {tuple(residue_number.shape)}")
        if num_nodes == 0:
            raise ValueError("CDConv encoder: empty batch (0 residues in total)")
        if not torch.isfinite(pos).all():
            raise ValueError("CDConv encoder: pos holds NaN or Inf (missing C-alpha coordinates?)")
        batch, _, _, num_graphs = _segments(num_nodes, batch, num_graphs, pos.device, "CDConv encoder")
        if frames is None:
            frames = residue_frames(pos, batch, num_graphs)
        seq = residue_number.long()
        h = self.embedding(x)
        num_stages = len(self.layers) // 2
        for s in range(num_stages):
            edge_index = self.layers[2 * s].conv.edges(pos, batch)
            h = self.layers[2 * s](h, pos, seq, frames, batch, edge_index)
            h = self.layers[2 * s + 1](h, pos, seq, frames, batch, edge_index)
            if s < num_stages - 1:
                h, pos, seq, frames, batch = cdconv_pool(h, pos, seq, frames, batch, num_graphs)
        graph_feature = h.new_zeros(num_graphs, h.shape[1]).index_add_(0, batch, h)
        count = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(h.dtype)
        return {"graph_feature": graph_feature / count.unsqueeze(1)}


def cdconv_state_dict(checkpoint: Mapping[str, object], prefix: str = "structure_model.") -> Dict[str, torch.Tensor]:
    """The CDConv-encoder part of an ESM-GearNet checkpoint, keyed for :class:`CDConv` (``strict=True``).

    Accepted inputs:

    * a ``FusionNetwork`` state dict (what ESM-GearNet's ``model_checkpoint`` files hold): keys
      ``sequence_model.*`` and ``structure_model.*``;
    * a TorchDrug engine checkpoint ``{"model": task_state_dict, "optimizer": ...}`` (``solver.save``),
      whose task keys read ``model.structure_model.*`` next to ``model.sequence_model.*`` and ``mlp.*``;
    * a plain CDConv-encoder state dict (keys ``embedding.weight``, ``layers.*``), optionally under
      ``model.`` / ``module.`` (DataParallel).

    The mapping is the identity after stripping everything up to and including ``structure_model.``:
    ``embedding.weight`` [embedding_dim, input_dim], ``layers.{k}.identity.module.{0,3}.*``,
    ``layers.{k}.input.module.{0,3,4}.*``, ``layers.{k}.conv.WeightNet.Ws.{i}`` [l, K_{i-1}, K_i],
    ``layers.{k}.conv.WeightNet.bs.{i}`` [l, K_i], ``layers.{k}.conv.W`` [K * width, width],
    ``layers.{k}.output.module.{0,3}.*`` (BatchNorm buffers included). Nothing is renamed because the
    encoder keeps the original module names.
    """
    state = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise TypeError(f"cdconv_state_dict: expected a state dict, got {type(state).__name__}")
    out = {k.split(prefix, 1)[1]: v for k, v in state.items() if prefix in k}
    if not out:
        roots = ("embedding.", "layers.")
        for k, v in state.items():
            name = k
            while not name.startswith(roots) and name.startswith(("module.", "model.")):
                name = name.split(".", 1)[1]
            if name.startswith(roots):
                out[name] = v
    if not out:
        raise KeyError(f"cdconv_state_dict: no CDConv encoder parameters (keys containing {prefix!r} or "
                       "starting with embedding./layers.) in the checkpoint")
    if not any(k.endswith(".conv.W") for k in out):
        raise KeyError("cdconv_state_dict: the structure model of this checkpoint has no CDConv layers "
                       "(no 'layers.*.conv.W'); is it a GearNet or GVP checkpoint?")
    return out
