"""python -m esmgear_fast.predict and Predictor on checkpoints written in our format (tiny random models)."""
from __future__ import annotations

import csv
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.engine.checkpoint import _DatasetInfo
from esmgear_fast.engine.config import Config, config_to_dict
from esmgear_fast.io import load_structure
from esmgear_fast.models.factory import ModelConfig, build_model
from esmgear_fast.predict import Predictor, main, read_pairs
from esmgear_fast.tasks import TaskConfig, build_task
from esmgear_fast.testing import real_structure_files

EC_NAMES = ["1.1.1.1", "2.7.11.1", "3.4.21.-", "4.2.1.1", "5.3.1.9", "6.3.2.-", "1.14.13.-"]
GO_LIKE = ["GO:0005515", "GO:0003677", "GO:0016020"]


def make_checkpoint(path: Path, task_name: str, names, task_type: str, seed: int = 0):
    """A checkpoint in the engine's format for a freshly built task whose head weights are random."""
    cfg = Config()
    cfg.model = ModelConfig(esm="random:tiny", structure="gearnet", hidden_dims=[32, 32])
    cfg.task = TaskConfig(name=task_name)
    torch.manual_seed(seed)
    task = build_task(cfg.task, build_model(cfg.model), _DatasetInfo(names, task_type))
    with torch.no_grad():
        for name, p in task.named_parameters():
            if name.startswith("mlp."):
                p.normal_(0, 0.02)  # logits of order 1 on the sum-readout features
        if hasattr(task, "mean"):
            task.mean.fill_(40.0)
            task.std.fill_(7.5)
    torch.save({"format": "esmgear_fast.checkpoint", "version": 1, "config": config_to_dict(cfg),
                "model": task.state_dict(), "tasks": list(names), "task_type": task_type}, path)
    return task.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("structures")
    real = {p.name: p for p in real_structure_files()}
    for name in ("1A8O.pdb", "4ZHL.cif.gz", "1TRM_A.pdb.gz", "2n0n_M1.pdb"):
        shutil.copy(real[name], root / name)
    (root / "broken.cif").write_text("data_x\n_cell.length_a 1\n")
    return root


@pytest.fixture(scope="module")
def ec(tmp_path_factory):
    path = tmp_path_factory.mktemp("ec") / "best.pt"
    return path, make_checkpoint(path, "multiple_binary", EC_NAMES, "multilabel")


def test_predict_multilabel_cli_top_k_and_threshold(tmp_path, folder, ec, capsys):
    ckpt, task = ec
    out = tmp_path / "pred.tsv"
    rc = main([str(folder), "-c", str(ckpt), "-o", str(out), "--top-k", "3", "--workers", "0", "--quiet"])
    assert rc == 1, capsys.readouterr().err  # broken.cif failed, the rest predicted
    assert "broken.cif" in (tmp_path / "pred.tsv.failures.tsv").read_text()
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    assert len(rows) == 4 and list(rows[0]) == ["protein", "file", "chain", "terms", "scores"]
    for row in rows:
        protein = load_structure(row["file"])
        with torch.inference_mode():
            expected = torch.sigmoid(task.predict({"protein": collate([protein])}))[0]
        order = torch.argsort(expected, descending=True)[:3].tolist()
        assert row["terms"].split(";") == [EC_NAMES[j] for j in order]
        np.testing.assert_allclose([float(s) for s in row["scores"].split(";")], expected[order].numpy(), atol=1e-4)
        assert row["protein"] == f"{row['file']}:{','.join(protein.chain_names)}"
    # threshold: every label at least that, no cap unless --top-k
    out2 = tmp_path / "thr.tsv"
    assert main([str(folder / "1A8O.pdb"), "-c", str(ckpt), "-o", str(out2), "--threshold", "0.5",
                 "--workers", "0", "--quiet"]) == 0
    row = next(csv.DictReader(out2.open(), delimiter="\t"))
    with torch.inference_mode():
        expected = torch.sigmoid(task.predict({"protein": collate([load_structure(folder / "1A8O.pdb")])}))[0]
    assert sorted(t for t in row["terms"].split(";") if t) == sorted(
        EC_NAMES[j] for j in range(len(EC_NAMES)) if expected[j] >= 0.5)
    # existing output refused
    assert main([str(folder / "1A8O.pdb"), "-c", str(ckpt), "-o", str(out2), "--quiet"]) == 2


