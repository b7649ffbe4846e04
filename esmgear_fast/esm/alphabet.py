"""ESM-2 token alphabet and tokenisation of packed batches.

The vocabulary is fair-esm's ``ESM-1b`` alphabet (33 tokens), so checkpoints trained with it load
unchanged::

    0 <cls> (BOS)   1 <pad>   2 <eos>   3 <unk>
    4..23  L A G V S E R T I D P K Q N F Y M H W C
    24..30 X B U Z O . -      31 <null_1>   32 <mask>

Residue letters (documented mapping rule):

* the sequence is upper-cased first (``"mkv"`` == ``"MKV"``);
* the 20 standard letters and ``X B U Z O`` map to their own ESM tokens (exactly as fair-esm's
  ``BatchConverter`` does, so ESM sees selenocysteine ``U`` etc. as it was trained);
* ``J`` (Leu/Ile ambiguity, absent from ESM's alphabet) maps to ``X``;
* any other character (digits, whitespace, ``*``, gaps ``-``/``.``) raises :class:`ValueError`
  naming the character and its position; an empty sequence raises :class:`ValueError`.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

__all__ = ["TOKENS", "BOS", "PAD", "EOS", "UNK", "MASK", "VOCAB_SIZE", "encode_sequence", "tokenize"]

TOKENS: Tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)
BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32
VOCAB_SIZE = len(TOKENS)

_LETTER_TO_TOKEN = {t: i for i, t in enumerate(TOKENS) if len(t) == 1 and t.isalpha()}
_LETTER_TO_TOKEN["J"] = _LETTER_TO_TOKEN["X"]
_LUT = torch.full((128,), -1, dtype=torch.long)
for _letter, _tok in _LETTER_TO_TOKEN.items():
    _LUT[ord(_letter)] = _tok


def encode_sequence(sequence: str) -> torch.Tensor:
    """Residue tokens of one sequence (no BOS/EOS): ``int64 [L]``. See the module doc for the rule."""
    if not isinstance(sequence, str):
        raise TypeError(f"sequence must be a str, got {type(sequence).__name__}")
    if len(sequence) == 0:
        raise ValueError("empty sequence: ESM-2 needs at least one residue")
    upper = sequence.upper()
    try:
        codes = torch.frombuffer(bytearray(upper.encode("ascii")), dtype=torch.uint8).long()
    except UnicodeEncodeError:
        codes = None
    tokens = None if codes is None else _LUT[codes]
    if tokens is None or bool((tokens < 0).any()):
        for i, ch in enumerate(upper):
            if ch not in _LETTER_TO_TOKEN:
                raise ValueError(
                    f"sequence contains the character {ch!r} at index {i}; ESM-2 accepts only the letters "
                    "A-Z (20 standard amino acids, X B U Z O as in fair-esm, J mapped to X)"
                )
    return tokens


def tokenize(sequences: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pack sequences as ESM tokens with BOS and EOS around each one.

    Returns:
        tokens: ``int64 [T]`` with ``T = sum(L_b + 2)``.
        cu_seqlens: ``int64 [B+1]`` token offsets; sequence ``b`` is ``tokens[cu[b]:cu[b+1]]``.
    """
    if isinstance(sequences, str):
        raise TypeError("expected a list of sequences, got a single str")
    if len(sequences) == 0:
        raise ValueError("no sequences given")
    parts: List[torch.Tensor] = []
    lengths = []
    bos, eos = torch.tensor([BOS]), torch.tensor([EOS])
    for i, seq in enumerate(sequences):
        try:
            res = encode_sequence(seq)
        except ValueError as e:
            raise ValueError(f"sequence {i}: {e}") from None
        parts += [bos, res, eos]
        lengths.append(res.numel() + 2)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return torch.cat(parts), cu
