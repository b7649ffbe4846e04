"""Atom3D protein structure ranking (:class:`PSR`) and mutation stability prediction (:class:`MSP`).

Both read the LMDB files that Atom3D publishes on Zenodo with the ``lmdb`` package directly (no ``atom3d``,
no pandas), parse every entry once into our :class:`~esmgear_fast.data.ProteinCache` (one file per split,
next to the data) and serve proteins from that cache afterwards.

Atom3D's LMDB layout (as written by ``atom3d.datasets.make_lmdb_dataset``):

* metadata keys ``b"num_examples"`` (decimal string), ``b"serialization_format"`` (``"json"`` for the
  released PSR/MSP data; ``"msgpack"`` is read when the optional ``msgpack`` package is installed, ``"pkl"``
  is refused: unpickling runs arbitrary code) and ``b"id_to_idx"`` (serialized ``{id: index}``);
* entries under the keys ``b"0" ... b"<num_examples-1>"`` in dataset order, each a gzip-compressed
  serialized dict. Atom tables (keys starting or ending with ``atoms``) are pandas frames stored as
  ``DataFrame.to_json(orient="split", double_precision=6)``, i.e. ``{"columns": [...], "index": [...],
  "data": [[row], ...]}`` with the columns ``ensemble, subunit, structure, model, chain, hetero,
  insertion_code, residue, segid, resname, altloc, occupancy, bfactor, x, y, z, element, name, fullname,
  serial_number`` (Atom3D's ``bp_to_df``).

PSR entries hold ``atoms`` (one decoy model), ``id`` (``"('<target>', '<decoy>')"``) and ``scores``
(``{"gdt_ts": ..., ...}``); the label is ``scores["gdt_ts"]`` (T=1 regression). MSP entries hold
``original_atoms`` / ``mutated_atoms`` (the complex before and after one point mutation), ``id``
(``"<pdb>_<chains>_<chains>_<mutation>"``, mutation like ``"LA19A"``: wild-type letter, chain, residue
number [+ insertion code], mutant letter) and ``label`` (``"1"`` = the mutation stabilises the
interaction); the target is ``label == "1"`` (binary).

Residues: one node per amino-acid residue with a C-alpha atom, following the package-wide residue rules of
:mod:`esmgear_fast.io` (the same code path as the PDB/mmCIF readers): hydrogens ignored; only the first
model of an entry; waters, ions and ligands skipped; modified residues mapped to their parent; all chains
kept in order of first appearance (``chain_id`` numbers them); backbone N/CA/C/O stored (NaN if absent).
``residue_rules="esm_gearnet"`` reproduces ESM-GearNet's TorchDrug conversion instead.
Every LMDB entry becomes one sample, so sample counts and labels equal ESM-GearNet's ``PSRDataset`` /
``MSPDataset`` (PSR split-by-year 25,400 / 2,800 / 16,014). Differences of the default rules to ESM-GearNet's
TorchDrug conversion (use ``residue_rules="esm_gearnet"`` for the latter): modified residues map to their
parent and other unknown residues are ``X`` (20) where ESM-GearNet makes every non-standard residue a
glycine; non-amino-acid groups that have an atom named CA (with a carbon element) are not residues; a
residue is keyed by chain as well as number/insertion code/name; only the first model is read.

Corrupt entries (undecodable, missing keys or columns, no residue, a non-numeric label) raise a
:class:`ValueError` naming the LMDB folder and entry by default; ``on_error="skip"`` skips them instead,
counts them (``dataset.skipped``) and lists them in ``<cache>.failures.tsv``.

Expected layout (``path`` may also be the folder that contains the archive's top folder, as ESM-GearNet
uses it: ``<path>/PSR-split-by-year/split-by-year/...``)::

    <path>/split-by-year/data/{train,val,test}/data.mdb                  # PSR, Zenodo record 4915648
    <path>/split-by-sequence-identity-30/data/{train,val,test}/data.mdb  # MSP, Zenodo record 4962515
"""
from __future__ import annotations

import copy
import gzip
import io
import json
import math
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ...io._assemble import BACKBONE_SLOT, ResidueRecord, assemble, normalize_icode
from ...io.errors import StructureParseError
from ..cache import ProteinCache, write_cache
from ..download import missing_data_error

__all__ = [
    "Atom3DLMDB",
    "MSP",
    "PSR",
    "RESIDUE_RULES",
    "atom_table_to_arrays",
    "atom_table_to_arrays_esm_gearnet",
    "write_atom3d_lmdb",
]

