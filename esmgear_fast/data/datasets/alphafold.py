"""AlphaFold DB proteome shards for pre-training: :class:`AlphaFoldDB` (cached, random access),
:class:`AlphaFoldDBStream` (an ``IterableDataset`` straight from the tar files) and :class:`FoldCompDB`.

AlphaFold DB publishes one tar file per proteome (e.g. ``UP000005640_9606_HUMAN_v4.tar``) holding gzipped
models named ``AF-<UniProt>-F<k>-model_v<N>.cif.gz`` and (in most versions) the same model as
``...pdb.gz``. The shards are read member by member with :mod:`tarfile`, never unpacked to disk; members
are parsed from memory with the package's own structure readers (the fast PDB reader for ``.pdb.gz``,
Biopython for ``.cif.gz``). pLDDT comes from the B-factor column (PDB files mentioning ALPHAFOLD in the
header) or the ModelCIF ``_ma_qa_metric`` category.

ESM-GearNet pre-trains on the 21 model-organism proteomes listed in :data:`MODEL_ORGANISMS` (TorchDrug's
``AlphaFoldDB`` species 0-20, in that order): its ``script/pretrain.py`` walks species 0..20 and, within each,
chunks of 22,000 models (sorted ``*.pdb.gz`` names), training ``save_interval`` epochs on one chunk before
moving to the next. :meth:`AlphaFoldDB.esm_gearnet_schedule` gives the same chunks for the shards present.

Corrupt members (truncated gzip, unparsable structure, no residue) are skipped, counted in
``dataset.skipped`` and listed in ``<cache>.failures.tsv``; a corrupt tar file raises an error naming it.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import sys
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset, IterableDataset

from ...io.errors import StructureParseError
from ...io.structure import arrays_to_protein
from ..cache import ProteinCache, write_cache
from ..download import missing_data_error

__all__ = [
    "AFDB_FTP",
    "AlphaFoldDB",
    "AlphaFoldDBStream",
    "ESM_GEARNET_SPLIT_LENGTH",
    "FoldCompDB",
    "MODEL_ORGANISMS",
    "Proteome",
    "parse_structure_bytes",
]

#: base of the AlphaFold DB download area (versioned folders ``v1``... and ``latest``)
AFDB_FTP = "https://ftp.ebi.ac.uk/pub/databases/alphafold"
#: models per chunk in ESM-GearNet's pre-training schedule (TorchDrug ``AlphaFoldDB.split_length``)
ESM_GEARNET_SPLIT_LENGTH = 22000
_CACHE_VERSION = 1
_MEMBER = re.compile(r"^(?:.*/)?(AF-.+-model_v\d+)\.(pdb|cif)(\.gz)?$")


@dataclass(frozen=True)
class Proteome:
    """One AlphaFold DB proteome shard: UniProt proteome ID, NCBI taxon ID, UniProt mnemonic, species."""

    index: int
    code: str
    proteome_id: str
    taxon_id: int
    species: str

    def archive(self, version: str = "v4") -> str:
        """The shard's file name, e.g. ``UP000005640_9606_HUMAN_v4.tar``."""
        return f"{self.proteome_id}_{self.taxon_id}_{self.code}_{version}.tar"

    def url(self, version: str = "v4") -> str:
        """Download URL in AlphaFold DB's versioned folder (``latest/`` holds the newest version)."""
        return f"{AFDB_FTP}/{version}/{self.archive(version)}"


