"""Sample transforms with TorchDrug's semantics, on packed per-residue tensors (no per-atom objects).

A transform is a callable taking a dataset sample (a dict, see :mod:`esmgear_fast.data.samples`) or a bare
:class:`~esmgear_fast.io.Protein` and returning a new one (the input is never modified). Datasets apply
their ``transform`` to every sample in ``__getitem__``.

* :class:`TruncateProtein` — TorchDrug's ``transforms.TruncateProtein``: a protein longer than
  ``max_length`` keeps residues ``[0, max_length)`` (``random=False``) or a window starting at
  ``torch.randint(L - max_length)`` (``random=True``; as in TorchDrug the last possible window is never
  drawn). Used by ESM-GearNet for EC/GO (``max_length=550``).
* :class:`TruncateProteinPair` — ESM-GearNet's MSP transform: wild type and mutant (same length) are cut
  to the same ``max_length`` window around the mutated residue.
* :class:`RandomCrop` — GearNet's ``SubsequenceNode`` cropping for pre-training: a contiguous
  subsequence of ``length`` residues starting at ``floor(U * (L - length))``, ``U ~ Uniform[0, 1)``
  (starts ``0 .. L-length-1``, as in TorchDrug); proteins of at most ``length`` residues are unchanged.
* :class:`Compose` — applies transforms in order.

Randomness comes from ``torch``'s global generator (seed it with ``torch.manual_seed``; DataLoader workers
get distinct seeds) or from an explicit ``generator=`` argument.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence, Union

import torch

from ..io.protein import Protein

__all__ = ["Compose", "RandomCrop", "TruncateProtein", "TruncateProteinPair", "protein_slice"]

Sample = Union[Dict, Protein]


def protein_slice(protein: Protein, start: int, end: int) -> Protein:
    """Residues ``[start, end)`` of ``protein`` as a new :class:`Protein` (tensor views, no copy).

    ``chain_names`` are kept whole, so ``chain_id`` values stay valid; ``num_skipped_residues`` is kept.
    """
    L = len(protein)
    if not 0 <= start < end <= L:
        raise ValueError(f"protein_slice: [{start}, {end}) is not a non-empty range inside "
                         f"{protein.name!r} of {L} residues")
    return Protein(
        name=protein.name,
        sequence=protein.sequence[start:end],
        residue_type=protein.residue_type[start:end],
        pos=protein.pos[start:end],
        backbone=protein.backbone[start:end],
        chain_id=protein.chain_id[start:end],
        chain_names=list(protein.chain_names),
        residue_number=protein.residue_number[start:end],
        insertion_code=protein.insertion_code[start:end],
        plddt=None if protein.plddt is None else protein.plddt[start:end],
        num_skipped_residues=protein.num_skipped_residues,
    )


def _randint(high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (1,), generator=generator).item())


def _keys(keys: Union[str, Sequence[str]]) -> tuple:
    return (keys,) if isinstance(keys, str) else tuple(keys)


class _ProteinTransform:
    """Applies :meth:`transform_protein` to a bare protein or to the ``keys`` entries of a dict sample."""

    keys: tuple = ("protein",)

    def transform_protein(self, protein: Protein) -> Protein:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, sample: Sample) -> Sample:
        if isinstance(sample, Protein):
            return self.transform_protein(sample)
        if not isinstance(sample, dict):
            raise TypeError(f"{type(self).__name__} expects a dict sample or a Protein, got {type(sample).__name__}")
        out = dict(sample)
        present = [k for k in self.keys if k in sample]
        if not present:
            raise KeyError(f"{type(self).__name__}: sample has none of the keys {list(self.keys)} "
                           f"(it has {sorted(sample)})")
        for key in present:
            out[key] = self.transform_protein(sample[key])
        return out


class TruncateProtein(_ProteinTransform):
    """Cuts proteins longer than ``max_length`` residues (TorchDrug's ``TruncateProtein``).

    Args:
        max_length: longest protein kept whole (default 550, ESM-GearNet's EC/GO setting).
        random: ``False`` keeps the first ``max_length`` residues; ``True`` keeps the window starting at
            ``torch.randint(L - max_length)``, i.e. a start in ``0 .. L-max_length-1`` (TorchDrug's draw).
        keys: dict keys to truncate (default ``"protein"``; e.g. ``("wild_type", "mutant")``).
        generator: optional ``torch.Generator`` for ``random=True``.
    """

    def __init__(self, max_length: int = 550, random: bool = False, keys: Union[str, Sequence[str]] = "protein",
                 generator: Optional[torch.Generator] = None):
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = int(max_length)
        self.random = bool(random)
        self.keys = _keys(keys)
        self.generator = generator

    def transform_protein(self, protein: Protein) -> Protein:
        L = len(protein)
        if L <= self.max_length:
            return protein
        start = _randint(L - self.max_length, self.generator) if self.random else 0
        return protein_slice(protein, start, start + self.max_length)

    def __repr__(self) -> str:
        return f"TruncateProtein(max_length={self.max_length}, random={self.random}, keys={list(self.keys)})"


class RandomCrop(_ProteinTransform):
    """A contiguous crop of ``length`` residues (TorchDrug's ``layers.geometry.SubsequenceNode``).

    The start is uniform over ``0 .. L-length-1`` (TorchDrug draws ``floor(U * (L - length))``, so the
    last window is never chosen). Proteins of at most ``length`` residues are returned unchanged. Used
    for the pre-training views of GearNet / ESM-GearNet (``length=50`` there).
    """

    def __init__(self, length: int, keys: Union[str, Sequence[str]] = "protein",
                 generator: Optional[torch.Generator] = None):
        if int(length) < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length = int(length)
        self.keys = _keys(keys)
        self.generator = generator

    def transform_protein(self, protein: Protein) -> Protein:
        L = len(protein)
        if L <= self.length:
            return protein
        start = _randint(L - self.length, self.generator)
        return protein_slice(protein, start, start + self.length)

    def __repr__(self) -> str:
        return f"RandomCrop(length={self.length}, keys={list(self.keys)})"


class TruncateProteinPair:
    """Cuts a wild type / mutant pair to one window of ``max_length`` residues around the mutation.

    ESM-GearNet's MSP transform: pairs of at most ``max_length`` residues are unchanged. Otherwise, with
    ``m`` the index of the mutated residue (where the residue types differ) and ``L`` the length,
    ``start = max(0, min(m - max_length // 2, L - max_length))`` and both proteins keep
    ``[start, start + max_length)``. With ``random=True`` the window is a uniformly random one of those
    containing ``m``. (ESM-GearNet's own random branch calls a function that does not exist, so it cannot
    run; this is the documented intent.) When several residues differ, the first is used.

    Raises ``ValueError`` (naming the sample) when the two proteins differ in length or, for pairs longer
    than ``max_length``, have identical residue types (no mutation to centre on).
    """

    def __init__(self, max_length: int = 1000, random: bool = False, keys: Sequence[str] = ("wild_type", "mutant"),
                 generator: Optional[torch.Generator] = None):
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        keys = tuple(keys)
        if len(keys) != 2:
            raise ValueError(f"keys must name the two proteins of the pair, got {keys}")
        self.max_length = int(max_length)
        self.random = bool(random)
        self.keys = keys
        self.generator = generator

    def window(self, wild_type: Protein, mutant: Protein) -> Optional[tuple]:
        """``(start, end)`` of the kept window, or ``None`` when the pair is short enough."""
        L = len(wild_type)
        if len(mutant) != L:
            raise ValueError(f"TruncateProteinPair: {wild_type.name!r} has {L} residues but mutant "
                             f"{mutant.name!r} has {len(mutant)}")
        if L <= self.max_length:
            return None
        diff = (wild_type.residue_type != mutant.residue_type).nonzero()[:, 0]
        if diff.numel() == 0:
            raise ValueError(f"TruncateProteinPair: {wild_type.name!r} and {mutant.name!r} have identical "
                             f"residue types, no mutation to centre the {self.max_length}-residue window on")
        m = int(diff[0])
        if self.random:
            low = max(0, m - self.max_length + 1)
            high = min(m, L - self.max_length)
            start = low + _randint(high - low + 1, self.generator)
        else:
            start = max(0, min(m - self.max_length // 2, L - self.max_length))
        return start, start + self.max_length

    def __call__(self, sample: Dict) -> Dict:
        if not isinstance(sample, dict):
            raise TypeError(f"TruncateProteinPair expects a dict sample, got {type(sample).__name__}")
        missing = [k for k in self.keys if k not in sample]
        if missing:
            raise KeyError(f"TruncateProteinPair: sample lacks {missing} (it has {sorted(sample)})")
        a, b = (sample[k] for k in self.keys)
        win = self.window(a, b)
        if win is None:
            return dict(sample)
        out = dict(sample)
        out[self.keys[0]] = protein_slice(a, *win)
        out[self.keys[1]] = protein_slice(b, *win)
        return out

    def __repr__(self) -> str:
        return f"TruncateProteinPair(max_length={self.max_length}, random={self.random})"


class Compose:
    """Applies ``transforms`` in order (``None`` entries are skipped, nested Compose flattened)."""

    def __init__(self, transforms: Iterable[Optional[Callable]]):
        flat = []
        for t in transforms:
            if isinstance(t, Compose):
                flat.extend(t.transforms)
            elif t is not None:
                if not callable(t):
                    raise TypeError(f"Compose: {t!r} is not callable")
                flat.append(t)
        self.transforms = flat

    def __call__(self, sample):
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"