SPLITS = ("train", "val", "test")
#: bumped when the parsed cache content changes
_CACHE_VERSION = 1
_HYDROGEN = frozenset({"H", "D"})
_REQUIRED_COLUMNS = ("chain", "residue", "insertion_code", "resname", "name", "x", "y", "z")
_MUTATION = re.compile(r"^([A-Z])(.)(-?\d+)([A-Za-z]?)([A-Z])$")


# ----------------------------------------------------------------------------------------------------------
# Atom3D LMDB: reading and writing the serialized entries
# ----------------------------------------------------------------------------------------------------------

def _deserialize(data: bytes, fmt: str, where: str):
    if fmt == "json":
        return json.loads(data)
    if fmt == "msgpack":
        try:
            import msgpack
        except ImportError:
            raise ImportError(f"{where}: entries are serialized with msgpack; install the 'msgpack' package "
                              f"to read them (pip install msgpack)") from None
        return msgpack.unpackb(data)
    if fmt == "pkl":
        raise ValueError(f"{where}: entries are pickled (serialization_format 'pkl'); unpickling runs arbitrary "
                         f"code and needs pandas, so it is not supported - convert the LMDB to 'json'")
    raise ValueError(f"{where}: unknown serialization_format {fmt!r} (expected 'json' or 'msgpack')")


def _serialize(obj, fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(obj).encode()
    if fmt == "msgpack":
        import msgpack
        return msgpack.packb(obj)
    raise ValueError(f"serialization_format must be 'json' or 'msgpack', got {fmt!r}")


_ENVS: Dict[tuple, Any] = {}


class Atom3DLMDB:
    """Read-only access to one Atom3D LMDB folder (``data.mdb``): ``len``, ``[i]`` -> decoded entry dict.

    Atom tables stay in their serialized ``{"columns", "index", "data"}`` form (see :func:`atom_table_to_arrays`).
    Opened lazily per process (safe with DataLoader workers and process pools).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise FileNotFoundError(f"{self.path}: not an LMDB folder (no data.mdb)")
        env = self._open()
        try:
            with env.begin(write=False) as txn:
                raw_n, raw_fmt, raw_ids = txn.get(b"num_examples"), txn.get(b"serialization_format"), \
                    txn.get(b"id_to_idx")
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot read the LMDB metadata ({type(exc).__name__}: {exc})") from exc
        if raw_n is None or raw_fmt is None:
            raise ValueError(f"{self.path}: not an Atom3D LMDB (metadata keys num_examples / "
                             f"serialization_format missing)")
        try:
            self.num_examples = int(raw_n)
        except ValueError:
            raise ValueError(f"{self.path}: num_examples is not an integer: {raw_n[:40]!r}") from None
        self.serialization_format = raw_fmt.decode()
        self.id_to_idx: Dict[str, int] = (
            {} if raw_ids is None else _deserialize(raw_ids, self.serialization_format, f"{self.path} id_to_idx"))

    def _open(self):
        # LMDB allows one open environment per folder and process: instances share it through _ENVS
        key = (os.getpid(), str(self.path.resolve()))
        env = _ENVS.get(key)
        if env is None:
            import lmdb

            try:
                env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False,
                                meminit=False, max_readers=126, subdir=True)
            except lmdb.Error as exc:
                raise ValueError(f"{self.path}: cannot open LMDB ({exc})") from exc
            _ENVS[key] = env
        return env

    def __getstate__(self):
        return {"path": self.path, "num_examples": self.num_examples,
                "serialization_format": self.serialization_format, "id_to_idx": self.id_to_idx}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __len__(self) -> int:
        return self.num_examples

    def raw(self, index: int) -> bytes:
        """The stored (gzip-compressed) bytes of entry ``index``."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"{self.path}: entry {index} out of range (num_examples={self.num_examples})")
        with self._open().begin(write=False) as txn:
            data = txn.get(str(index).encode())
        if data is None:
            raise ValueError(f"{self.path}: entry {index} is missing (num_examples={self.num_examples})")
        return data

    def __getitem__(self, index: int) -> dict:
        where = f"{self.path} entry {index}"
        data = self.raw(index)
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{where}: not gzip-compressed data ({exc})") from exc
        try:
            item = _deserialize(data, self.serialization_format, where)
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(where):
                raise
            raise ValueError(f"{where}: cannot decode the {self.serialization_format} entry ({exc})") from exc
        if not isinstance(item, dict):
            raise ValueError(f"{where}: entry is a {type(item).__name__}, expected a dict")
        return item

    def close(self) -> None:
        """Closes the process-wide environment of this folder (any reader reopens it on next use)."""
        _release_env(self.path)


def _release_env(path: Path) -> None:
    env = _ENVS.pop((os.getpid(), str(Path(path).resolve())), None)
    if env is not None:
        env.close()


def write_atom3d_lmdb(entries: Iterable[dict], path: Union[str, os.PathLike],
                      serialization_format: str = "json", map_size: int = 1 << 30) -> Path:
    """Writes ``entries`` (dicts with an ``"id"``) as an Atom3D LMDB folder, in Atom3D's exact entry format.

    Entry ``i`` goes under key ``str(i)`` as gzip (level 6) of the serialized dict; atom tables must already
    be ``{"columns", "index", "data"}`` dicts (pandas ``orient="split"``). Metadata ``num_examples``,
    ``serialization_format`` and ``id_to_idx`` are written as Atom3D does. Used to build test fixtures and to
    write your own data in the format :class:`PSR` / :class:`MSP` read. The folder must not exist yet; no
    ``lock.mdb`` is left behind.
    """
    import lmdb

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; write_atom3d_lmdb creates a new LMDB folder")
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=map_size, lock=False, subdir=True)
    try:
        with env.begin(write=True) as txn:
            id_to_idx = {}
            n = 0
            for entry in entries:
                if "id" not in entry:
                    raise ValueError(f"entry {n} has no 'id'")
                buf = io.BytesIO()
                with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as handle:
                    handle.write(_serialize(entry, serialization_format))
                if not txn.put(str(n).encode(), buf.getvalue(), overwrite=False):
                    raise RuntimeError(f"{path}: entry {n} already exists")
                id_to_idx[str(entry["id"])] = n
                n += 1
            txn.put(b"num_examples", str(n).encode())
            txn.put(b"serialization_format", serialization_format.encode())
            txn.put(b"id_to_idx", _serialize(id_to_idx, serialization_format))
        env.sync(True)
    finally:
        env.close()
    return path