#: The 21 model-organism proteomes of ESM-GearNet's pre-training, in its (TorchDrug's) species order.
MODEL_ORGANISMS: Tuple[Proteome, ...] = tuple(Proteome(i, *row) for i, row in enumerate([
    ("ARATH", "UP000006548", 3702, "Arabidopsis thaliana"),
    ("CAEEL", "UP000001940", 6239, "Caenorhabditis elegans"),
    ("CANAL", "UP000000559", 237561, "Candida albicans"),
    ("DANRE", "UP000000437", 7955, "Danio rerio"),
    ("DICDI", "UP000002195", 44689, "Dictyostelium discoideum"),
    ("DROME", "UP000000803", 7227, "Drosophila melanogaster"),
    ("ECOLI", "UP000000625", 83333, "Escherichia coli"),
    ("SOYBN", "UP000008827", 3847, "Glycine max"),
    ("HUMAN", "UP000005640", 9606, "Homo sapiens"),
    ("LEIIN", "UP000008153", 5671, "Leishmania infantum"),
    ("METJA", "UP000000805", 243232, "Methanocaldococcus jannaschii"),
    ("MOUSE", "UP000000589", 10090, "Mus musculus"),
    ("MYCTU", "UP000001584", 83332, "Mycobacterium tuberculosis"),
    ("ORYSJ", "UP000059680", 39947, "Oryza sativa"),
    ("PLAF7", "UP000001450", 36329, "Plasmodium falciparum"),
    ("RAT", "UP000002494", 10116, "Rattus norvegicus"),
    ("YEAST", "UP000002311", 559292, "Saccharomyces cerevisiae"),
    ("SCHPO", "UP000002485", 284812, "Schizosaccharomyces pombe"),
    ("STAA8", "UP000008816", 93061, "Staphylococcus aureus"),
    ("TRYCC", "UP000002296", 353153, "Trypanosoma cruzi"),
    ("MAIZE", "UP000007305", 4577, "Zea mays"),
]))
#: chunks per species in ESM-GearNet's run (AFDB v2 shards, TorchDrug ``species_nsplit[:21]``), for reference
ESM_GEARNET_V2_NUM_SPLITS = (2, 1, 1, 2, 1, 1, 1, 3, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2)


def _proteome(key: Union[int, str]) -> Proteome:
    if isinstance(key, int) and not isinstance(key, bool):
        if not 0 <= key < len(MODEL_ORGANISMS):
            raise ValueError(f"proteome index {key} out of range 0..{len(MODEL_ORGANISMS) - 1}")
        return MODEL_ORGANISMS[key]
    if isinstance(key, str):
        k = key.upper()
        for p in MODEL_ORGANISMS:
            if k in (p.code, p.proteome_id) or key.startswith(f"{p.proteome_id}_{p.taxon_id}_{p.code}"):
                return p
    raise ValueError(f"unknown proteome {key!r}; use an index 0-20 or one of "
                     f"{[p.code for p in MODEL_ORGANISMS]} (or a UniProt proteome ID)")


def _version_key(path: Path) -> int:
    m = re.search(r"_v(\d+)\.tar$", path.name)
    return int(m.group(1)) if m else -1


def _find_shard(folder: Path, p: Proteome) -> Optional[Path]:
    found = sorted(folder.glob(f"{p.proteome_id}_{p.taxon_id}_{p.code}_v*.tar"), key=_version_key)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------------------
# parsing one member from memory
# ----------------------------------------------------------------------------------------------------------

