"""Fast ESM-2: packed variable-length encoder, checkpoint loading, long-sequence windows, MLM head.

>>> from esmgear_fast.esm import load_esm
>>> esm = load_esm("random:tiny")            # or "esm2_t33_650M_UR50D", a .pt file, a HF directory
>>> out = esm(["MKTAYIAK", "GSHM"])          # out.representations [12, D], out.ptr [0, 8, 12]
"""
from .alphabet import BOS, EOS, MASK, PAD, TOKENS, UNK, VOCAB_SIZE, encode_sequence, tokenize
from .attention import ATTENTION_IMPLS, packed_attention
from .config import ESM2_CONFIGS, EsmConfig
from .loading import load_esm, random_esm, state_dict_from_fair_esm, state_dict_from_hf
from .model import ESM2, EsmOutput
from .windows import assign_windows, window_starts

__all__ = [
    "ESM2", "EsmOutput", "EsmConfig", "ESM2_CONFIGS", "load_esm", "random_esm", "state_dict_from_fair_esm",
    "state_dict_from_hf", "encode_sequence", "tokenize", "packed_attention", "ATTENTION_IMPLS", "window_starts",
    "assign_windows", "TOKENS", "BOS", "EOS", "PAD", "UNK", "MASK", "VOCAB_SIZE",
]
