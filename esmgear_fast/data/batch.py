"""Packed batches of proteins: :class:`ProteinBatch` and :func:`collate`.

Residues of all proteins are concatenated along the first dimension (no padding). ``ptr`` (``[B+1]``,
``ptr[b]:ptr[b+1]`` are protein ``b``'s residues) and ``batch`` (``[N]``, the protein index of every
residue) describe the packing; both are int64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, List, Optional, Sequence

import torch

from ..io.protein import Protein

__all__ = ["ProteinBatch", "collate"]

_TENSOR_FIELDS = ("pos", "backbone", "residue_type", "chain_id", "residue_number", "plddt", "batch", "ptr",
                  "num_residues")


@dataclass(eq=False, repr=False)
class ProteinBatch:
    """Several proteins packed residue-wise (``N`` residues in total, ``B`` proteins).

    Attributes:
        pos: ``float32 [N, 3]`` C-alpha coordinates.
        backbone: ``float32 [N, 4, 3]`` ``N, CA, C, O`` coordinates (NaN where missing).
        residue_type: ``int64 [N]`` residue types (TorchDrug order, 20 = unknown).
        chain_id: ``int64 [N]`` chain index *within each protein* (as in :class:`Protein`).
        residue_number: ``int64 [N]`` author residue numbers.
        plddt: ``float32 [N]`` or ``None``. ``None`` only when no protein of the batch has pLDDT; when some
            have it and some do not, the residues of proteins without it are NaN.
        batch: ``int64 [N]`` protein index of every residue.
        ptr: ``int64 [B+1]`` offsets: protein ``b`` is ``ptr[b]:ptr[b+1]``.
        num_residues: ``int64 [B]`` residues per protein.
        names, sequences, insertion_codes: per-protein ``str`` lists.
        chain_names: per-protein lists of chain names.
        num_skipped_residues: per-protein counts from the parser.
        max_num_residues: the largest protein's length as a Python ``int`` (known without a device sync).
    """

    pos: torch.Tensor
    backbone: torch.Tensor
    residue_type: torch.Tensor
    chain_id: torch.Tensor
    residue_number: torch.Tensor
    plddt: Optional[torch.Tensor]
    batch: torch.Tensor
    ptr: torch.Tensor
    num_residues: torch.Tensor
    names: List[str]
    sequences: List[str]
    insertion_codes: List[str]
    chain_names: List[List[str]]
    num_skipped_residues: List[int]
    max_num_residues: int

    # ------------------------------------------------------------------ sizes
    @property
    def num_proteins(self) -> int:
        """``B``."""
        return len(self.names)

    @property
    def num_nodes(self) -> int:
        """``N``, the total number of residues."""
        return int(self.pos.shape[0])

    def __len__(self) -> int:
        return len(self.names)

    @property
    def device(self) -> torch.device:
        return self.pos.device

    # ------------------------------------------------------------------ devices
    def _map_tensors(self, fn) -> "ProteinBatch":
        changes = {k: (None if getattr(self, k) is None else fn(getattr(self, k))) for k in _TENSOR_FIELDS}
        return replace(self, **changes)

    def to(self, device, non_blocking: bool = False) -> "ProteinBatch":
        """A batch with every tensor on ``device`` (lists of strings are shared, not copied)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "ProteinBatch":
        """A batch whose tensors are in page-locked host memory (for ``.to('cuda', non_blocking=True)``).

        Pinning needs CUDA: when ``torch.cuda.is_available()`` is false (CPU-only machines or builds)
        this is a no-op returning ``self``. ``torch.utils.data.DataLoader(pin_memory=True)`` calls this
        method on each batch.
        """
        if not torch.cuda.is_available():
            return self
        return self._map_tensors(lambda t: t if t.is_cuda else t.pin_memory())

    def is_pinned(self) -> bool:
        """Whether every tensor is in pinned host memory."""
        return all(getattr(self, k) is None or getattr(self, k).is_pinned() for k in _TENSOR_FIELDS)

    # ------------------------------------------------------------------ access
    def __getitem__(self, index: int) -> Protein:
        """Protein ``index`` (negative indices allowed) as a :class:`Protein` on the batch's device."""
        B = self.num_proteins
        if not isinstance(index, int):
            raise TypeError(f"ProteinBatch indices must be int, got {type(index).__name__}")
        if not -B <= index < B:
            raise IndexError(f"protein index {index} out of range for a batch of {B}")
        return self._protein(index % B, self.ptr.tolist())

    def _protein(self, index: int, offsets: List[int]) -> Protein:
        start, end = offsets[index], offsets[index + 1]
        plddt = None
        if self.plddt is not None:
            segment = self.plddt[start:end]
            if not bool(segment.isnan().all()):
                plddt = segment
        return Protein(
            name=self.names[index],
            sequence=self.sequences[index],
            residue_type=self.residue_type[start:end],
            pos=self.pos[start:end],
            backbone=self.backbone[start:end],
            chain_id=self.chain_id[start:end],
            chain_names=list(self.chain_names[index]),
            residue_number=self.residue_number[start:end],
            insertion_code=self.insertion_codes[index],
            plddt=plddt,
            num_skipped_residues=self.num_skipped_residues[index],
        )

    def unbatch(self) -> List[Protein]:
        """The proteins of the batch, in order (tensors are views into the batch's tensors)."""
        offsets = self.ptr.tolist()
        return [self._protein(i, offsets) for i in range(self.num_proteins)]

    def __iter__(self) -> Iterator[Protein]:
        return iter(self.unbatch())

    def __repr__(self) -> str:
        return (f"ProteinBatch(num_proteins={self.num_proteins}, num_nodes={self.num_nodes}, "
                f"max_num_residues={self.max_num_residues}, plddt={self.plddt is not None}, device={self.device})")