def parse_structure_bytes(data: bytes, member: str, where: Optional[str] = None, *,
                          plddt: Optional[bool] = None) -> dict:
    """Protein arrays (as :func:`esmgear_fast.io.read_structure_arrays`) from the bytes of a structure file.

    ``member`` is the file name (its suffix decides the format: ``.pdb[.gz]`` / ``.cif[.gz]``; gzip is
    recognised by its magic bytes); ``where`` names the data in errors (default ``member``). Raises
    :class:`~esmgear_fast.io.StructureParseError` for corrupt data.
    """
    from ...io import structure as _structure
    from ...io._assemble import assemble

    where = where or member
    name = _MEMBER.match(member).group(1) if _MEMBER.match(member) else Path(member).name.split(".")[0]
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except EOFError:
            raise StructureParseError(where, "gzip data is truncated (compressed stream ends early)") from None
        except (OSError, zlib.error) as exc:
            raise StructureParseError(where, f"corrupt gzip data: {exc}") from exc
    elif member.endswith(".gz"):
        raise StructureParseError(where, "has a .gz suffix but is not gzip-compressed")
    if not data.strip():
        raise StructureParseError(where, "empty file")
    if b"\x00" in data[:65536]:
        raise StructureParseError(where, "binary data, not a text structure file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    stem = member[:-3] if member.endswith(".gz") else member
    fmt = "cif" if stem.endswith((".cif", ".mmcif")) else "pdb" if stem.endswith((".pdb", ".ent")) else \
        _structure.detect_format(Path(stem), text)
    if fmt == "pdb":
        from ...io.pdb_fast import read_pdb_records

        records, chain_order = read_pdb_records(text, where)
    else:
        if "_atom_site." not in text:
            raise StructureParseError(where, "mmCIF file has no _atom_site category (no coordinates)")
        from ...io._biopython import read_biopython_records

        records, chain_order = read_biopython_records(text, fmt, where, name)
    if not records:
        raise StructureParseError(where, "no ATOM/HETATM records in the first model")
    use_plddt = _structure._is_predicted(text, fmt) if plddt is None else bool(plddt)
    return assemble(records, chain_order, path=where, name=name, use_bfactor_as_plddt=use_plddt)


def _parse_batch(batch: List[Tuple[str, bytes, str]]) -> List[Tuple[str, Optional[dict], Optional[str]]]:
    out = []
    for member, data, where in batch:
        try:
            arrays = parse_structure_bytes(data, member, where)
            if len(arrays["sequence"]) == 0:
                raise StructureParseError(where, "no amino-acid residue with a C-alpha atom")
            out.append((member, arrays, None))
        except (StructureParseError, ValueError) as exc:
            out.append((member, None, str(exc)))
    return out


# ----------------------------------------------------------------------------------------------------------
# tar shards
# ----------------------------------------------------------------------------------------------------------

def _open_tar(path: Path, stream: bool = False) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r|*" if stream else "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"{path}: not a readable tar file ({exc})") from exc


def _select_members(names: Sequence[str], fmt: str) -> List[str]:
    """The members to read, sorted by model name: one file per model (``auto``: PDB when both exist)."""
    by_model: Dict[str, Dict[str, str]] = {}
    for name in names:
        m = _MEMBER.match(name)
        if m:
            by_model.setdefault(m.group(1), {})[m.group(2)] = name
    chosen = []
    for model in sorted(by_model):
        files = by_model[model]
        if fmt == "auto":
            pick = files.get("pdb") or files.get("cif")
        else:
            pick = files.get(fmt)
        if pick is not None:
            chosen.append(pick)
    return chosen


def _check_format(fmt: str) -> str:
    if fmt not in ("auto", "pdb", "cif"):
        raise ValueError(f"format must be 'auto', 'pdb' or 'cif', got {fmt!r}")
    return fmt


def _resolve_shards(path: Path, proteomes, version_hint: str = "v4") -> List[Tuple[str, Path]]:
    """[(label, shard path)] for ``proteomes`` (None = every AF-style shard present in ``path``)."""
    layout = "UP000005640_9606_HUMAN_v4.tar   (one tar per proteome, as downloaded; not unpacked)\n..."
    if path.is_file():
        return [(path.name[:-4] if path.name.endswith(".tar") else path.name, path)]
    if not path.is_dir():
        urls = [p.url(version_hint) for p in (MODEL_ORGANISMS if proteomes is None else
                                               [_proteome(k) for k in _as_list(proteomes)])]
        raise missing_data_error("AlphaFold DB proteome shards", path, urls, layout)
    if proteomes is None:
        known, other = [], []
        for p in MODEL_ORGANISMS:
            shard = _find_shard(path, p)
            if shard is not None:
                known.append((p.code, shard))
        taken = {s for _, s in known}
        for shard in sorted(path.glob("*.tar")):
            if shard not in taken and re.match(r"^UP\d+_\d+_\w+_v\d+\.tar$", shard.name):
                other.append((shard.name[:-4], shard))
        if not known and not other:
            raise missing_data_error("AlphaFold DB proteome shards", path,
                                     [p.url(version_hint) for p in MODEL_ORGANISMS], layout)
        return known + other
    out = []
    for key in _as_list(proteomes):
        p = _proteome(key)
        shard = _find_shard(path, p)
        if shard is None:
            raise missing_data_error(f"AlphaFold DB proteome {p.code} ({p.species})", path / p.archive(version_hint),
                                     p.url(version_hint), p.archive(version_hint) + "   (any _v<N>.tar version)")
        out.append((p.code, shard))
    return out


