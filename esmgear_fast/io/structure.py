"""Reading structure files (PDB, mmCIF, optionally gzip-compressed) into :class:`Protein` objects."""
from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._assemble import assemble
from .errors import StructureParseError
from .protein import Protein
from .residues import sequence_to_residue_type

__all__ = [
    "STRUCTURE_SUFFIXES",
    "arrays_to_protein",
    "detect_format",
    "is_structure_file",
    "load_structure",
    "read_structure_arrays",
    "structure_name",
]

PathLike = Union[str, os.PathLike]
ChainSpec = Optional[Union[str, Sequence[str]]]

_PDB_SUFFIXES = (".pdb", ".ent")
_CIF_SUFFIXES = (".cif", ".mmcif")
#: File suffixes recognised as structure files (each also with ``.gz``).
STRUCTURE_SUFFIXES = _PDB_SUFFIXES + _CIF_SUFFIXES
_UNSUPPORTED_SUFFIXES = (".bcif", ".mmtf", ".pqr", ".gro", ".xyz", ".mol2", ".sdf")
_PARSERS = ("auto", "fast", "biopython")
_GZIP_MAGIC = b"\x1f\x8b"
_CONTROL_BYTES = bytes(range(0, 9)) + bytes(range(14, 32))  # not tab, newline, vt, ff, cr
_PDB_RECORD = re.compile(r"^(ATOM  |HETATM|HEADER|MODEL |CRYST1|REMARK|TITLE |COMPND)", re.MULTILINE)
_COORDINATE_RECORD = re.compile(r"^(ATOM  |HETATM)", re.MULTILINE)
_CIF_START = re.compile(r"^\s*(data_|loop_|_atom_site\.)", re.MULTILINE)
# Text that marks a predicted model whose B-factor column holds pLDDT.
_PREDICTED_PDB_MARKER = re.compile(r"ALPHAFOLD", re.IGNORECASE)
_PREDICTED_CIF_MARKER = re.compile(r"^_ma_qa_metric", re.MULTILINE)


def _split_suffixes(path: Path):
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return name, gz


def structure_name(path: PathLike) -> str:
    """The protein name of a file: its name without ``.gz`` and without the format suffix."""
    name = Path(path).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def is_structure_file(path: PathLike) -> bool:
    """Whether the file name ends in a supported suffix (``.pdb .ent .cif .mmcif``, each optionally ``.gz``)."""
    name, _ = _split_suffixes(Path(path))
    return name.endswith(STRUCTURE_SUFFIXES)


def _format_from_suffix(path: PathLike) -> Optional[str]:
    name, _ = _split_suffixes(Path(path))
    if name.endswith(_PDB_SUFFIXES):
        return "pdb"
    if name.endswith(_CIF_SUFFIXES):
        return "cif"
    if name.endswith(_UNSUPPORTED_SUFFIXES):
        raise StructureParseError(path, f"unsupported file format {Path(name).suffix!r}; "
                                        "supported: .pdb .ent .cif .mmcif (each optionally .gz)")
    return None