def collate(proteins: Sequence[Protein]) -> ProteinBatch:
    """Packs proteins into one :class:`ProteinBatch` (usable as ``DataLoader(collate_fn=collate)``).

    All proteins must be on the same device. Raises :class:`ValueError` for an empty list and
    :class:`TypeError` for items that are not :class:`Protein`.
    """
    proteins = list(proteins)
    if not proteins:
        raise ValueError("collate() needs at least one Protein, got an empty list")
    for i, p in enumerate(proteins):
        if not isinstance(p, Protein):
            raise TypeError(f"collate() item {i} is a {type(p).__name__}, not a Protein")
    device = proteins[0].device
    for i, p in enumerate(proteins):
        if p.device != device:
            raise ValueError(f"collate() item {i} ({p.name!r}) is on {p.device}, item 0 on {device}")

    lengths = [len(p) for p in proteins]
    num_residues = torch.tensor(lengths, dtype=torch.long)
    ptr = torch.zeros(len(proteins) + 1, dtype=torch.long)
    torch.cumsum(num_residues, 0, out=ptr[1:])
    batch = torch.repeat_interleave(torch.arange(len(proteins)), num_residues)

    if any(p.plddt is not None for p in proteins):
        plddt = torch.cat([
            p.plddt if p.plddt is not None else torch.full((len(p),), math.nan, dtype=torch.float32, device=device)
            for p in proteins
        ])
    else:
        plddt = None

    def cat(key):
        return torch.cat([getattr(p, key) for p in proteins])

    return ProteinBatch(
        pos=cat("pos"),
        backbone=cat("backbone"),
        residue_type=cat("residue_type"),
        chain_id=cat("chain_id"),
        residue_number=cat("residue_number"),
        plddt=plddt,
        batch=batch.to(device),
        ptr=ptr.to(device),
        num_residues=num_residues.to(device),
        names=[p.name for p in proteins],
        sequences=[p.sequence for p in proteins],
        insertion_codes=[p.insertion_code for p in proteins],
        chain_names=[list(p.chain_names) for p in proteins],
        num_skipped_residues=[int(p.num_skipped_residues) for p in proteins],
        max_num_residues=max(lengths),
    )