def _as_list(proteomes) -> list:
    if isinstance(proteomes, (str, int)):
        return [proteomes]
    return list(proteomes)


def _subset_residues(protein, mask: torch.Tensor):
    from ...io.protein import Protein

    idx = mask.nonzero()[:, 0]
    keep = idx.tolist()
    return Protein(
        name=protein.name,
        sequence="".join(protein.sequence[i] for i in keep),
        residue_type=protein.residue_type[idx],
        pos=protein.pos[idx],
        backbone=protein.backbone[idx],
        chain_id=protein.chain_id[idx],
        chain_names=list(protein.chain_names),
        residue_number=protein.residue_number[idx],
        insertion_code="".join(protein.insertion_code[i] for i in keep),
        plddt=None if protein.plddt is None else protein.plddt[idx],
        num_skipped_residues=protein.num_skipped_residues,
    )


class _PlddtFilter:
    """pLDDT filters shared by the cached and the streaming dataset (both off by default)."""

    def __init__(self, min_plddt: Optional[float], min_mean_plddt: Optional[float]):
        self.min_plddt = None if min_plddt is None else float(min_plddt)
        self.min_mean_plddt = None if min_mean_plddt is None else float(min_mean_plddt)

    @property
    def active(self) -> bool:
        return self.min_plddt is not None or self.min_mean_plddt is not None

    def keep(self, plddt: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Residue mask to keep, or ``None`` to drop the protein (no pLDDT under an active filter,
        mean below ``min_mean_plddt``, or no residue at/above ``min_plddt``)."""
        if plddt is None or plddt.numel() == 0 or bool(torch.isnan(plddt).all()):
            return None
        if self.min_mean_plddt is not None and float(plddt.float().mean()) < self.min_mean_plddt:
            return None
        if self.min_plddt is None:
            return torch.ones(len(plddt), dtype=torch.bool)
        mask = plddt >= self.min_plddt
        return mask if bool(mask.any()) else None

    def apply(self, protein):
        if not self.active:
            return protein
        mask = self.keep(protein.plddt)
        if mask is None:
            return None
        return protein if bool(mask.all()) else _subset_residues(protein, mask)


class AlphaFoldDB(Dataset):
    """AlphaFold DB proteome shards parsed once into :class:`~esmgear_fast.data.ProteinCache` files.

    Items are ``{"protein": Protein}`` (unlabelled; ``protein.plddt`` set). ``len``, ``lengths``, ``names``
    and ``split()`` as every dataset (``split()`` returns ``(self, empty, empty)``: pre-training has no
    evaluation split).

    Args:
        path: a folder of proteome tar shards as downloaded (``UP000005640_9606_HUMAN_v4.tar`` ...), or one
            shard file. A missing path or proteome raises ``FileNotFoundError`` naming the download URLs.
        proteomes: ``None`` = every AlphaFold-style shard in ``path`` (the 21 model organisms first, in
            ESM-GearNet's order); or names (``"HUMAN"``, ``"UP000005640"``) / indices 0-20 of
            :data:`MODEL_ORGANISMS`, in the order given.
        format: ``"auto"`` (default: one file per model, the ``.pdb.gz`` when the shard has both, which is
            what ESM-GearNet reads; else ``.cif.gz``), ``"pdb"`` or ``"cif"`` (only that kind).
        min_plddt: drop residues with pLDDT below this (off by default).
        min_mean_plddt: drop proteins whose mean pLDDT is below this (off by default). With either filter
            on, proteins without pLDDT are dropped too; dropped proteins are counted in
            :attr:`num_filtered`. Filters act on the cache, so changing them needs no re-parse.
        cache_dir: where the caches go (default: ``<folder>/esmgear_fast_cache``); one
            ``<shard>.<format>.pt`` per shard, rebuilt when the shard's size or mtime changes.
        workers: processes that parse members (first use only).
        transform: called on every sample dict.
    """

    tasks: List[str] = []
    task_type = None  # unlabelled (pre-training)

    def __init__(self, path: Union[str, os.PathLike], proteomes=None, *, format: str = "auto",
                 min_plddt: Optional[float] = None, min_mean_plddt: Optional[float] = None,
                 cache_dir: Optional[Union[str, os.PathLike]] = None, workers: int = 1,
                 rebuild: bool = False, verbose: bool = True, transform: Optional[Callable[[dict], dict]] = None):
        self.transform = transform
        self.path = Path(os.path.expanduser(os.fspath(path)))
        self.format = _check_format(format)
        self.verbose = verbose
        self.filter = _PlddtFilter(min_plddt, min_mean_plddt)
        shards = _resolve_shards(self.path, proteomes)
        folder = self.path if self.path.is_dir() else self.path.parent
        self.cache_dir = Path(cache_dir) if cache_dir is not None else folder / "esmgear_fast_cache"
        self.shards: List[Path] = [s for _, s in shards]
        self.proteome_names: List[str] = [label for label, _ in shards]
        self.caches: List[ProteinCache] = []
        self.skipped: List[Tuple[str, str, str]] = []  # (shard, member, reason)
        for _, shard in shards:
            cache, failures = self._prepare(shard, workers, rebuild)
            self.caches.append(cache)
            self.skipped.extend((shard.name, m, r) for m, r in failures)
        items, lengths, residue_masks, filtered = [], [], {}, 0
        for s, cache in enumerate(self.caches):
            cache_lengths = cache.lengths.tolist()
            if not self.filter.active:
                items.extend((s, k) for k in range(len(cache)))
                lengths.extend(cache_lengths)
                continue
            data = cache._data
            plddt_all = data["plddt"]
            ptr = cache._ptr
            for k in range(len(cache)):
                plddt = plddt_all[ptr[k]:ptr[k + 1]] if (plddt_all is not None and cache._has_plddt[k]) else None
                mask = self.filter.keep(plddt)
                if mask is None:
                    filtered += 1
                    continue
                items.append((s, k))
                lengths.append(int(mask.sum()))
        self._items = items
        self._lengths = lengths
        self.num_filtered = filtered

    # -- preparation
    def _cache_path(self, shard: Path) -> Path:
        return self.cache_dir / f"{shard.name[:-4] if shard.name.endswith('.tar') else shard.name}.{self.format}.pt"

    def _prepare(self, shard: Path, workers: int, rebuild: bool) -> Tuple[ProteinCache, List[Tuple[str, str]]]:
        cache_path = self._cache_path(shard)
        meta_path = cache_path.with_name(cache_path.name[:-3] + ".meta.pt")
        st = shard.stat()
        stamp = [int(st.st_size), int(st.st_mtime_ns)]
        if not rebuild and cache_path.is_file() and meta_path.is_file():
            meta = torch.load(meta_path, map_location="cpu", weights_only=True)
            if meta.get("version") == _CACHE_VERSION and meta.get("stamp") == stamp:
                return ProteinCache(cache_path), [tuple(f) for f in meta["failures"]]
            if self.verbose:
                print(f"[alphafold] {shard} changed since its cache was built; parsing again", file=sys.stderr,
                      flush=True)
        tar = _open_tar(shard)
        try:
            names = [m.name for m in tar.getmembers() if m.isfile()]
            selected = _select_members(names, self.format)
            wanted = set(selected)
            if self.verbose:
                print(f"[alphafold] parsing {len(selected)} models of {shard} into {cache_path}", file=sys.stderr,
                      flush=True)
            results: Dict[str, Tuple[Optional[dict], Optional[str]]] = {}
            batches, batch, size = [], [], 0
            for member in tar.getmembers():
                if member.name not in wanted:
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                batch.append((member.name, data, f"{shard}:{member.name}"))
                size += len(data)
                if len(batch) >= 64 or size > (64 << 20):
                    batches.append(batch)
                    batch, size = [], 0
            if batch:
                batches.append(batch)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"{shard}: corrupt tar file ({type(exc).__name__}: {exc})") from exc
        finally:
            tar.close()
        if workers > 1 and len(batches) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for out in pool.map(_parse_batch, batches):
                    results.update({m: (a, e) for m, a, e in out})
        else:
            for b in batches:
                results.update({m: (a, e) for m, a, e in _parse_batch(b)})
        entries, sources, failures = [], [], []
        for member in selected:
            arrays, error = results[member]
            if arrays is None:
                failures.append((member, error))
            else:
                entries.append(arrays)
                sources.append(f"{shard.name}:{member}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_cache(entries, cache_path, sources=sources)
        tsv = cache_path.with_name(cache_path.name[:-3] + ".failures.tsv")
        if failures:
            tmp = tsv.with_name(tsv.name + f".tmp{os.getpid()}")
            with open(tmp, "w") as handle:
                for member, error in failures:
                    handle.write(f"{shard}\t{member}\t{error.replace(chr(9), ' ').replace(chr(10), ' ')}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, tsv)
            if self.verbose:
                print(f"[alphafold] skipped {len(failures)} corrupt members of {shard}; listed in {tsv}",
                      file=sys.stderr, flush=True)
        elif tsv.exists():
            tsv.unlink()
        meta = {"version": _CACHE_VERSION, "stamp": stamp, "failures": [list(f) for f in failures]}
        tmp = meta_path.with_name(meta_path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as handle:
            torch.save(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, meta_path)
        return ProteinCache(cache_path), failures

    # -- dataset interface
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for AlphaFoldDB of {len(self)} proteins")
        s, k = self._items[index]
        sample = {"protein": self.filter.apply(self.caches[s][k])}
        return self.transform(sample) if self.transform is not None else sample

    @property
    def lengths(self) -> List[int]:
        """Residues per item (after the per-residue pLDDT filter)."""
        return list(self._lengths)

    @property
    def names(self) -> List[str]:
        return [self.caches[s].names[k] for s, k in self._items]

    @property
    def proteome_of_item(self) -> List[str]:
        return [self.proteome_names[s] for s, _ in self._items]

    def subset(self, indices: Sequence[int]) -> "AlphaFoldDB":
        import copy

        view = copy.copy(self)
        view._items = [self._items[int(i)] for i in indices]
        view._lengths = [self._lengths[int(i)] for i in indices]
        return view

    def split(self):
        """``(self, empty, empty)``: all models are pre-training data."""
        return self, self.subset([]), self.subset([])

    def esm_gearnet_schedule(self, split_length: int = ESM_GEARNET_SPLIT_LENGTH) -> List[Tuple[str, int, "AlphaFoldDB"]]:
        """ESM-GearNet's round-robin pre-training chunks: ``[(proteome, chunk id, subset)]`` in order.

        Per proteome (in this dataset's order), the models sorted by name, cut into consecutive chunks of
        ``split_length``; ESM-GearNet trains ``save_interval`` epochs on each chunk in turn, then saves.
        (Its chunks were cut before pLDDT filtering, which it did not use; with a filter on, the chunks
        are cut from the proteins that remain.)
        """
        out = []
        for s, name in enumerate(self.proteome_names):
            members = [i for i, (shard, _) in enumerate(self._items) if shard == s]
            for c in range(math.ceil(len(members) / split_length)):
                out.append((name, c, self.subset(members[c * split_length:(c + 1) * split_length])))
        return out

    def __repr__(self) -> str:
        return (f"AlphaFoldDB({str(self.path)!r}, proteomes={self.proteome_names}, proteins={len(self)}, "
                f"skipped={len(self.skipped)}, filtered={self.num_filtered})")


class AlphaFoldDBStream(IterableDataset):
    """Streams ``{"protein": Protein}`` straight from proteome tar shards, member by member, no cache.

    Same ``path`` / ``proteomes`` / ``format`` / pLDDT filter arguments as :class:`AlphaFoldDB`. Members are
    read in tar order (shards in the given order); with ``format="auto"`` a model stored as both PDB and
    mmCIF is yielded once (the first of the two in the tar). Work is divided among DataLoader workers and
    DDP ranks (``rank`` / ``world_size``) by member position, so each model goes to exactly one of them.
    Corrupt members are skipped; :attr:`skipped` lists them (per process).
    """

    def __init__(self, path: Union[str, os.PathLike], proteomes=None, *, format: str = "auto",
                 min_plddt: Optional[float] = None, min_mean_plddt: Optional[float] = None,
                 rank: int = 0, world_size: int = 1, transform: Optional[Callable[[dict], dict]] = None):
        self.transform = transform
        self.path = Path(os.path.expanduser(os.fspath(path)))
        self.format = _check_format(format)
        self.filter = _PlddtFilter(min_plddt, min_mean_plddt)
        self.shards = [s for _, s in _resolve_shards(self.path, proteomes)]
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in 0..world_size-1 (world_size={world_size})")
        self.rank, self.world_size = int(rank), int(world_size)
        self.skipped: List[Tuple[str, str, str]] = []
        self.num_filtered = 0

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        parts, part = self.world_size * workers, self.rank * workers + worker
        position = 0
        for shard in self.shards:
            seen = set()
            tar = _open_tar(shard, stream=True)
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    m = _MEMBER.match(member.name)
                    if not m or (self.format != "auto" and m.group(2) != self.format) or m.group(1) in seen:
                        continue
                    seen.add(m.group(1))
                    mine = position % parts == part
                    position += 1
                    if not mine:
                        continue
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    (_, arrays, error), = _parse_batch([(member.name, data, f"{shard}:{member.name}")])
                    if arrays is None:
                        self.skipped.append((shard.name, member.name, error))
                        continue
                    protein = self.filter.apply(arrays_to_protein(arrays))
                    if protein is None:
                        self.num_filtered += 1
                        continue
                    sample = {"protein": protein}
                    yield self.transform(sample) if self.transform is not None else sample
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise ValueError(f"{shard}: corrupt tar file ({type(exc).__name__}: {exc})") from exc
            finally:
                tar.close()


class FoldCompDB(Dataset):
    """A FoldComp database (e.g. ``afdb_swissprot_v4``) as ``{"protein": Protein}`` items (needs ``foldcomp``).

    ``path`` is the database file prefix as given to ``foldcomp.open`` (its ``.index`` and ``.lookup``
    beside it; ``foldcomp.setup(name)`` downloads one). Structures are decompressed to PDB text by FoldComp
    and parsed by the fast PDB reader, with pLDDT from the B-factor column. Without ``foldcomp`` installed
    the constructor raises ``ImportError`` saying so.
    """

    tasks: List[str] = []
    task_type = None  # unlabelled (pre-training)

    def __init__(self, path: Union[str, os.PathLike]):
        try:
            import foldcomp  # noqa: F401
        except ImportError:
            raise ImportError("FoldCompDB needs the optional 'foldcomp' package (pip install foldcomp); "
                              "without it, use AlphaFoldDB on the proteome tar shards") from None
        self.path = Path(os.path.expanduser(os.fspath(path)))
        if not self.path.exists():
            raise missing_data_error("FoldComp database", self.path,
                                     "foldcomp.setup('<database name>') (FoldComp's own download helper)",
                                     f"{self.path.name}\n{self.path.name}.index\n{self.path.name}.lookup")
        self._db = None
        self._len = len(self._open())

    def _open(self):
        if self._db is None:
            import foldcomp

            self._db = foldcomp.open(str(self.path))
        return self._db

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_db"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        name, pdb = self._open()[int(index)]
        data = pdb.encode() if isinstance(pdb, str) else pdb
        arrays = parse_structure_bytes(data, f"{name}.pdb", f"{self.path}[{index}] {name}", plddt=True)
        return {"protein": arrays_to_protein(arrays)}

    def split(self):
        return self, torch.utils.data.Subset(self, []), torch.utils.data.Subset(self, [])
