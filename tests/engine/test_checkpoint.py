"""Checkpoint files: atomic writes (a failure mid-write leaves the previous file), RNG state round trip with
``weights_only`` loading, and starting weights from a published ESM-GearNet file."""
import os
import random

import numpy as np
import pytest
import torch

from esmgear_fast.engine import checkpoint as C


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    C.atomic_save({"format": C.FORMAT, "version": 1, "step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def dies_half_way(obj, f):          # writes some bytes, then the "process dies"
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        C.atomic_save({"format": C.FORMAT, "version": 1, "step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert C.load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(path.parent)) == ["last.pt"]       # no temporary file left behind

    def replace_fails(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="disk full"):
        C.atomic_save({"format": C.FORMAT, "version": 1, "step": 3}, path)
    monkeypatch.undo()
    assert C.load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(path.parent)) == ["last.pt"]


def test_load_checkpoint_rejects_other_files(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(C.CheckpointError, match="plain.pt is not an esmgear_fast checkpoint"):
        C.load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(C.CheckpointError, match="text.pt is not a readable checkpoint"):
        C.load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        C.load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()            # leaves a cached gaussian in numpy's state
    state = C.rng_state()
    C.atomic_save({"rng": state}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(4))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    C.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(4))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def _tiny_task(fusion="serial", hidden=(16, 16)):
    from esmgear_fast.models.factory import ModelConfig, build_model
    from esmgear_fast.tasks import TaskConfig, build_task

    class Info:
        tasks = ["a", "b", "c"]
        task_type = "multilabel"
    model = build_model(ModelConfig(esm="random:tiny", structure="gearnet", fusion=fusion, hidden_dims=list(hidden)))
    return build_task(TaskConfig(name="multiple_binary"), model, Info())


def test_init_from_published_esm_gearnet_file(tmp_path):
    from esmgear_fast.models.factory import to_esm_gearnet_state_dict
    torch.manual_seed(0)
    source = _tiny_task()
    path = tmp_path / "esm_gearnet.pth"
    torch.save(to_esm_gearnet_state_dict(source.model), path)     # the published layout
    torch.manual_seed(1)
    target = _tiny_task()
    assert not torch.equal(target.model.structure_model.layers[0].linear.weight,
                           source.model.structure_model.layers[0].linear.weight)
    msg = C.load_init_weights(target, path)
    assert "published" in msg
    src, dst = source.model.state_dict(), target.model.state_dict()
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    # another architecture: the error names what differs
    other = _tiny_task(hidden=(8, 8))
    with pytest.raises(C.CheckpointError) as e:
        C.load_init_weights(other, path)
    assert "structure_model" in str(e.value)
