"""Loading the compiled extension, and what `auto` does when no compiled kernel fits."""
import subprocess
import sys

import pytest
import torch

import esmgear_fast as ef


def test_stale_build_gives_instructions():
    code = "import torch; torch.__version__ = '1.12.0'; import esmgear_fast"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "built for torch" in out.stderr and "1.12.0" in out.stderr
    assert "pip install --no-build-isolation -e ." in out.stderr


def test_kernels_are_registered_for_cpu():
    for op in ("radius_graph", "knn_graph"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"esmgear_fast::{op}", "CPU")


def test_auto_warns_once_when_only_the_reference_fits(monkeypatch):
    monkeypatch.setattr(ef.backend, "_warned", set())
    monkeypatch.setitem(ef.backend.AVAILABILITY, "extension", lambda device: device.type == "cpu")
    device = torch.device("cuda")
    with pytest.warns(UserWarning, match="slow plain-PyTorch reference"):
        assert ef.backend.resolve("knn_graph", "auto", device, ("extension", "reference")) == "reference"
    with pytest.raises(ef.BackendUnavailableError, match="FORCE_CUDA=1"):
        ef.backend.resolve("knn_graph", "extension", device, ("extension", "reference"))
    assert ef.backend.resolve("knn_graph", "auto", torch.device("cpu"), ("extension", "reference")) == "extension"