# ----------------------------------------------------------------------------------------------------------
# atom table -> protein arrays
# ----------------------------------------------------------------------------------------------------------

def _float(value, default: float) -> float:
    if value is None:
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(out) else out


def atom_table_to_arrays(table: dict, name: str, where: str) -> dict:
    """One Atom3D atom table (``{"columns", "data"}``) -> protein arrays (as :func:`esmgear_fast.io.read_structure_arrays`).

    Keeps the first model, ignores hydrogens (element ``H``/``D``), reads the backbone atoms N/CA/C/O and
    applies the package-wide residue rules (:func:`esmgear_fast.io._assemble.assemble`). ``where`` names the
    entry in error messages.
    """
    if not isinstance(table, dict) or "columns" not in table or "data" not in table:
        raise ValueError(f"{where}: atom table is not a {{'columns', 'index', 'data'}} dict")
    columns = list(table["columns"])
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{where}: atom table lacks the columns {missing} (has {columns})")
    col = {c: i for i, c in enumerate(columns)}
    i_chain, i_res, i_icode, i_name, i_atom = (col["chain"], col["residue"], col["insertion_code"],
                                               col["resname"], col["name"])
    i_x, i_y, i_z = col["x"], col["y"], col["z"]
    i_el, i_model = col.get("element"), col.get("model")
    i_occ, i_bf = col.get("occupancy"), col.get("bfactor")
    rows = table["data"]
    if not rows:
        raise ValueError(f"{where}: atom table is empty")
    first_model = rows[0][i_model] if i_model is not None else None
    records: Dict[tuple, ResidueRecord] = {}
    order: List[ResidueRecord] = []
    chain_order: Dict[str, int] = {}
    try:
        for row in rows:
            if i_model is not None and row[i_model] != first_model:
                continue
            if i_el is not None and str(row[i_el]).strip().upper() in _HYDROGEN:
                continue
            chain = str(row[i_chain]).strip()
            resname = str(row[i_name]).strip()
            key = (chain, row[i_res], row[i_icode], resname)
            rec = records.get(key)
            if rec is None:
                rec = ResidueRecord(chain, int(row[i_res]), normalize_icode(str(row[i_icode])), resname)
                records[key] = rec
                order.append(rec)
                if chain not in chain_order:
                    chain_order[chain] = len(chain_order)
            slot = BACKBONE_SLOT.get(str(row[i_atom]).strip())
            if slot is not None:
                x, y, z = float(row[i_x]), float(row[i_y]), float(row[i_z])
                occupancy = 1.0 if i_occ is None else _float(row[i_occ], 1.0)
                bfactor = 0.0 if i_bf is None else _float(row[i_bf], 0.0)
                rec.add_atom(slot, occupancy, x, y, z, bfactor)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{where}: malformed atom row ({type(exc).__name__}: {exc})") from exc
    try:
        arrays = assemble(order, list(chain_order), path=where, name=name)
    except StructureParseError as exc:
        raise ValueError(f"{where}: {exc.problem}") from exc
    if len(arrays["sequence"]) == 0:
        raise ValueError(f"{where}: no amino-acid residue with a C-alpha atom")
    return arrays