def detect_format(path: PathLike, text: Optional[str] = None) -> str:
    """``"pdb"`` or ``"cif"`` from the file suffix or, when the suffix is not a known one, from ``text``.

    Raises :class:`StructureParseError` for unsupported formats (binary CIF, MMTF, ...) and when neither
    the suffix nor the content identifies the format.
    """
    fmt = _format_from_suffix(path)
    if fmt is not None:
        return fmt
    if text is not None:
        head = text[:20000]
        cif = _CIF_START.search(head)
        pdb = _PDB_RECORD.search(head)
        if cif and (not pdb or cif.start() < pdb.start()):
            return "cif"
        if pdb:
            return "pdb"
    raise StructureParseError(path, "cannot tell the file format from its suffix or content "
                                    "(supported: PDB and mmCIF, optionally gzip-compressed)")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StructureParseError(path, "file not found") from None
    except IsADirectoryError:
        raise StructureParseError(path, "is a directory, not a structure file") from None
    except OSError as exc:
        raise StructureParseError(path, f"cannot read file: {exc}") from exc
    _, gz_suffix = _split_suffixes(path)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except EOFError:
            raise StructureParseError(path, "gzip data is truncated (compressed stream ends early)") from None
        except (OSError, zlib.error) as exc:
            raise StructureParseError(path, f"corrupt gzip data: {exc}") from exc
    elif gz_suffix:
        raise StructureParseError(path, "has a .gz suffix but is not gzip-compressed")
    if not data.strip():
        raise StructureParseError(path, "empty file")
    sample = data[:65536]
    if b"\x00" in sample or len(sample) - len(sample.translate(None, _CONTROL_BYTES)) > len(sample) // 100:
        raise StructureParseError(path, "binary data, not a text structure file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # old files with non-UTF-8 remarks; columns are ASCII anyway


def _is_predicted(text: str, fmt: str) -> bool:
    if fmt == "cif":
        return _PREDICTED_CIF_MARKER.search(text) is not None
    # header = everything before the first coordinate record
    m = _COORDINATE_RECORD.search(text)
    header = text[: m.start()] if m else text
    return _PREDICTED_PDB_MARKER.search(header) is not None


def read_structure_arrays(
    path: PathLike,
    chains: ChainSpec = None,
    *,
    plddt: Optional[bool] = None,
    parser: str = "auto",
) -> dict:
    """Like :func:`load_structure` but returns plain numpy arrays (no torch), e.g. for worker processes.

    Keys: ``name, sequence, pos [L,3] f32, backbone [L,4,3] f32, chain_id [L] i64, chain_names,
    residue_number [L] i64, insertion_code (str), plddt ([L] f32 or None), num_skipped_residues``.
    Turn the result into a :class:`Protein` with :func:`arrays_to_protein`.
    """
    if parser not in _PARSERS:
        raise ValueError(f"parser must be one of {_PARSERS}, got {parser!r}")
    if chains is not None and not isinstance(chains, str):
        chains = list(chains)
        if not chains or not all(isinstance(c, str) for c in chains):
            raise ValueError(f"chains must be None, a chain ID or a non-empty list of chain IDs, got {chains!r}")
    path = Path(path)
    spath = str(path)
    name = structure_name(path)
    _format_from_suffix(path)  # unsupported suffixes fail before the file is read
    text = _read_text(path)
    fmt = detect_format(path, text)
    if fmt == "pdb" and parser in ("auto", "fast"):
        from .pdb_fast import read_pdb_records

        records, chain_order = read_pdb_records(text, spath)
    else:
        if fmt == "cif" and parser == "fast":
            raise ValueError("parser='fast' reads PDB files only; use 'auto' or 'biopython' for mmCIF")
        if fmt == "cif" and "_atom_site." not in text:
            raise StructureParseError(path, "mmCIF file has no _atom_site category (no coordinates)")
        from ._biopython import read_biopython_records

        records, chain_order = read_biopython_records(text, fmt, spath, name)
    if not records and (fmt == "cif" or _COORDINATE_RECORD.search(text) is None):
        raise StructureParseError(path, "no ATOM/HETATM records in the first model")
    use_plddt = _is_predicted(text, fmt) if plddt is None else bool(plddt)
    return assemble(records, chain_order, path=spath, name=name, chains=chains, use_bfactor_as_plddt=use_plddt)


def arrays_to_protein(arrays: dict) -> Protein:
    """Builds a :class:`Protein` from the dict returned by :func:`read_structure_arrays`."""
    sequence = arrays["sequence"]
    plddt = arrays.get("plddt")
    return Protein(
        name=arrays["name"],
        sequence=sequence,
        residue_type=sequence_to_residue_type(sequence),
        pos=torch.from_numpy(np.ascontiguousarray(arrays["pos"], dtype=np.float32)),
        backbone=torch.from_numpy(np.ascontiguousarray(arrays["backbone"], dtype=np.float32)),
        chain_id=torch.from_numpy(np.ascontiguousarray(arrays["chain_id"], dtype=np.int64)),
        chain_names=list(arrays["chain_names"]),
        residue_number=torch.from_numpy(np.ascontiguousarray(arrays["residue_number"], dtype=np.int64)),
        insertion_code=arrays["insertion_code"],
        plddt=None if plddt is None else torch.from_numpy(np.ascontiguousarray(plddt, dtype=np.float32)),
        num_skipped_residues=int(arrays["num_skipped_residues"]),
    )


def load_structure(
    path: PathLike,
    chains: ChainSpec = None,
    *,
    plddt: Optional[bool] = None,
    parser: str = "auto",
) -> Protein:
    """Reads the first model of a PDB or mmCIF file (optionally ``.gz``) into a :class:`Protein`.

    Format: from the suffix (``.pdb``/``.ent`` -> PDB, ``.cif``/``.mmcif`` -> mmCIF, each optionally
    followed by ``.gz``); for other suffixes from the content. Gzip is recognised by its magic bytes.

    What is read:
        * the first model only (``MODEL``/``ENDMDL`` in PDB, the first ``pdbx_PDB_model_num`` in mmCIF);
        * amino-acid residues of ``ATOM`` and ``HETATM`` records: the 20 standard ones, modified residues
          mapped to their parent (``MSE`` -> ``M``, see :mod:`esmgear_fast.io.residues`), ``UNK`` and any
          other residue that has ``N``, ``CA`` and ``C`` atoms (as unknown ``X``); waters, ligands, ions
          and nucleotides are skipped;
        * residues keep the file order, grouped by chain in order of first appearance; residues with an
          insertion code are separate residues;
        * alternate locations: per backbone atom the highest occupancy wins, ties go to the first record
          in the file; for point mutations (two residue names at one position) the name whose CA has the
          highest occupancy wins, ties go to the first;
        * amino-acid residues without a CA atom are dropped and counted in ``num_skipped_residues``;
          missing ``N``, ``C`` or ``O`` atoms are NaN in ``backbone``.

    Args:
        path: the file.
        chains: author chain ID (``str``) or list of IDs to keep; ``None`` keeps every chain. Chains keep
            file order whatever the order given here. A chain that is absent or has no protein residue
            raises :class:`~esmgear_fast.io.ChainNotFoundError` listing the chains present.
        plddt: ``None`` (default) reads the CA B-factor column as pLDDT when the file is recognised as
            a predicted model: a PDB file whose header (the lines before the first ``ATOM``/``HETATM``)
            mentions ``ALPHAFOLD`` (case-insensitive), or an mmCIF file with a ``_ma_qa_metric`` category
            (ModelCIF quality metrics, as in AlphaFold DB files). ``True`` always reads B-factors as pLDDT
            (e.g. ColabFold/ESMFold PDB output without a header), ``False`` never.
        parser: ``"auto"`` (fast line reader for PDB, Biopython for mmCIF), ``"fast"`` (PDB only) or
            ``"biopython"`` (Biopython for both; slower, for cross-checking).

    Raises:
        StructureParseError: unreadable, empty, truncated, binary, malformed or protein-free files and
            unknown formats; the message starts with the path and names the problem.
    """
    return arrays_to_protein(read_structure_arrays(path, chains, plddt=plddt, parser=parser))
