"""The preprocessing command end to end on a folder of real and broken files."""
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from esmgear_fast.data import ProteinCache, collate
from esmgear_fast.data.prepare import find_structure_files, prepare
from esmgear_fast.io import load_structure
from esmgear_fast.testing import real_structure_files, synthetic_structure_files, test_data_dir

GOOD = ["1A8O.pdb", "1A8O.cif", "1BD2.pdb.gz", "1hvr.pdb.gz", "1H8D_H.pdb.gz", "pdb1ejg.pdb.gz"]
BAD = {
    "broken/empty.pdb": b"",
    "broken/garbage.cif": b"\x00\x01\x02garbage\xff" * 50,
    "broken/not_gzip.pdb.gz": b"ATOM      1  N   ALA A   1       0.000   0.000   0.000  1.00  0.00\n",
    "waters.pdb": b"HETATM    1  O   HOH A 101       1.000   2.000   3.000  1.00 10.00           O\n",
}


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    structures = test_data_dir() / "structures"
    for i, name in enumerate(GOOD):
        dest = root / ("a" if i % 2 else "b") / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(structures / name, dest)
    shutil.copy(synthetic_structure_files()[0], root / "model.pdb")
    for name, data in BAD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "README.txt").write_text("not a structure file\n")
    return root


def _rel(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


def test_find_structure_files(src):
    found = _rel(find_structure_files(src), src)
    assert "README.txt" not in found
    assert found == sorted(found) and len(found) == len(GOOD) + 1 + len(BAD)


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_end_to_end(src, tmp_path, workers):
    out = tmp_path / "cache" / "proteins.pt"
    result = prepare(src, out, workers=workers, progress=False)
    assert result.out == out and out.is_file()
    assert result.num_files == len(GOOD) + 1 + len(BAD)
    assert sorted(f for f, _ in result.failures) == sorted(BAD)
    lines = result.failures_path.read_text().splitlines()
    assert result.failures_path == tmp_path / "cache" / "proteins.pt.failures.tsv"
    assert lines[0] == "path\terror" and sorted(ln.split("\t")[0] for ln in lines[1:]) == sorted(BAD)
    errors = dict(ln.split("\t") for ln in lines[1:])
    assert "empty" in errors["broken/empty.pdb"] and "gzip" in errors["broken/not_gzip.pdb.gz"]
    assert "no protein" in errors["waters.pdb"]

    cache = ProteinCache(out)
    good_files = [p for p in find_structure_files(src) if p.relative_to(src).as_posix() not in BAD]
    assert len(cache) == len(good_files) == result.num_proteins
    assert cache.sources == _rel(good_files, src)
    for i, path in enumerate(good_files):
        assert cache[i] == load_structure(path)  # identical to parsing directly
    assert cache.num_residues == result.num_residues == int(cache.lengths.sum())
    assert any(cache[i].plddt is not None for i in range(len(cache)))  # the synthetic predicted model
    assert cache[-1] == cache[len(cache) - 1]
    with pytest.raises(IndexError):
        cache[len(cache)]


def test_cache_with_dataloader_and_pickle(src, tmp_path):
    out = tmp_path / "c.pt"
    prepare(src, out, workers=1, progress=False)
    cache = ProteinCache(out)
    assert len(pickle.dumps(cache)) < 1000  # only the path travels to worker processes
    clone = pickle.loads(pickle.dumps(cache))
    assert [clone[i] for i in range(len(clone))] == [cache[i] for i in range(len(cache))]
    loader = torch.utils.data.DataLoader(cache, batch_size=3, collate_fn=ProteinCache.collate, num_workers=2)
    proteins = [p for b in loader for p in b.unbatch()]
    assert proteins == [cache[i] for i in range(len(cache))]
    assert cache.get_batch([2, 0]).unbatch() == [cache[2], cache[0]]
    b = collate([cache[0], cache[1]])
    assert b.num_proteins == 2


def test_cache_items_are_independent_copies(src, tmp_path):
    out = tmp_path / "c.pt"
    prepare(src, out, workers=1, progress=False)
    cache = ProteinCache(out, mmap=False)
    p = cache[0]
    p.pos += 100.0
    assert not torch.equal(cache[0].pos, p.pos)


def test_cache_refuses_other_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": "esmgear_fast.protein_cache", "version": 1, "x": Evil()}, bad)
    with pytest.raises(ValueError, match="not a readable protein cache"):
        ProteinCache(bad)
    other = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an esmgear_fast protein cache"):
        ProteinCache(other)
    with pytest.raises(FileNotFoundError):
        ProteinCache(tmp_path / "missing.pt")


def test_chain_options(src, tmp_path):
    out = tmp_path / "chains.pt"
    result = prepare(src, out, workers=1, progress=False, chains=["A"])
    # every good file has chain A except 1H8D_H (chain H)
    failed = {f for f, _ in result.failures}
    assert any(f.endswith("1H8D_H.pdb.gz") for f in failed)
    cache = ProteinCache(out)
    assert all(cache[i].chain_names == ["A"] for i in range(len(cache)))
    split = tmp_path / "split.pt"
    prepare(src, split, workers=1, progress=False, split_chains=True)
    cache = ProteinCache(split)
    names = [cache[i].name for i in range(len(cache))]
    assert {"1BD2_A", "1BD2_B", "1BD2_C", "1BD2_D", "1BD2_E", "1hvr_A", "1hvr_B"} <= set(names)
    one = cache[names.index("1BD2_D")]
    assert one == load_structure(next(src.rglob("1BD2.pdb.gz"))).chain_slice("D")


def test_command_line(src, tmp_path):
    out = tmp_path / "cli.pt"
    env = dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning")
    run = subprocess.run([sys.executable, "-m", "esmgear_fast.data.prepare", str(src), str(out), "--workers", "2",
                          "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "structures/s" in run.stdout and f"{len(BAD)} of" in run.stderr
    assert (tmp_path / "cli.pt.failures.tsv").is_file()
    assert len(ProteinCache(out)) == len(GOOD) + 1
    strict = subprocess.run([sys.executable, "-m", "esmgear_fast.data.prepare", str(src), str(out), "--strict",
                             "--quiet", "--workers", "1"], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run([sys.executable, "-m", "esmgear_fast.data.prepare", str(empty), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert none.returncode == 2 and "no structure files" in none.stderr


def test_all_committed_real_files_prepare(tmp_path):
    src = tmp_path / "all"
    src.mkdir()
    for p in real_structure_files():
        shutil.copy(p, src / p.name)
    result = prepare(src, tmp_path / "all.pt", workers=2, progress=False)
    assert result.failures == []
    cache = ProteinCache(tmp_path / "all.pt")
    assert [cache[i] for i in range(len(cache))] == [load_structure(p) for p in find_structure_files(src)]
