"""Reference continuous-discrete convolution (CDConv, Fan et al., ICLR 2023): the definition of correct.

Written to be read, not to be fast: it materialises one [K*C] message per edge, exactly like the
original message-passing layer. Every other backend of :func:`esmgear_fast.ops.cdconv` is tested
against :func:`cdconv`.

For an edge e = (j -> i) (``edge_index[0]`` = source j, ``edge_index[1]`` = target i):

* ``delta = pos_j - pos_i``, ``d = |delta|``, ``u = delta / (d + 1e-9)`` (the zero vector for self loops);
* kernel input (7 values, in this order): ``frame_i @ u`` (3: the unit offset in i's frame),
  ``sum(frame_i * frame_j, -1)`` (3: row-wise agreement of the two frames), ``d`` (1: raw distance);
* ``s = seq_cutoff // 2``, ``o = clamp(seq_j - seq_i, -s, s)`` picks WeightNet number ``o + s``;
* WeightNet: for each layer ``h = LeakyReLU_0.2(h @ Ws[o + s] + bs[o + s])`` (after every layer,
  the last one too), giving the K-dim kernel ``k_e``;
* smooth factor ``0.5 - 0.5 * tanh(16 * (d / radius) * (|o| / s) - 14)``;
* message ``m_e[k * C + c] = k_e[k] * smooth_e * x_j[c]`` (k-major flattening);
* ``out_i = (sum over incoming edges of m_e) @ weight``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.2
DISTANCE_EPS = 1e-9


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def edge_features(
    pos: torch.Tensor, frame: torch.Tensor, seq: torch.Tensor, edge_index: torch.Tensor, radius: float, seq_cutoff: int
):
    """Per-edge WeightNet input [E, 7], WeightNet index [E] (int64) and smooth factor [E].

    ``pos`` [N, 3] and ``frame`` [N, 3, 3] must already be in the compute dtype.
    """
    source, target = edge_index[0], edge_index[1]
    delta = pos[source] - pos[target]
    distance = torch.linalg.vector_norm(delta, dim=-1, keepdim=True)  # [E, 1]
    unit = delta / (distance + DISTANCE_EPS)
    frame_i, frame_j = frame[target], frame[source]
    direction = torch.matmul(frame_i, unit.unsqueeze(-1)).squeeze(-1)  # [E, 3]
    agreement = (frame_i * frame_j).sum(dim=-1)  # [E, 3]
    features = torch.cat([direction, agreement, distance], dim=-1)  # [E, 7]

    half = seq_cutoff // 2
    offset = torch.clamp(seq[source] - seq[target], min=-half, max=half)
    weightnet_index = (offset + half).to(torch.int64)
    normed_length = offset.abs().to(pos.dtype) / half
    normed_distance = distance.squeeze(-1) / radius
    smooth = 0.5 - 0.5 * torch.tanh(16.0 * normed_distance * normed_length - 14.0)
    return features, weightnet_index, smooth


def weightnet(
    features: torch.Tensor,
    weightnet_index: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Per-offset MLP: each edge uses layer parameters ``Ws[k][index]``, ``bs[k][index]``. Returns [E, K]."""
    hidden = features
    for w, b in zip(weights, biases):
        w_e = w.to(features.dtype).index_select(0, weightnet_index)  # [E, in, out]
        b_e = b.to(features.dtype).index_select(0, weightnet_index)  # [E, out]
        hidden = F.leaky_relu(torch.bmm(hidden.unsqueeze(1), w_e).squeeze(1) + b_e, LEAKY_SLOPE)
    return hidden


def cdconv_kernel_weights(
    pos: torch.Tensor,
    frame: torch.Tensor,
    seq: torch.Tensor,
    edge_index: torch.Tensor,
    weightnet_weights: Sequence[torch.Tensor],
    weightnet_biases: Sequence[torch.Tensor],
    radius: float,
    seq_cutoff: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Smoothed per-edge kernel ``k_e * smooth_e`` [E, K] in ``dtype`` (the compute dtype)."""
    features, index, smooth = edge_features(pos.to(dtype), frame.to(dtype), seq, edge_index, radius, seq_cutoff)
    return weightnet(features, index, weightnet_weights, weightnet_biases) * smooth.unsqueeze(-1)


def cdconv(
    x: torch.Tensor,
    pos: torch.Tensor,
    frame: torch.Tensor,
    seq: torch.Tensor,
    edge_index: torch.Tensor,
    weightnet_weights: Sequence[torch.Tensor],
    weightnet_biases: Sequence[torch.Tensor],
    weight: Optional[torch.Tensor],
    radius: float,
    seq_cutoff: int,
) -> torch.Tensor:
    """Reference CDConv: [N, C_out] (or the [N, K*C] aggregate when ``weight`` is None), x's dtype.

    Half-precision inputs compute in float32; float64 computes in float64. Differentiable by plain
    autograd w.r.t. everything floating point. See :func:`esmgear_fast.ops.cdconv` for the argument docs.
    """
    dtype = compute_dtype(x.dtype)
    n, channels = x.shape
    kernel = cdconv_kernel_weights(
        pos, frame, seq, edge_index, weightnet_weights, weightnet_biases, radius, seq_cutoff, dtype
    )  # [E, K]
    source, target = edge_index[0], edge_index[1]
    x_j = x.to(dtype).index_select(0, source)  # [E, C]
    message = (kernel.unsqueeze(2) * x_j.unsqueeze(1)).reshape(-1, kernel.size(1) * channels)  # [E, K*C]
    aggregate = torch.zeros(n, message.size(1), dtype=dtype, device=x.device).index_add(0, target, message)
    if weight is None:
        return aggregate.to(x.dtype)
    return (aggregate @ weight.to(dtype)).to(x.dtype)
