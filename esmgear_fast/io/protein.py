"""The :class:`Protein` container: one protein (one or more chains) at residue level."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from .residues import (
    BACKBONE_ATOMS,
    NUM_RESIDUE_TYPES,
    normalize_sequence,
    sequence_to_residue_type,
)

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]

__all__ = ["Protein", "default_chain_names"]


def default_chain_names(num_chains: int) -> List[str]:
    """``['A', 'B', ..., 'Z', 'a', ..., 'z', '0', ..., '9']`` then ``'C62'``, ``'C63'``, ... ."""
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    letters += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    letters += [str(d) for d in range(10)]
    return [letters[i] if i < len(letters) else f"C{i}" for i in range(num_chains)]


def _tensor_equal_nan(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
    return bool(torch.equal(a, b))


@dataclass(eq=False, repr=False)
class Protein:
    """One protein structure at residue level (all of its selected chains, concatenated in file order).

    ``L`` below is the number of residues; it is always at least 1 (empty proteins cannot be built).

    Attributes:
        name: identifier; the file stem for parsed files (``"1abc"`` for ``1abc.pdb.gz``).
        sequence: one-letter sequence of length ``L``; ``'X'`` marks an unknown residue. Always consistent
            with ``residue_type`` (the types are derived from these letters).
        residue_type: ``int64 [L]`` residue-type indices in TorchDrug order (see
            :mod:`esmgear_fast.io.residues`), 20 = unknown.
        pos: ``float32 [L, 3]`` C-alpha coordinates in Angstrom; always finite.
        backbone: ``float32 [L, 4, 3]`` coordinates of the ``N, CA, C, O`` atoms; NaN where an atom is
            missing. ``backbone[:, 1]`` equals ``pos``.
        chain_id: ``int64 [L]`` index into ``chain_names`` (0-based, chains numbered in order of appearance).
        chain_names: chain identifiers (author chain IDs for parsed files; a blank PDB chain ID is ``""``).
        residue_number: ``int64 [L]`` author residue numbers (``1..L`` by default in :meth:`from_arrays`).
        insertion_code: a ``str`` of length ``L`` holding each residue's insertion code, ``' '`` when the
            residue has none (so ``insertion_code[i]`` is residue ``i``'s code).
        plddt: ``float32 [L]`` per-residue confidence (pLDDT, 0-100) for predicted models, else ``None``.
        num_skipped_residues: amino-acid residues dropped by the parser because they have no C-alpha atom.
    """

    name: str
    sequence: str
    residue_type: torch.Tensor
    pos: torch.Tensor
    backbone: torch.Tensor
    chain_id: torch.Tensor
    chain_names: List[str]
    residue_number: torch.Tensor
    insertion_code: str
    plddt: Optional[torch.Tensor] = None
    num_skipped_residues: int = 0

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Checks types, dtypes, shapes and invariants; raises :class:`ValueError` / :class:`TypeError`."""
        L = len(self.sequence) if isinstance(self.sequence, str) else None
        if L is None:
            raise TypeError(f"Protein {self.name!r}: sequence must be a str, got {type(self.sequence).__name__}")
        if L == 0:
            raise ValueError(f"Protein {self.name!r}: empty sequence (a protein needs at least one residue)")
        checks = (
            ("residue_type", self.residue_type, torch.long, (L,)),
            ("pos", self.pos, torch.float32, (L, 3)),
            ("backbone", self.backbone, torch.float32, (L, len(BACKBONE_ATOMS), 3)),
            ("chain_id", self.chain_id, torch.long, (L,)),
            ("residue_number", self.residue_number, torch.long, (L,)),
        )
        if self.plddt is not None:
            checks += (("plddt", self.plddt, torch.float32, (L,)),)
        for key, value, dtype, shape in checks:
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Protein {self.name!r}: {key} must be a torch.Tensor, got {type(value).__name__}")
            if value.dtype != dtype:
                raise TypeError(f"Protein {self.name!r}: {key} must have dtype {dtype}, got {value.dtype}")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"Protein {self.name!r}: {key} has shape {tuple(value.shape)}, expected {shape} "
                    f"(L = len(sequence) = {L})"
                )
        if not isinstance(self.insertion_code, str) or len(self.insertion_code) != L:
            raise ValueError(f"Protein {self.name!r}: insertion_code must be a str of length L = {L}")
        if not isinstance(self.chain_names, list) or not all(isinstance(c, str) for c in self.chain_names):
            raise TypeError(f"Protein {self.name!r}: chain_names must be a list of str")
        if int(self.num_skipped_residues) < 0:
            raise ValueError(f"Protein {self.name!r}: num_skipped_residues must be >= 0")
        if self.pos.device.type == "cpu":  # value checks only where they cost no device synchronisation
            _check_finite_rows(self.pos, "C-alpha position (pos)", self.name)
            if int(self.residue_type.min()) < 0 or int(self.residue_type.max()) >= NUM_RESIDUE_TYPES:
                raise ValueError(f"Protein {self.name!r}: residue_type outside 0..{NUM_RESIDUE_TYPES - 1}")
            if self.plddt is not None and not bool(torch.isfinite(self.plddt).all()):
                raise ValueError(f"Protein {self.name!r}: plddt must be finite")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        sequence: str,
        pos: ArrayLike,
        chain_id: Optional[ArrayLike] = None,
        residue_number: Optional[ArrayLike] = None,
        backbone: Optional[ArrayLike] = None,
        plddt: Optional[ArrayLike] = None,
        name: Optional[str] = None,
        chain_names: Optional[Sequence[str]] = None,
        insertion_code: Optional[str] = None,
    ) -> "Protein":
        """Builds a protein from in-memory data (e.g. a structure predictor's output).

        Arrays may be numpy arrays, torch tensors (any device; stored on CPU) or nested lists.

        Args:
            sequence: one-letter sequence; case-insensitive. Letters outside the 20 standard amino acids
                (``B, J, O, U, X, Z``) become the unknown type ``'X'`` (index 20); other characters
                (gaps, digits, ``*``, whitespace) raise :class:`ValueError`.
            pos: ``[L, 3]`` C-alpha coordinates; every value must be finite (stored as float32).
            chain_id: ``[L]`` non-negative chain indices; default all zeros.
            residue_number: ``[L]`` integer residue numbers; default ``1..L``.
            backbone: ``[L, 4, 3]`` ``N, CA, C, O`` coordinates, NaN for missing atoms. Its CA must agree
                with ``pos`` (within 1e-3 A where it is not NaN); the stored CA is then set to ``pos``
                exactly. Default: NaN except CA = ``pos``.
            plddt: ``[L]`` finite per-residue confidences; default ``None``.
            name: default ``"protein"``.
            chain_names: names for chain indices ``0..max(chain_id)``; default ``A, B, C, ...``.
            insertion_code: ``str`` of length ``L``; default all blanks.

        Raises:
            ValueError: empty sequence, inconsistent shapes, non-finite C-alpha (the message names the
                first offending residue index), non-finite pLDDT, negative chain indices, too few chain
                names, backbone CA disagreeing with ``pos``.
        """
        name = "protein" if name is None else str(name)
        seq = normalize_sequence(sequence)
        L = len(seq)
        if L == 0:
            raise ValueError(f"Protein {name!r}: empty sequence (a protein needs at least one residue)")

        pos_t = _as_float_tensor(pos, "pos", name)
        if tuple(pos_t.shape) != (L, 3):
            raise ValueError(f"Protein {name!r}: pos has shape {tuple(pos_t.shape)}, expected ({L}, 3) for a "
                             f"sequence of length {L}")
        _check_finite_rows(pos_t, "C-alpha position (pos)", name)

        if chain_id is None:
            chain_t = torch.zeros(L, dtype=torch.long)
        else:
            chain_t = _as_long_tensor(chain_id, "chain_id", name, L)
            if (chain_t < 0).any():
                i = int((chain_t < 0).nonzero()[0, 0])
                raise ValueError(f"Protein {name!r}: chain_id is negative at residue index {i}")
        num_chains = int(chain_t.max()) + 1
        if chain_names is None:
            names = default_chain_names(num_chains)
        else:
            names = [str(c) for c in chain_names]
            if len(names) < num_chains:
                raise ValueError(f"Protein {name!r}: {len(names)} chain_names given but chain_id goes up to "
                                 f"{num_chains - 1}")

        if residue_number is None:
            resnum_t = torch.arange(1, L + 1, dtype=torch.long)
        else:
            resnum_t = _as_long_tensor(residue_number, "residue_number", name, L)

        if backbone is None:
            bb = torch.full((L, len(BACKBONE_ATOMS), 3), math.nan, dtype=torch.float32)
        else:
            bb = _as_float_tensor(backbone, "backbone", name).clone()
            if tuple(bb.shape) != (L, len(BACKBONE_ATOMS), 3):
                raise ValueError(f"Protein {name!r}: backbone has shape {tuple(bb.shape)}, expected ({L}, 4, 3)")
            ca = bb[:, 1]
            known = ~ca.isnan().any(-1)
            diff = (ca[known] - pos_t[known]).abs()
            if diff.numel() and not bool((diff <= 1e-3).all()):
                i = int(known.nonzero()[:, 0][(diff > 1e-3).any(-1)][0])
                raise ValueError(f"Protein {name!r}: backbone CA differs from pos at residue index {i}")
            if bool(torch.isinf(bb).any()):
                raise ValueError(f"Protein {name!r}: backbone contains infinite coordinates (use NaN for missing)")
        bb[:, 1] = pos_t

        plddt_t = None
        if plddt is not None:
            plddt_t = _as_float_tensor(plddt, "plddt", name)
            if tuple(plddt_t.shape) != (L,):
                raise ValueError(f"Protein {name!r}: plddt has shape {tuple(plddt_t.shape)}, expected ({L},)")
            if not bool(torch.isfinite(plddt_t).all()):
                i = int((~torch.isfinite(plddt_t)).nonzero()[0, 0])
                raise ValueError(f"Protein {name!r}: plddt is not finite at residue index {i}")

        if insertion_code is None:
            insertion_code = " " * L
        elif not isinstance(insertion_code, str) or len(insertion_code) != L:
            raise ValueError(f"Protein {name!r}: insertion_code must be a str of length {L}")

        return cls(
            name=name,
            sequence=seq,
            residue_type=sequence_to_residue_type(seq),
            pos=pos_t.contiguous(),
            backbone=bb.contiguous(),
            chain_id=chain_t.contiguous(),
            chain_names=names,
            residue_number=resnum_t.contiguous(),
            insertion_code=insertion_code,
            plddt=plddt_t,
            num_skipped_residues=0,
        )

    # ------------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return len(self.sequence)

    @property
    def num_residues(self) -> int:
        return len(self.sequence)

    @property
    def num_chains(self) -> int:
        """Number of distinct chains present in ``chain_id``."""
        return int(torch.unique(self.chain_id).numel())

    @property
    def device(self) -> torch.device:
        return self.pos.device

    def to(self, device, non_blocking: bool = False) -> "Protein":
        """A copy with every tensor on ``device`` (strings and lists are shared)."""
        def mv(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Protein(
            name=self.name, sequence=self.sequence, residue_type=mv(self.residue_type), pos=mv(self.pos),
            backbone=mv(self.backbone), chain_id=mv(self.chain_id), chain_names=list(self.chain_names),
            residue_number=mv(self.residue_number), insertion_code=self.insertion_code, plddt=mv(self.plddt),
            num_skipped_residues=self.num_skipped_residues,
        )

    def __eq__(self, other) -> bool:
        """Exact equality of every field (NaN equals NaN in ``backbone``)."""
        if not isinstance(other, Protein):
            return NotImplemented
        return (
            self.name == other.name
            and self.sequence == other.sequence
            and self.chain_names == other.chain_names
            and self.insertion_code == other.insertion_code
            and int(self.num_skipped_residues) == int(other.num_skipped_residues)
            and all(
                _tensor_equal_nan(getattr(self, k), getattr(other, k))
                for k in ("residue_type", "pos", "backbone", "chain_id", "residue_number", "plddt")
            )
        )

    __hash__ = None  # mutable container

    def __repr__(self) -> str:
        chains = ",".join(self.chain_names) if len(self.chain_names) <= 8 else f"{len(self.chain_names)} chains"
        seq = self.sequence if len(self.sequence) <= 20 else self.sequence[:17] + "..."
        extra = ", plddt" if self.plddt is not None else ""
        return (f"Protein(name={self.name!r}, L={len(self)}, chains=[{chains}], sequence={seq!r}"
                f"{extra}, skipped={self.num_skipped_residues}, device={self.device})")

    # ------------------------------------------------------------------ chain helpers
    def chain_slice(self, chain: Union[int, str]) -> "Protein":
        """The residues of one chain (by index into ``chain_names`` or by name) as a new protein.

        The result has ``chain_names == [that chain]``, ``chain_id`` all zero, name ``"<name>_<chain>"``
        and ``num_skipped_residues`` 0 (skips are not tracked per chain).
        """
        if isinstance(chain, str):
            if chain not in self.chain_names:
                raise KeyError(f"chain {chain!r} not in {self.chain_names}")
            index = self.chain_names.index(chain)
        else:
            index = int(chain)
        mask = self.chain_id == index
        if not bool(mask.any()):
            raise KeyError(f"chain index {index} has no residues in {self.name!r}")
        idx = mask.nonzero()[:, 0]
        idx_list = idx.tolist()
        return Protein(
            name=f"{self.name}_{self.chain_names[index]}",
            sequence="".join(self.sequence[i] for i in idx_list),
            residue_type=self.residue_type[idx],
            pos=self.pos[idx],
            backbone=self.backbone[idx],
            chain_id=torch.zeros(len(idx_list), dtype=torch.long, device=self.device),
            chain_names=[self.chain_names[index]],
            residue_number=self.residue_number[idx],
            insertion_code="".join(self.insertion_code[i] for i in idx_list),
            plddt=None if self.plddt is None else self.plddt[idx],
            num_skipped_residues=0,
        )

    def split_chains(self) -> List["Protein"]:
        """One protein per chain present, in order of chain index (see :meth:`chain_slice`)."""
        return [self.chain_slice(int(c)) for c in torch.unique(self.chain_id).tolist()]


def _as_float_tensor(value, key: str, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Protein {name!r}: {key} is not a numeric array ({exc})") from exc
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"Protein {name!r}: {key} must be numeric, got dtype {t.dtype}")
    return t.detach().to("cpu", torch.float32)


def _as_long_tensor(value, key: str, name: str, L: int) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Protein {name!r}: {key} is not an integer array ({exc})") from exc
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        if t.is_floating_point() and bool(torch.isfinite(t).all()) and bool((t == t.round()).all()):
            t = t.round()
        else:
            raise ValueError(f"Protein {name!r}: {key} must hold integers, got dtype {t.dtype}")
    t = t.detach().to("cpu", torch.long)
    if tuple(t.shape) != (L,):
        raise ValueError(f"Protein {name!r}: {key} has shape {tuple(t.shape)}, expected ({L},)")
    return t


def _check_finite_rows(t: torch.Tensor, what: str, name: str) -> None:
    bad = ~torch.isfinite(t).all(-1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"Protein {name!r}: {what} is not finite at residue index {i}: {t[i].tolist()}")