def test_predictor_api_regression_and_proteins(tmp_path, folder):
    ckpt = tmp_path / "psr.pt"
    task = make_checkpoint(ckpt, "property", ["gdt_ts"], "regression", seed=1)
    predictor = Predictor(ckpt)
    assert predictor.kind == "regression" and predictor.names == ["gdt_ts"]
    proteins = [load_structure(folder / "1A8O.pdb"), load_structure(folder / "4ZHL.cif.gz")]
    preds = predictor.predict(proteins, batch_residues=50)
    with torch.inference_mode():
        expected = task.predict({"protein": collate(proteins)})
    torch.testing.assert_close(preds.scores, expected.float(), rtol=1e-5, atol=1e-4)
    assert preds.keys == [p.name for p in proteins]
    with torch.inference_mode():  # de-normalised with the checkpoint's mean/std
        raw = task.mlp(task.model(collate(proteins))["graph_feature"])
    torch.testing.assert_close(preds.scores, raw * 7.5 + 40.0, rtol=1e-5, atol=1e-3)
    out = tmp_path / "psr.tsv"
    assert main([str(folder / "1A8O.pdb"), "-c", str(ckpt), "-o", str(out), "--workers", "0", "--quiet"]) == 0
    row = next(csv.DictReader(out.open(), delimiter="\t"))
    assert float(row["gdt_ts"]) == pytest.approx(float(expected[0, 0]), rel=1e-5, abs=1e-4)
    with pytest.raises(ValueError, match="top terms are for classification"):
        preds.top(3)
    assert main([str(folder / "1A8O.pdb"), "-c", str(ckpt), "-o", str(tmp_path / "k.tsv"), "--top-k", "2",
                 "--quiet"]) == 2
    assert not (tmp_path / "k.tsv").exists()


def test_predict_multilabel_go_names_via_api(tmp_path, folder):
    ckpt = tmp_path / "go.pt"
    make_checkpoint(ckpt, "multiple_binary", GO_LIKE, "multilabel", seed=2)
    preds = Predictor(ckpt).predict(str(folder / "1TRM_A.pdb.gz"))
    (terms,) = preds.top(k=2)
    assert [t for t, _ in terms] == [GO_LIKE[j] for j in torch.argsort(preds.scores[0], descending=True)[:2]]
    assert all(0 < s < 1 for _, s in terms)


def _mutate(src: Path, dst: Path, residue_number: int, new_name: str) -> None:
    """Renames one residue (its ATOM records) of a PDB file: a point mutant with the same backbone."""
    lines = []
    for line in src.read_text().splitlines():
        if line.startswith(("ATOM  ", "HETATM")) and int(line[22:26]) == residue_number:
            line = line[:17] + new_name + line[20:]
        lines.append(line)
    dst.write_text("\n".join(lines) + "\n")


def test_predict_msp_pairs_from_csv(tmp_path, folder):
    ckpt = tmp_path / "msp.pt"
    task = make_checkpoint(ckpt, "mutation", ["label"], "binary", seed=3)
    wt = tmp_path / "wt.pdb"
    wt.write_text(gzip.decompress((folder / "1TRM_A.pdb.gz").read_bytes()).decode())
    wt_protein = load_structure(wt)
    n1, n2 = int(wt_protein.residue_number[10]), int(wt_protein.residue_number[40])
    _mutate(wt, tmp_path / "mt1.pdb", n1, "TRP")
    _mutate(wt, tmp_path / "mt2.pdb", n2, "GLY" if wt_protein.sequence[40] != "G" else "ALA")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("name,wild_type,mutant\nm1,wt.pdb,mt1.pdb\nm2,wt.pdb,mt2.pdb\nsame,wt.pdb,wt.pdb\n"
                     "gone,wt.pdb,missing.pdb\n")
    assert [p[0] for p in read_pairs(pairs)] == ["m1", "m2", "same", "gone"]
    out = tmp_path / "msp.tsv"
    assert main(["--pairs", str(pairs), "-c", str(ckpt), "-o", str(out), "--workers", "0", "--quiet"]) == 1
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    assert [r["pair"] for r in rows] == ["m1", "m2"]
    failed = (tmp_path / "msp.tsv.failures.tsv").read_text()
    assert "same\tmodel:" in failed and "no residue whose type differs" in failed
    assert "gone\t" in failed and "file not found" in failed
    for r, m in zip(rows, ("mt1.pdb", "mt2.pdb")):
        with torch.inference_mode():
            logit = task.predict({"wild_type": collate([wt_protein]), "mutant": collate([load_structure(tmp_path / m)])})
        assert float(r["probability"]) == pytest.approx(float(torch.sigmoid(logit)[0, 0]), abs=1e-4)
    # structures instead of pairs for an MSP head: usage error
    assert main([str(wt), "-c", str(ckpt), "-o", str(tmp_path / "x.tsv"), "--quiet"]) == 2


def test_predict_refuses_checkpoints_without_head(tmp_path, folder, capsys):
    spec = "esm=random:tiny,structure=gearnet,hidden_dims=[32,32]"
    assert main([str(folder / "1A8O.pdb"), "-c", spec, "-o", str(tmp_path / "p.tsv"), "--quiet"]) == 2
    assert "has no prediction head" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no prediction head"):
        Predictor(spec)
    assert not (tmp_path / "p.tsv").exists()


def test_embed_with_train_checkpoint_uses_its_encoder(folder, ec):
    from esmgear_fast.embed import embed

    ckpt, task = ec
    e = embed([str(folder / "1A8O.pdb")], str(ckpt), per_residue=True)
    protein = load_structure(folder / "1A8O.pdb")
    with torch.inference_mode():
        out = task.model(collate([protein]))
    (key,) = list(e)
    torch.testing.assert_close(e[key], out["graph_feature"][0], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(e.residues[key], out["node_feature"], rtol=1e-5, atol=2e-5)
    assert e.metadata["config"]["kind"] == "checkpoint" and e.metadata["config"]["config"]["task"]["name"] == \
        "multiple_binary"
