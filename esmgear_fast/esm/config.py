"""ESM-2 architecture configurations (the published shapes)."""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Dict

__all__ = ["EsmConfig", "ESM2_CONFIGS"]


@dataclass(frozen=True)
class EsmConfig:
    """Shape of an ESM-2 model.

    Attributes:
        num_layers: transformer layers.
        embed_dim: model width ``D``.
        attention_heads: heads ``H`` (``D / H`` is the head width).
        ffn_dim: feed-forward width (``4 D`` in every published ESM-2).
        token_dropout: rescale embeddings by the observed mask ratio, as ESM-2 was trained
            (fair-esm applies it at inference too).
        max_residues: model window in residues (1022 = 1024 positions minus BOS and EOS). Longer
            sequences are split into overlapping windows (see :mod:`esmgear_fast.esm.windows`).
        layer_norm_eps: LayerNorm epsilon (1e-5 in fair-esm and Hugging Face).
    """

    num_layers: int = 33
    embed_dim: int = 1280
    attention_heads: int = 20
    ffn_dim: int = 0
    token_dropout: bool = True
    max_residues: int = 1022
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.ffn_dim == 0:
            object.__setattr__(self, "ffn_dim", 4 * self.embed_dim)
        if self.embed_dim % self.attention_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by attention_heads {self.attention_heads}")
        if (self.embed_dim // self.attention_heads) % 2:
            raise ValueError("the head width must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


#: fair-esm model names -> shapes.
ESM2_CONFIGS: Dict[str, EsmConfig] = {
    "esm2_t6_8M_UR50D": EsmConfig(6, 320, 20),
    "esm2_t12_35M_UR50D": EsmConfig(12, 480, 20),
    "esm2_t30_150M_UR50D": EsmConfig(30, 640, 20),
    "esm2_t33_650M_UR50D": EsmConfig(33, 1280, 20),
    "esm2_t36_3B_UR50D": EsmConfig(36, 2560, 40),
    "esm2_t48_15B_UR50D": EsmConfig(48, 5120, 40),
}