#: TorchDrug's atom vocabulary minus hydrogen (index 0, removed by ESM-GearNet's ``atom_type != 0`` subgraph);
#: matched case-sensitively against Atom3D's ``element`` column, as TorchDrug does
_TORCHDRUG_HEAVY_ELEMENTS = frozenset({"B", "C", "N", "O", "F", "Mg", "Si", "P", "S", "Cl", "Cu", "Zn", "Se", "Br",
                                       "Sn", "I"})
_STANDARD = {name: symbol for name, symbol in zip(
    ("GLY", "ALA", "SER", "PRO", "VAL", "THR", "CYS", "ILE", "LEU", "ASN", "ASP", "GLN", "LYS", "GLU", "MET", "HIS",
     "PHE", "ARG", "TYR", "TRP"), "GASPVTCILNDQKEMHFRYW")}
RESIDUE_RULES = ("package", "esm_gearnet")


def atom_table_to_arrays_esm_gearnet(table: dict, name: str, where: str) -> dict:
    """Like :func:`atom_table_to_arrays` but with ESM-GearNet's own conversion (``residue_rules="esm_gearnet"``).

    ESM-GearNet (``Atom3DDataset.protein_from_data_frame`` + ``atom_type != 0`` subgraph + TorchDrug's
    ``AlphaCarbonNode``) starts a new residue whenever (residue number, insertion code, residue name) changes
    from the previous row (every model, chain not part of the key), names every non-standard residue
    glycine, drops atoms whose ``element`` is not in TorchDrug's atom vocabulary (hydrogen, and e.g. ``SE``,
    ``CA`` calcium, ``ZN`` in Atom3D's upper case) and keeps the residues that have an atom named ``CA``
    left. Nodes are those residues, with the first such CA as position; N/C/O are taken from the same
    residue when present (NaN otherwise).
    """
    if not isinstance(table, dict) or "columns" not in table or "data" not in table:
        raise ValueError(f"{where}: atom table is not a {{'columns', 'index', 'data'}} dict")
    columns = list(table["columns"])
    missing = [c for c in _REQUIRED_COLUMNS + ("element",) if c not in columns]
    if missing:
        raise ValueError(f"{where}: atom table lacks the columns {missing} (has {columns})")
    col = {c: i for i, c in enumerate(columns)}
    i_chain, i_res, i_icode, i_name, i_atom, i_el = (col["chain"], col["residue"], col["insertion_code"],
                                                     col["resname"], col["name"], col["element"])
    i_x, i_y, i_z = col["x"], col["y"], col["z"]
    rows = table["data"]
    if not rows:
        raise ValueError(f"{where}: atom table is empty")
    residues = []  # [chain, number, icode, symbol, {atom name: xyz}]
    last = None
    try:
        for row in rows:
            key = (row[i_res], row[i_icode], row[i_name])
            if key != last:
                last = key
                residues.append([str(row[i_chain]).strip(), int(row[i_res]), normalize_icode(str(row[i_icode])),
                                 _STANDARD.get(str(row[i_name]).strip(), "G"), {}])
            if row[i_el] not in _TORCHDRUG_HEAVY_ELEMENTS:
                continue
            atom = str(row[i_atom]).strip()
            if atom in BACKBONE_SLOT and atom not in residues[-1][4]:
                residues[-1][4][atom] = (float(row[i_x]), float(row[i_y]), float(row[i_z]))
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{where}: malformed atom row ({type(exc).__name__}: {exc})") from exc
    kept = [r for r in residues if "CA" in r[4]]
    if not kept:
        raise ValueError(f"{where}: no residue with a C-alpha atom")
    chain_names = list(dict.fromkeys(r[0] for r in kept))
    chain_index = {c: i for i, c in enumerate(chain_names)}
    nan = (math.nan, math.nan, math.nan)
    backbone = [[r[4].get(a, nan) for a in ("N", "CA", "C", "O")] for r in kept]
    backbone = np.asarray(backbone, dtype=np.float32).reshape(-1, 4, 3)
    return {
        "name": name,
        "sequence": "".join(r[3] for r in kept),
        "pos": backbone[:, 1].copy(),
        "backbone": backbone,
        "chain_id": np.asarray([chain_index[r[0]] for r in kept], dtype=np.int64),
        "chain_names": chain_names,
        "residue_number": np.asarray([r[1] for r in kept], dtype=np.int64),
        "insertion_code": "".join(r[2] for r in kept),
        "plddt": None,
        "num_skipped_residues": len(residues) - len(kept),
    }


