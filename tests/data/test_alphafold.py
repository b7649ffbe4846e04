"""AlphaFold DB proteome shards: cached dataset, streaming, selection, pLDDT filters, ESM-GearNet chunks."""
import gzip
import shutil
import tarfile

import pytest
import torch

from esmgear_fast.data.datasets.alphafold import (
    MODEL_ORGANISMS,
    AlphaFoldDB,
    AlphaFoldDBStream,
    FoldCompDB,
    parse_structure_bytes,
)
from esmgear_fast.io import StructureParseError, load_structure
from esmgear_fast.testing import test_data_dir

FIXTURES = test_data_dir() / "fixtures" / "afdb"
STRUCTURES = test_data_dir() / "structures"
ECOLI = "UP000000625_83333_ECOLI_v4.tar"
AF_MODEL = "AF-A0A3B4WVX2-F1-model_v6"
ALL_NAMES = [AF_MODEL, "AF-PDB1A8O-F1-model_v4", "AF-PDB2N0N-F1-model_v4", "AF-PDB1TRM-F1-model_v4",
             "AF-PDB3D5T-F1-model_v4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    dst = tmp_path_factory.mktemp("afdb") / "afdb"
    shutil.copytree(FIXTURES, dst)
    return dst


@pytest.fixture(scope="module")
def db(shards):
    return AlphaFoldDB(shards, verbose=False)


def _member(name: str) -> bytes:
    with tarfile.open(FIXTURES / ECOLI) as tar:
        return tar.extractfile(name).read()


def _af_ca_plddt():
    """pLDDT (B_iso_or_equiv) of every CA of the real AlphaFold model, read from the mmCIF loop by hand."""
    text = gzip.decompress(_member(AF_MODEL + ".cif.gz")).decode()
    lines = text.splitlines()
    cols = [line.strip() for line in lines if line.startswith("_atom_site.")]
    atom, bfac = cols.index("_atom_site.label_atom_id"), cols.index("_atom_site.B_iso_or_equiv")
    return [float(f[bfac]) for f in (line.split() for line in lines if line.startswith("ATOM ")) if f[atom] == "CA"]


def test_cached_dataset_contents(db, shards):
    assert len(db) == 5 and db.names == ALL_NAMES
    assert db.proteome_names == ["ECOLI", "YEAST"]
    assert db.lengths == [298, 70, 11, 223, 323]
    # the corrupt member is skipped, counted and listed
    assert [(s, m) for s, m, _ in db.skipped] == [(ECOLI, "AF-PDBBROKEN-F1-model_v4.pdb.gz")]
    assert "truncated" in db.skipped[0][2]
    tsv = (shards / "esmgear_fast_cache" / "UP000000625_83333_ECOLI_v4.auto.failures.tsv").read_text()
    assert "AF-PDBBROKEN-F1-model_v4.pdb.gz" in tsv
    item = db[0]
    assert set(item) == {"protein"}
    assert db.split()[0] is db and len(db.split()[1]) == 0 and len(db.split()[2]) == 0


def test_real_alphafold_model_matches_file_reader(db, tmp_path):
    p = db[0]["protein"]
    path = tmp_path / (AF_MODEL + ".cif.gz")
    path.write_bytes(_member(AF_MODEL + ".cif.gz"))
    ref = load_structure(path)
    assert p.sequence == ref.sequence and p.sequence.startswith("MFSKATANFVRQIDPEG")
    assert torch.allclose(p.backbone, ref.backbone, equal_nan=True)
    plddt = _af_ca_plddt()
    assert len(plddt) == 298
    assert p.plddt.tolist() == pytest.approx(plddt, abs=1e-4)
    assert p.pos[0].tolist() == pytest.approx([-13.812, 1.447, 10.027], abs=1e-4)  # first CA line of the file
    # a PDB member equals the original file
    q = db[1]["protein"]
    assert q.plddt is None
    assert torch.equal(q.pos, load_structure(STRUCTURES / "1A8O.pdb").pos)


def test_format_choice(shards):
    cif = AlphaFoldDB(shards, proteomes="ECOLI", format="cif", verbose=False)
    assert cif.names == [AF_MODEL, "AF-PDB1A8O-F1-model_v4"]
    pdb = AlphaFoldDB(shards, proteomes="ECOLI", format="pdb", verbose=False)
    assert pdb.names == ["AF-PDB1A8O-F1-model_v4", "AF-PDB2N0N-F1-model_v4"] and len(pdb.skipped) == 1
    # the same model read from its mmCIF and its PDB member
    assert torch.equal(cif[1]["protein"].backbone.nan_to_num(), pdb[0]["protein"].backbone.nan_to_num())
    with pytest.raises(ValueError, match="format"):
        AlphaFoldDB(shards, format="mmtf")


def test_plddt_filters(shards):
    plddt = torch.tensor(_af_ca_plddt())
    mean = float(plddt.mean())
    keep = AlphaFoldDB(shards, min_mean_plddt=mean - 0.01, verbose=False)
    assert keep.names == [AF_MODEL] and keep.num_filtered == 4  # the PDB entries have no pLDDT
    drop = AlphaFoldDB(shards, min_mean_plddt=mean + 0.01, verbose=False)
    assert len(drop) == 0 and drop.num_filtered == 5
    residues = AlphaFoldDB(shards, min_plddt=70.0, verbose=False)
    expected = int((plddt >= 70.0).sum())
    assert 0 < expected < 298
    assert residues.lengths == [expected]
    p = residues[0]["protein"]
    assert len(p) == expected and bool((p.plddt >= 70.0).all())
    full = AlphaFoldDB(shards, verbose=False)[0]["protein"]
    assert torch.equal(p.pos, full.pos[plddt >= 70.0])


def test_proteome_selection_and_missing(shards, tmp_path):
    assert AlphaFoldDB(shards, proteomes=["YEAST", 6], verbose=False).proteome_names == ["YEAST", "ECOLI"]
    assert AlphaFoldDB(shards, proteomes="UP000002311", verbose=False).names == ALL_NAMES[3:]
    assert AlphaFoldDB(shards / ECOLI, verbose=False).names == ALL_NAMES[:3]
    with pytest.raises(ValueError, match="unknown proteome"):
        AlphaFoldDB(shards, proteomes="NOTAPROTEOME")
    with pytest.raises(FileNotFoundError) as info:
        AlphaFoldDB(shards, proteomes=["HUMAN"])
    assert "https://ftp.ebi.ac.uk/pub/databases/alphafold/v4/UP000005640_9606_HUMAN_v4.tar" in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        AlphaFoldDB(tmp_path / "nothing")
    assert str(info.value).count("https://ftp.ebi.ac.uk/pub/databases/alphafold/") == 21


def test_model_organisms():
    assert len(MODEL_ORGANISMS) == 21
    assert [p.code for p in MODEL_ORGANISMS[:3]] == ["ARATH", "CAEEL", "CANAL"]
    assert MODEL_ORGANISMS[8].archive() == "UP000005640_9606_HUMAN_v4.tar"
    assert MODEL_ORGANISMS[20].url("v6").endswith("/v6/UP000007305_4577_MAIZE_v6.tar")


def test_esm_gearnet_schedule(db):
    chunks = db.esm_gearnet_schedule(split_length=2)
    assert [(name, c, sub.names) for name, c, sub in chunks] == [
        ("ECOLI", 0, ALL_NAMES[0:2]), ("ECOLI", 1, ALL_NAMES[2:3]), ("YEAST", 0, ALL_NAMES[3:5])]
    assert [(n, c, len(s)) for n, c, s in db.esm_gearnet_schedule()] == [("ECOLI", 0, 3), ("YEAST", 0, 2)]


def test_cache_reused(shards, capsys):
    AlphaFoldDB(shards, verbose=True)
    assert "parsing" not in capsys.readouterr().err


def test_stream_equals_cache(db, shards):
    stream = AlphaFoldDBStream(shards)
    items = list(stream)
    assert [i["protein"].name for i in items] == ALL_NAMES
    assert [(s, m) for s, m, _ in stream.skipped] == [(ECOLI, "AF-PDBBROKEN-F1-model_v4.pdb.gz")]
    for i, item in enumerate(items):
        assert torch.equal(item["protein"].backbone.nan_to_num(), db[i]["protein"].backbone.nan_to_num())
    parts = [[i["protein"].name for i in AlphaFoldDBStream(shards, rank=r, world_size=2)] for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(ALL_NAMES) and not set(parts[0]) & set(parts[1])
    filtered = list(AlphaFoldDBStream(shards, min_plddt=70.0))
    assert [i["protein"].name for i in filtered] == [AF_MODEL]
    assert len(filtered[0]["protein"]) == db.__class__(shards, min_plddt=70.0, verbose=False).lengths[0]


def test_stream_in_dataloader_workers(shards):
    from esmgear_fast.data.samples import collate_samples

    loader = torch.utils.data.DataLoader(AlphaFoldDBStream(shards, proteomes="YEAST"), batch_size=1,
                                         num_workers=2, collate_fn=collate_samples)
    names = sorted(n for batch in loader for n in batch["names"])
    assert names == sorted(ALL_NAMES[3:])


def test_corrupt_tar_and_bytes(tmp_path):
    bad = tmp_path / ECOLI
    bad.write_bytes((FIXTURES / ECOLI).read_bytes()[:1500])  # header of the first member, data cut
    with pytest.raises(ValueError, match=ECOLI):
        AlphaFoldDB(tmp_path, verbose=False)
    with pytest.raises(StructureParseError, match="truncated"):
        parse_structure_bytes(_member("AF-PDBBROKEN-F1-model_v4.pdb.gz"), "AF-PDBBROKEN-F1-model_v4.pdb.gz")
    arrays = parse_structure_bytes(_member(AF_MODEL + ".cif.gz"), AF_MODEL + ".cif.gz")
    assert arrays["name"] == AF_MODEL and arrays["plddt"] is not None


def test_foldcomp_optional(tmp_path):
    try:
        import foldcomp  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="foldcomp"):
            FoldCompDB(tmp_path / "afdb_swissprot_v4")
    else:
        with pytest.raises(FileNotFoundError, match="foldcomp.setup"):
            FoldCompDB(tmp_path / "afdb_swissprot_v4")
