"""cdconv against the original CDConv layer (ProteinWorkshop 0.2.5's copy of hehefan's code), optional.

Runs only when ``proteinworkshop`` and ``torch_geometric`` are installed (not part of the default test
install). ProteinWorkshop's package ``__init__`` pulls in its whole training stack, and the layer file
imports ``torch_sparse`` although the path used here (a plain ``edge_index`` tensor) never touches it, so
the layer file is loaded on its own, with a placeholder module standing in for ``torch_sparse`` when that
is not installed.
"""
import importlib.util
import os
import sys
import types

import pytest
import torch

from esmgear_fast.models.cdconv import residue_frames
from esmgear_fast.ops import cdconv
from esmgear_fast.testing import real_proteins

TRITON_OK = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(scope="module")
def original():
    pytest.importorskip("torch_geometric")
    spec = importlib.util.find_spec("proteinworkshop")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("proteinworkshop is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "graph_encoders", "layers", "cdconv.py")
    if not os.path.isfile(path):
        pytest.skip(f"no CDConv layer file at {path}")
    if "torch_sparse" not in sys.modules:  # (other test files may have put their placeholder there already)
        try:
            import torch_sparse  # noqa: F401
        except ImportError:
            placeholder = types.ModuleType("torch_sparse")
            placeholder.SparseTensor = type("SparseTensor", (), {})
            sys.modules["torch_sparse"] = placeholder
    name = "_proteinworkshop_cdconv_layer"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    sys.modules[name] = module  # torch_geometric's inspector looks the module up by name
    module.__spec__.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["reference", "extension", "triton"])
@pytest.mark.parametrize("dims,l,r", [([16, 32], 11, 8.0), ([32], 21, 12.0)])
def test_matches_original_layer(original, backend, dims, l, r):
    if backend == "triton" and not TRITON_OK:
        pytest.skip("triton needs a GPU or TRITON_INTERPRET=1")  # pragma: no cover
    from torch_geometric.nn import radius
    from torch_geometric.utils import add_self_loops, remove_self_loops

    torch.manual_seed(0)
    protein = real_proteins(1, 40, 80)[0]
    pos = protein.pos.float()
    n = pos.size(0)
    frame = residue_frames(pos)
    seq = protein.residue_number.long()
    conv = original.CDConv(r=r, l=l, kernel_channels=dims, in_channels=8, out_channels=12)
    for b in conv.WeightNet.bs:
        torch.nn.init.normal_(b.data, std=0.3)  # the original zero-initialises biases; exercise them
    x = torch.randn(n, 8, requires_grad=True)
    batch = torch.zeros(n, dtype=torch.long)
    # the original's seq is a float [N, 1] column; its graph: radius (no cap) + self loops, edge (col -> row)
    expected = conv(x, pos, seq.unsqueeze(1).float(), frame, batch)
    row, col = radius(pos, pos, r, batch, batch, max_num_neighbors=9999)
    edge_index, _ = remove_self_loops(torch.stack([col, row]))
    edge_index, _ = add_self_loops(edge_index, num_nodes=n)
    params = [x, *conv.WeightNet.Ws, *conv.WeightNet.bs, conv.W]
    out = cdconv(x, pos, frame, seq, edge_index, list(conv.WeightNet.Ws), list(conv.WeightNet.bs), conv.W, r, l,
                 backend=backend)
    if backend == "reference":
        assert torch.equal(out, expected)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad)):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-4, atol=1e-5)