_TABLE_READERS = {"package": atom_table_to_arrays, "esm_gearnet": atom_table_to_arrays_esm_gearnet}


def _psr_gdt_ts(scores, where: str) -> float:
    if isinstance(scores, dict) and "gdt_ts" in scores:
        value = scores["gdt_ts"]
    elif isinstance(scores, dict) and "index" in scores and "data" in scores and "gdt_ts" in scores["index"]:
        value = scores["data"][list(scores["index"]).index("gdt_ts")]  # a pandas Series in orient="split"
    else:
        raise ValueError(f"{where}: no gdt_ts in 'scores' ({type(scores).__name__}"
                         f"{': keys ' + str(sorted(scores)) if isinstance(scores, dict) else ''})")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: gdt_ts is not a number: {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: gdt_ts is {value}")
    return value


def _msp_label(label, where: str) -> float:
    if label in ("1", 1, True):
        return 1.0
    if label in ("0", 0, False):
        return 0.0
    raise ValueError(f"{where}: label must be '0' or '1', got {label!r}")


def _mutation_site(mutation: str, arrays: dict) -> int:
    """Index of the mutated residue in the wild type, -1 when the mutation string cannot be located."""
    m = _MUTATION.match(mutation)
    if not m:
        return -1
    wt, chain, number, icode, _ = m.groups()
    icode = icode or " "
    chain_ids = {c: i for i, c in enumerate(arrays["chain_names"])}
    if chain not in chain_ids:
        return -1
    cid = chain_ids[chain]
    for k in range(len(arrays["sequence"])):
        if (int(arrays["chain_id"][k]) == cid and int(arrays["residue_number"][k]) == int(number)
                and arrays["insertion_code"][k] == icode):
            return k if arrays["sequence"][k] == wt else -1
    return -1


def _parse_psr(item: dict, index: int, where: str, rules: str = "package") -> dict:
    for key in ("atoms", "scores"):
        if key not in item:
            raise ValueError(f"{where}: PSR entry has no {key!r} (keys {sorted(item)})")
    ident = str(item.get("id", index))
    return {"id": ident, "arrays": [_TABLE_READERS[rules](item["atoms"], ident, where)],
            "target": _psr_gdt_ts(item["scores"], where)}


def _parse_msp(item: dict, index: int, where: str, rules: str = "package") -> dict:
    for key in ("original_atoms", "mutated_atoms", "label"):
        if key not in item:
            raise ValueError(f"{where}: MSP entry has no {key!r} (keys {sorted(item)})")
    ident = str(item.get("id", index))
    wild = _TABLE_READERS[rules](item["original_atoms"], ident, where + " original_atoms")
    # Atom3D's mutants are modelled structures; like ESM-GearNet, no equal residue count is required here
    mutant = _TABLE_READERS[rules](item["mutated_atoms"], ident + "_mutant", where + " mutated_atoms")
    mutation = ident.rsplit("_", 1)[-1]
    return {"id": ident, "arrays": [wild, mutant], "target": _msp_label(item["label"], where),
            "mutation": mutation, "site": _mutation_site(mutation, wild)}


_PARSERS: Dict[str, Callable[..., dict]] = {"psr": _parse_psr, "msp": _parse_msp}


def _parse_range(args) -> List[Tuple[int, Optional[dict], Optional[str]]]:
    lmdb_dir, kind, start, end, on_error, rules = args
    db = Atom3DLMDB(lmdb_dir)
    parse = _PARSERS[kind]
    out = []
    for index in range(start, end):
        where = f"{lmdb_dir} entry {index}"
        try:
            out.append((index, parse(db[index], index, where, rules), None))
        except (ValueError, KeyError, TypeError) as exc:
            if on_error == "raise":
                raise ValueError(str(exc) if str(exc).startswith(str(lmdb_dir)) else f"{where}: {exc}") from exc
            out.append((index, None, str(exc)))
    db.close()
    return out


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _stamp(lmdb_dir: Path) -> List[int]:
    st = (lmdb_dir / "data.mdb").stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


# ----------------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------------

class _Atom3DDataset(torch.utils.data.Dataset):
    kind = ""
    what = ""
    dir_name = ""            # top folder of the archive (ESM-GearNet keeps it)
    split_root = ""
    url = ""
    num_proteins = 1
    tasks: List[str] = []
    task_type = ""

    def __init__(self, path: Union[str, os.PathLike], *, cache_dir: Optional[Union[str, os.PathLike]] = None,
                 workers: int = 1, on_error: str = "raise", rebuild: bool = False, verbose: bool = True,
                 transform: Optional[Callable[[dict], dict]] = None, residue_rules: str = "package"):
        if residue_rules not in RESIDUE_RULES:
            raise ValueError(f"residue_rules must be one of {RESIDUE_RULES}, got {residue_rules!r}")
        self.residue_rules = residue_rules
        self.transform = transform
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = Path(os.path.expanduser(os.fspath(path)))
        root = self._find_root()
        self.root = root
        self.cache_dir = Path(cache_dir) if cache_dir is not None else root / "esmgear_fast_cache"
        self.verbose = verbose
        self._parts = []
        items: List[Tuple[int, int]] = []
        self.skipped: List[Tuple[str, int, str]] = []
        for s, split in enumerate(SPLITS):
            part = self._load_split(split, workers, on_error, rebuild)
            self._parts.append(part)
            items.extend((s, k) for k in range(len(part["ids"])))
            self.skipped.extend((split, int(i), msg) for i, msg in part["failures"])
        self._items = items
        self._split_sizes = [len(p["ids"]) for p in self._parts]

    # -- locating the data
    def _layout(self) -> str:
        return "\n".join(f"{self.split_root}/data/{s}/data.mdb" for s in SPLITS)

    def _find_root(self) -> Path:
        for candidate in (self.path / self.split_root, self.path / self.dir_name / self.split_root):
            if all((candidate / "data" / s / "data.mdb").is_file() for s in SPLITS):
                return candidate
        raise missing_data_error(self.what, self.path, self.url, self._layout())

    # -- parsing into the cache
    def _cache_paths(self, split: str) -> Tuple[List[Path], Path]:
        stem = f"{self.kind}_{split}" + ("" if self.residue_rules == "package" else f"_{self.residue_rules}")
        names = ["protein"] if self.num_proteins == 1 else ["wild_type", "mutant"]
        return [self.cache_dir / f"{stem}_{n}.pt" for n in names], self.cache_dir / f"{stem}_meta.pt"

    def _load_split(self, split: str, workers: int, on_error: str, rebuild: bool) -> dict:
        lmdb_dir = self.root / "data" / split
        caches, meta_path = self._cache_paths(split)
        stamp = _stamp(lmdb_dir)
        meta = None
        if not rebuild and meta_path.is_file() and all(c.is_file() for c in caches):
            meta = torch.load(meta_path, map_location="cpu", weights_only=True)
            if meta.get("version") != _CACHE_VERSION or meta.get("stamp") != stamp:
                if self.verbose:
                    print(f"[{self.kind}] {lmdb_dir} changed since its cache was built; parsing again",
                          file=sys.stderr, flush=True)
                meta = None
        if meta is None:
            meta = self._build_split(split, lmdb_dir, caches, meta_path, stamp, workers, on_error)
        part = dict(meta)
        part["caches"] = [ProteinCache(c) for c in caches]
        return part

    def _build_split(self, split, lmdb_dir, caches, meta_path, stamp, workers, on_error) -> dict:
        db = Atom3DLMDB(lmdb_dir)
        n = len(db)
        if self.verbose:
            print(f"[{self.kind}] parsing {n} entries of {lmdb_dir} into {self.cache_dir}", file=sys.stderr,
                  flush=True)
        chunk = max(1, min(256, math.ceil(n / max(1, workers) / 4)))
        jobs = [(str(lmdb_dir), self.kind, s, min(n, s + chunk), on_error, self.residue_rules)
                for s in range(0, n, chunk)]
        results = []
        if workers > 1 and len(jobs) > 1:
            # a forked child must not inherit this process's open environment (py-lmdb refuses to reopen it)
            _release_env(lmdb_dir)
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for out in pool.map(_parse_range, jobs):
                    results.extend(out)
        else:
            for job in jobs:
                results.extend(_parse_range(job))
        parsed = [(i, r) for i, r, _ in results if r is not None]
        failures = [(i, msg) for i, r, msg in results if r is None]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for k, cache in enumerate(caches):
            write_cache([r["arrays"][k] for _, r in parsed], cache, sources=[f"{split}/{i}" for i, _ in parsed])
        meta = {
            "version": _CACHE_VERSION,
            "stamp": stamp,
            "ids": [r["id"] for _, r in parsed],
            "keys": torch.tensor([i for i, _ in parsed], dtype=torch.long),
            "target": torch.tensor([[r["target"]] for _, r in parsed], dtype=torch.float32).reshape(-1, 1),
            "failures": [[int(i), str(msg)] for i, msg in failures],
        }
        if self.kind == "msp":
            meta["mutations"] = [r["mutation"] for _, r in parsed]
            meta["sites"] = torch.tensor([r["site"] for _, r in parsed], dtype=torch.long)
        failures_tsv = meta_path.with_name(meta_path.stem.replace("_meta", "") + ".failures.tsv")
        if failures:
            _atomic_write_text("".join(f"{lmdb_dir}\t{i}\t{msg.replace(chr(9), ' ').replace(chr(10), ' ')}\n"
                                       for i, msg in failures), failures_tsv)
            if self.verbose:
                print(f"[{self.kind}] skipped {len(failures)} corrupt entries of {lmdb_dir}; listed in "
                      f"{failures_tsv}", file=sys.stderr, flush=True)
        elif failures_tsv.exists():
            failures_tsv.unlink()
        _atomic_torch_save(meta, meta_path)
        db.close()
        return meta

    # -- dataset interface
    def __len__(self) -> int:
        return len(self._items)

    def _locate(self, index: int) -> Tuple[dict, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {len(self)} samples")
        s, k = self._items[index]
        return self._parts[s], k

    def subset(self, indices: Sequence[int]) -> "_Atom3DDataset":
        """A view with the samples ``indices`` (same caches, same transform)."""
        view = copy.copy(self)
        view._items = [self._items[int(i)] for i in indices]
        return view

    def split(self):
        """``(train, valid, test)``: the Atom3D ``train`` / ``val`` / ``test`` LMDBs, as datasets of this kind."""
        out, offset = [], 0
        sizes = [sum(1 for s, _ in self._items if s == j) for j in range(len(SPLITS))]
        order = sorted(range(len(self._items)), key=lambda i: self._items[i][0])
        for size in sizes:
            out.append(self.subset(order[offset:offset + size]))
            offset += size
        return tuple(out)

    @property
    def num_samples(self) -> List[int]:
        """Samples per split (train, val, test) in this dataset."""
        return [sum(1 for s, _ in self._items if s == j) for j in range(len(SPLITS))]

    @property
    def names(self) -> List[str]:
        return [self._parts[s]["ids"][k] for s, k in self._items]

    @property
    def lengths(self) -> List[int]:
        """Residues per sample (the wild type's for MSP)."""
        cache_lengths = [p["caches"][0].lengths.tolist() for p in self._parts]
        return [int(cache_lengths[s][k]) for s, k in self._items]

    @property
    def targets(self) -> torch.Tensor:
        """``float32 [len, 1]`` all targets in sample order."""
        if not self._items:
            return torch.zeros(0, 1)
        return torch.stack([self._parts[s]["target"][k] for s, k in self._items])

    @property
    def lmdb_keys(self) -> List[Tuple[str, int]]:
        """``(split, LMDB entry index)`` of every sample."""
        return [(SPLITS[s], int(self._parts[s]["keys"][k])) for s, k in self._items]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.root)!r}, samples={len(self)}, splits={self.num_samples}, "
                f"skipped={len(self.skipped)})")


