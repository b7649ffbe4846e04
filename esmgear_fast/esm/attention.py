"""Variable-length (packed) multi-head self-attention with rotary embeddings.

Sequences are packed along the token axis without padding; ``cu_seqlens`` (``[B+1]``) delimits
them and a token attends only to tokens of its own sequence. Implementations (``impl=``):

============  ==============================================================================
``loop``      one ``scaled_dot_product_attention`` call per sequence on views of the packed
              tensors: no padding, no mask. Fastest measured on CPU (attention alone, 8 EC/GO-like
              lengths, 20 heads x 64, 1 thread: loop 139 ms, padded 166 ms, FlexAttention with a
              compiled document block mask 193 ms; FlexAttention is therefore not offered).
``padded``    scatter into ``[B, H, L_max, d]`` with a key-padding mask, one SDPA call; runs anywhere.
``varlen``    ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention on packed tokens): CUDA,
              fp16/bf16 only. Designed-for GPU choice; not measured on this project's CPU machine.
``auto``      ``varlen`` on CUDA for half-precision inputs when available, ``padded`` for other
              CUDA inputs, ``loop`` on CPU.
============  ==============================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .rotary import apply_rotary

__all__ = ["PackedSequences", "packed_attention", "RotarySelfAttention", "ATTENTION_IMPLS"]

ATTENTION_IMPLS = ("auto", "loop", "padded", "varlen")

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - older torch
    _varlen_attn = None


@dataclass
class PackedSequences:
    """How ``T`` packed tokens split into ``B`` sequences, plus per-token rotary tables.

    Attributes:
        cu_seqlens: ``int64 [B+1]`` token offsets (on the tokens' device).
        lengths: the ``B`` sequence lengths as Python ints (no device sync inside the layers).
        max_len: ``max(lengths)``.
        cos, sin: ``float32 [T, 1, d]`` rotary tables.
    """

    cu_seqlens: torch.Tensor
    lengths: List[int]
    max_len: int
    cos: torch.Tensor
    sin: torch.Tensor


def _resolve(impl: str, q: torch.Tensor) -> str:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
    if impl != "auto":
        return impl
    if q.is_cuda:
        if _varlen_attn is not None and q.dtype in (torch.float16, torch.bfloat16):
            return "varlen"
        return "padded"
    return "loop"


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences,
                     impl: str = "auto") -> torch.Tensor:
    """Softmax attention within each packed sequence.

    Args:
        q, k, v: ``[T, H, d]``, ``q`` already scaled (the softmax scale is 1).
        packed: the packing.
        impl: see the module doc.

    Returns:
        ``[T, H, d]``.
    """
    impl = _resolve(impl, q)
    if impl == "loop":
        out = torch.empty_like(q)
        start = 0
        for length in packed.lengths:
            end = start + length
            o = F.scaled_dot_product_attention(q[start:end].transpose(0, 1), k[start:end].transpose(0, 1),
                                               v[start:end].transpose(0, 1), scale=1.0)
            out[start:end] = o.transpose(0, 1)
            start = end
        return out
    if impl == "varlen":
        if _varlen_attn is None:
            raise RuntimeError("torch.nn.attention.varlen is not available in this torch")
        cu = packed.cu_seqlens.to(torch.int32)
        return _varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, packed.max_len, packed.max_len,
                            scale=1.0)
    # padded
    B, L = len(packed.lengths), packed.max_len
    T, H, d = q.shape
    lengths = torch.tensor(packed.lengths, device=q.device)
    seq = torch.repeat_interleave(torch.arange(B, device=q.device), lengths, output_size=T)
    pos = torch.arange(T, device=q.device) - packed.cu_seqlens[:-1][seq]
    valid = torch.arange(L, device=q.device)[None, :] < lengths[:, None]  # [B, L]

    def pad(x):
        out = x.new_zeros(B, L, H, d)
        out[seq, pos] = x
        return out.transpose(1, 2)

    o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=valid[:, None, None, :], scale=1.0)
    return o.transpose(1, 2)[seq, pos]


class RotarySelfAttention(nn.Module):
    """ESM-2 self-attention on packed tokens: fused QKV projection, rotary embeddings, output projection.

    Numerics follow fair-esm: ``q`` is scaled by ``d**-0.5`` before the rotation, softmax in the
    input precision of SDPA (float32 for float32 inputs).
    """

    def __init__(self, embed_dim: int, num_heads: int, impl: str = "auto"):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.impl = impl
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)  # rows: q, k, v
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        """``x``: ``[T, D]`` -> ``[T, D]``."""
        T = x.shape[0]
        qkv = self.qkv_proj(x).view(T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        q = apply_rotary(q * self.scaling, packed.cos, packed.sin)
        k = apply_rotary(k, packed.cos, packed.sin)
        o = packed_attention(q, k, v, packed, self.impl)
        return self.out_proj(o.reshape(T, self.embed_dim))
