"""python -m esmgear_fast.embed and esmgear_fast.embed.embed on real structures (tiny random models)."""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.embed import embed, main
from esmgear_fast.inference import (
    InputError,
    ParsedProtein,
    batches_by_residues,
    discover_inputs,
    load_embeddings,
    load_model,
)
from esmgear_fast.io import Protein, load_structure
from esmgear_fast.io.residues import RESIDUE_NAMES, RESIDUE_SYMBOLS
from esmgear_fast.testing import real_complexes, real_proteins, real_structure_files

SPEC = "esm=random:tiny,structure=gearnet,fusion=serial,hidden_dims=[32,32]"
ATOL = 2e-5


def write_pdb(protein: Protein, path: Path) -> None:
    """N/CA/C/O ATOM records of a single-chain protein (what the tests need to re-read it)."""
    three = dict(zip(RESIDUE_SYMBOLS, RESIDUE_NAMES))
    lines, serial = [], 1
    chain = "A"  # PDB has one column for the chain ID (real_proteins keep mmCIF IDs like "LGG")
    for i, aa in enumerate(protein.sequence):
        for a, atom in enumerate(("N", "CA", "C", "O")):
            xyz = protein.backbone[i, a]
            if bool(torch.isnan(xyz).any()):
                continue
            lines.append(f"ATOM  {serial:5d}  {atom:<3s} {three.get(aa, 'UNK'):3s} {chain}{i + 1:4d}    "
                         f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00           {atom[0]}")
            serial += 1
    path.write_text("\n".join(lines + ["END"]) + "\n")


@pytest.fixture(scope="module")
def model():
    return load_model(SPEC)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder of real PDB / mmCIF / gzipped files (nested), chains written from real_proteins, and
    malformed files; returns (folder, good files, bad files)."""
    root = tmp_path_factory.mktemp("mixed")
    sub = root / "sub" / "deeper"
    sub.mkdir(parents=True)
    real = {p.name: p for p in real_structure_files()}
    good = []
    for name, dest in (("1A8O.pdb", root), ("1A8O.cif", sub), ("4ZHL.cif.gz", root), ("1TRM_A.pdb.gz", sub),
                       ("2n0n_M1.pdb", root)):
        shutil.copy(real[name], dest / name)
        good.append(dest / name)
    for i, p in enumerate(real_proteins(3, min_len=40, max_len=150)):
        path = root / f"chain{i}.pdb"
        write_pdb(p, path)
        good.append(path)
    gz = root / "sub" / "chain0_copy.pdb.gz"
    gz.write_bytes(gzip.compress((root / "chain0.pdb").read_bytes()))
    good.append(gz)
    bad = {
        "empty.pdb": b"",
        "garbage.cif": b"this is not a structure\nat all\n",
        "truncated.pdb.gz": gzip.compress((root / "chain1.pdb").read_bytes())[:40],
        "binary.pdb": bytes(range(256)) * 4,
        "ligand_only.pdb": b"HETATM    1  O   HOH A   1       1.000   2.000   3.000  1.00  0.00           O\nEND\n",
    }
    bad_paths = []
    for name, data in bad.items():
        (sub / name).write_bytes(data)
        bad_paths.append(sub / name)
    (root / "README.txt").write_text("not a list of paths, and not searched in folders\n")
    return root, good, bad_paths


def direct(model, path_or_protein):
    """The encoder called directly on one protein."""
    p = load_structure(path_or_protein) if not isinstance(path_or_protein, Protein) else path_or_protein
    with torch.inference_mode():
        out = model.encoder(collate([p]))
    return out["graph_feature"][0], out["node_feature"]


# ------------------------------------------------------------------------------------------ inputs
def test_discover_inputs(tmp_path, mixed):
    root, good, bad = mixed
    files = discover_inputs([str(root)])
    assert sorted(f.path for f in files) == sorted(good + bad)
    # globs, list files (relative to the list's folder, comments), duplicates removed
    lst = tmp_path / "paths.txt"
    rel = os.path.relpath(good[0], tmp_path)
    lst.write_text(f"# my structures\n{rel}\n\n{good[1]}\n{tmp_path / 'missing.pdb'}\n")
    got = discover_inputs([str(lst), str(good[0]), str(root / "*.cif.gz")])
    assert [f.path.resolve() for f in got] == [good[0].resolve(), good[1].resolve(),
                                               (tmp_path / "missing.pdb").resolve(), good[2].resolve()]
    assert got[0].display == os.path.normpath(rel)
    assert len(discover_inputs([str(root / "**" / "*.pdb")])) == len([p for p in good + bad if p.name.endswith(".pdb")])
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, match in (([str(empty)], "no structure files.*under folder"), ([str(tmp_path / "nope.pdb")], "no such"),
                        ([str(tmp_path / "*.cif")], "matches no structure"), ([str(root / "README.txt")], "nothing"),
                        ([], "no input")):
        if match == "nothing":  # a .txt file with a line that is not a path: entries become failures, no error
            assert len(discover_inputs(args)) == 1
            continue
        with pytest.raises(InputError, match=match):
            discover_inputs(args)
    other = tmp_path / "notes.md"
    other.write_text("x")
    with pytest.raises(InputError, match="neither a structure file"):
        discover_inputs([str(other)])


def test_batches_by_residues():
    proteins = real_proteins(12, max_len=400)
    items = [ParsedProtein(f"k{i}", "", "A", p, i) for i, p in enumerate(proteins)]
    budget = 600
    batches = list(batches_by_residues(iter(items), budget, buffer_residues=1500))
    assert sorted(it.key for b in batches for it in b) == sorted(it.key for it in items)
    for b in batches:
        assert len(b) == 1 or sum(len(it.protein) for it in b) <= budget
    long = [ParsedProtein("long", "", "A", real_complexes(1, min_len=1100)[0], 0)]
    assert [len(b) for b in batches_by_residues(long, budget)] == [1]
    with pytest.raises(ValueError, match="batch_residues"):
        list(batches_by_residues(items, 0))


# ------------------------------------------------------------------------------------------ CLI
def test_cli_mixed_folder_h5_matches_api_and_model(tmp_path, mixed, model, capsys):
    root, good, bad = mixed
    out = tmp_path / "emb.h5"
    rc = main([str(root), "-c", SPEC, "-o", str(out), "--per-residue", "--batch-residues", "700",
               "--workers", "2", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err  # some inputs failed
    assert "embedded 9 proteins" in captured.out and "5 failed" in captured.out
    failures = (tmp_path / "emb.h5.failures.tsv").read_text().splitlines()
    assert failures[0] == "path\treason"
    failed = {line.split("\t")[0]: line.split("\t")[1] for line in failures[1:]}
    assert set(failed) == {os.path.normpath(str(p)) for p in bad}
    assert "empty file" in failed[os.path.normpath(str(root / "sub/deeper/empty.pdb"))]
    assert "truncated" in failed[os.path.normpath(str(root / "sub/deeper/truncated.pdb.gz"))]

    with h5py.File(out, "r") as f:
        assert bool(f.attrs["complete"]) and "esm=random:tiny" in f.attrs["config"]
        assert f.attrs["esmgear_fast_version"]
        keys = [k.decode() for k in f["keys"][()]]
        graph, node, ptr = f["graph_feature"][()], f["node_feature"][()], f["ptr"][()]
        files = [k.decode() for k in f["files"][()]]
    assert sorted(files) == sorted(os.path.normpath(str(p)) for p in good)
    assert graph.shape == (len(good), 64 + 64) and node.shape[0] == ptr[-1]

    with pytest.warns(UserWarning, match="5 input"):
        api = embed([str(root)], SPEC, per_residue=True)
    assert len(api.failures) == len(bad)
    assert sorted(api) == sorted(keys)
    for i, key in enumerate(keys):
        np.testing.assert_allclose(graph[i], api[key].numpy(), rtol=1e-5, atol=ATOL)
        np.testing.assert_allclose(node[ptr[i]:ptr[i + 1]], api.residues[key].numpy(), rtol=1e-5, atol=ATOL)
        g, n = direct(model, files[i])
        assert key == f"{files[i]}:{','.join(load_structure(files[i]).chain_names)}"
        np.testing.assert_allclose(graph[i], g.numpy(), rtol=1e-5, atol=ATOL)
        np.testing.assert_allclose(node[ptr[i]:ptr[i + 1]], n.numpy(), rtol=1e-5, atol=ATOL)
    assert load_embeddings(out).keys() == api.keys()


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_cli_npz_pt_round_trip_chains(tmp_path, mixed, model, fmt):
    root, good, _ = mixed
    out = tmp_path / f"emb.{fmt}"
    files = [str(p) for p in good[:3]]
    assert main(files + ["-c", SPEC, "-o", str(out), "--per-residue", "--workers", "0", "--quiet",
                         "--split-chains"]) == 0
    if fmt == "npz":
        with np.load(out, allow_pickle=False) as z:
            keys, graph, node, ptr = list(z["keys"]), z["graph_feature"], z["node_feature"], z["ptr"]
            assert bool(z["complete"]) and str(z["meta_esmgear_fast_version"])
            assert "random:tiny" in str(z["meta_config"])
    else:
        obj = torch.load(out, weights_only=True)
        keys, graph, node, ptr = obj["keys"], obj["graph_feature"].numpy(), obj["node_feature"].numpy(), obj["ptr"]
        assert obj["metadata"]["esmgear_fast_version"]
    expected = {}
    for f in files:
        p = load_structure(f)
        for chain in p.chain_names:
            expected[f"{os.path.normpath(f)}:{chain}"] = p.chain_slice(chain)
    assert sorted(keys) == sorted(expected)
    for i, key in enumerate(keys):
        g, n = direct(model, expected[key])
        np.testing.assert_allclose(graph[i], g.numpy(), rtol=1e-5, atol=ATOL)
        np.testing.assert_allclose(node[int(ptr[i]):int(ptr[i + 1])], n.numpy(), rtol=1e-5, atol=ATOL)


def test_cli_refuses_existing_output_and_bad_inputs(tmp_path, mixed, capsys):
    root, good, bad = mixed
    out = tmp_path / "emb.h5"
    out.write_bytes(b"precious")
    assert main([str(good[0]), "-c", SPEC, "-o", str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main([str(good[0]), "-c", SPEC, "-o", str(out), "--quiet", "--overwrite", "--workers", "0"]) == 0
    assert len(load_embeddings(out)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "-c", SPEC, "-o", str(tmp_path / "x.h5"), "--quiet"]) == 2
    assert "no structure files" in capsys.readouterr().err
    assert main([str(good[0]), "-c", SPEC, "-o", str(tmp_path / "x.csv"), "--quiet"]) == 2
    assert main([str(good[0]), "-c", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x.h5"), "--quiet"]) == 2
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    assert main([str(good[0]), "-c", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "x.h5"), "--quiet"]) == 2
    assert "bad.pt: not a readable checkpoint" in capsys.readouterr().err
    # only malformed files: nothing written, exit 1, failures listed
    assert main([str(p) for p in bad] + ["-c", SPEC, "-o", str(tmp_path / "y.h5"), "--quiet", "--workers", "0"]) == 1
    assert not (tmp_path / "y.h5").exists()
    assert len((tmp_path / "y.h5.failures.tsv").read_text().splitlines()) == 1 + len(bad)
    assert not list(tmp_path.glob(".*partial*"))


# ------------------------------------------------------------------------------------------ API
def test_api_proteins_long_window_and_batching(model):
    long = real_complexes(1, min_len=1100)[0]  # longer than ESM's 1022-residue window
    assert len(long) > 1022
    ca = real_proteins(1, min_len=60, max_len=120)[0]
    designed = Protein.from_arrays(ca.sequence, ca.pos, name="design1")
    proteins = {"complex": long, "design1": designed, "other": real_proteins(2, min_len=100)[1]}
    a = embed(proteins, model, per_residue=True, batch_residues=300)
    b = embed(list(proteins.values())[1:], model, batch_residues=100000)  # keyed by name
    assert sorted(b) == sorted(["design1", real_proteins(2, min_len=100)[1].name])
    for key, p in proteins.items():
        g, n = direct(model, p)
        torch.testing.assert_close(a[key], g, rtol=1e-5, atol=ATOL)
        torch.testing.assert_close(a.residues[key], n, rtol=1e-5, atol=ATOL)
        if key != "complex":
            torch.testing.assert_close(b[p.name], g, rtol=1e-5, atol=ATOL)
    keys, mat = a.matrix()
    assert mat.shape == (3, 128) and keys == list(a)
    with pytest.raises(ValueError, match="share the name"):
        embed([designed, Protein.from_arrays(ca.sequence, ca.pos, name="design1")], model)
    # bf16 autocast runs and stays close to fp32 (outputs are float32)
    c = embed({"design1": designed}, model, precision="bf16")
    assert c["design1"].dtype == torch.float32
    rel = (c["design1"] - a["design1"]).norm() / a["design1"].norm()
    assert 0 < rel < 0.05


def test_api_failures_are_reported_not_raised(mixed, model):
    root, good, bad = mixed
    with pytest.warns(UserWarning, match="could not be embedded"):
        e = embed([str(good[0]), str(bad[0])], model, chains=["A"])
    assert list(e) == [f"{os.path.normpath(str(good[0]))}:A"]
    assert e.failures[0][0] == os.path.normpath(str(bad[0]))


# ------------------------------------------------------------------------------------------ crash
_SLOW_RUN = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from esmgear_fast.embed import embed_to_file
    from esmgear_fast.inference import load_model
    marker, out = Path(sys.argv[1]), sys.argv[2]
    loaded = load_model({spec!r})
    inner = loaded.encoder
    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner
        def forward(self, batch):
            out = self.inner(batch)
            marker.write_text("running")
            time.sleep(0.3)
            return out
    loaded.encoder = Slow()
    embed_to_file(sys.argv[3:], loaded, out, per_residue=True, batch_residues=60, workers=1, progress=False)
""")