class PSR(_Atom3DDataset):
    """Atom3D protein structure ranking (split by year): one decoy per sample, target GDT_TS ``float32 [1]``.

    ``PSR(path)`` holds all three splits; ``split()`` returns ``(train, valid, test)``. Items are
    ``{"protein": Protein, "target": tensor([gdt_ts])}``; ``protein.name`` is the Atom3D id
    ``"('<target>', '<decoy>')"`` and :attr:`target_names` the CASP target of each sample (for per-target
    ranking metrics).

    Args:
        path: the folder holding ``split-by-year/data/{train,val,test}`` (or ESM-GearNet's
            ``PSR-split-by-year/split-by-year/...`` one level deeper). A missing path raises
            ``FileNotFoundError`` naming the Zenodo URL and the layout.
        cache_dir: where the parsed caches go (default ``<split-by-year>/esmgear_fast_cache``); rebuilt when
            an LMDB's size or modification time changes.
        workers: processes used to parse (first use only).
        on_error: ``"raise"`` (default) or ``"skip"`` corrupt entries (counted in :attr:`skipped`, listed in
            ``<cache_dir>/psr_<split>.failures.tsv``).
        transform: called on every sample dict (e.g. a truncation); views from ``split()`` share it.
        residue_rules: ``"package"`` (default: :mod:`esmgear_fast.io`'s residue rules, as for structure
            files) or ``"esm_gearnet"`` (ESM-GearNet's own conversion, bit for bit the residues it trains on:
            see :func:`atom_table_to_arrays_esm_gearnet`). Each has its own cache files.
    """

    kind = "psr"
    what = "Atom3D PSR (split-by-year)"
    dir_name = "PSR-split-by-year"
    split_root = "split-by-year"
    url = "https://zenodo.org/record/4915648/files/PSR-split-by-year.tar.gz"
    md5 = "8647b9d10d0a79dff81d1d83c825e74c"
    tasks = ["gdt_ts"]
    task_type = "regression"

    def __getitem__(self, index: int) -> dict:
        part, k = self._locate(index)
        sample = {"protein": part["caches"][0][k], "target": part["target"][k].clone()}
        return self.transform(sample) if self.transform is not None else sample

    @property
    def target_names(self) -> List[str]:
        """The CASP target of every sample (first element of the Atom3D id ``"('T0759', 'server01_TS1')"``)."""
        out = []
        for name in self.names:
            m = re.match(r"^\(\s*'([^']*)'", name)
            out.append(m.group(1) if m else name)
        return out


class MSP(_Atom3DDataset):
    """Atom3D mutation stability prediction (split by 30% sequence identity): wild type / mutant pairs.

    Items are ``{"wild_type": Protein, "mutant": Protein, "target": tensor([label])}`` with ``label`` 1.0
    when the Atom3D label is ``"1"`` (binary). The mutant normally has the same residues as the wild type
    except the mutated one (equal lengths are not enforced: the mutants are modelled structures, and
    ESM-GearNet does not require it either); :attr:`mutations` holds the mutation strings
    (e.g. ``"LA19A"``) and :attr:`mutation_sites` the index of the mutated residue in the wild type
    (-1 where the string cannot be located). Arguments as :class:`PSR` (layout
    ``split-by-sequence-identity-30/data/{train,val,test}``, ESM-GearNet's
    ``MSP-split-by-sequence-identity-30/`` prefix accepted).
    """

    kind = "msp"
    what = "Atom3D MSP (split-by-sequence-identity-30)"
    dir_name = "MSP-split-by-sequence-identity-30"
    split_root = "split-by-sequence-identity-30"
    url = "https://zenodo.org/record/4962515/files/MSP-split-by-sequence-identity-30.tar.gz"
    md5 = "6628e8efac12648d3b78bb0fc0d8860c"
    num_proteins = 2
    tasks = ["label"]
    task_type = "binary"

    def __getitem__(self, index: int) -> dict:
        part, k = self._locate(index)
        sample = {"wild_type": part["caches"][0][k], "mutant": part["caches"][1][k],
                  "target": part["target"][k].clone()}
        return self.transform(sample) if self.transform is not None else sample

    @property
    def mutations(self) -> List[str]:
        return [self._parts[s]["mutations"][k] for s, k in self._items]

    @property
    def mutation_sites(self) -> List[int]:
        return [int(self._parts[s]["sites"][k]) for s, k in self._items]