def test_killed_run_leaves_no_complete_looking_file(tmp_path, mixed):
    root, good, _ = mixed
    out = tmp_path / "emb.h5"
    marker = tmp_path / "marker"
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_RUN.replace("{spec!r}", repr(SPEC)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(marker), str(out)] + [str(p) for p in good] * 1,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.4)  # a few batches are in the partial file
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".emb.h5.partial")]
    assert partial  # the run had started writing
    for p in partial:
        try:
            with h5py.File(p, "r") as f:
                assert not bool(f.attrs.get("complete", False))
        except OSError:
            pass  # not even readable as HDF5: cannot pass for complete either


def test_embed_published_pth_and_model_file(tmp_path, mixed, model):
    """A published-layout ESM-GearNet .pth (written with the factory's exporter) and a save_model file give
    the embeddings of the model they were written from."""
    from esmgear_fast.models.factory import save_model, to_esm_gearnet_state_dict

    root, good, _ = mixed
    pth = tmp_path / "esm_gearnet.pth"
    torch.save(to_esm_gearnet_state_dict(model.encoder), pth)
    mfile = tmp_path / "model.pt"
    save_model(model.encoder.model_config, model.encoder, mfile)
    g, _ = direct(model, good[0])
    for ckpt in (pth, mfile):
        e = embed(str(good[0]), str(ckpt))
        torch.testing.assert_close(next(iter(e.values())), g, rtol=1e-5, atol=ATOL)
    assert e.metadata["config"]["kind"] == "model_file"
    with pytest.raises(ValueError, match="fusion"):
        load_model(str(pth), fusion="parallel")  # serial weights: the structure input width says so


def test_module_is_callable_and_cli_runs_without_runpy_warning(mixed, model):
    import esmgear_fast.embed as embed_module

    root, good, _ = mixed
    a = embed_module(str(good[0]), model)  # esmgear_fast.embed(...) works as a function
    b = embed(str(good[0]), model)
    assert list(a) == list(b) and torch.equal(next(iter(a.values())), next(iter(b.values())))
    res = subprocess.run([sys.executable, "-m", "esmgear_fast.embed", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert res.returncode == 0 and "--per-residue" in res.stdout
    assert "found in sys.modules" not in res.stderr  # the package must not import .embed eagerly
