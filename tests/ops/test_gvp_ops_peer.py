"""Parity with the original GVP / GVPConv (gvp-pytorch as vendored in ProteinWorkshop 0.2.5).

Optional: needs ``proteinworkshop`` (installed with --no-deps) and ``torch_geometric``. The layer file
is loaded on its own because the package's ``__init__`` imports graphein."""
import importlib.util
import itertools
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from esmgear_fast.ops import GVPWeights, gvp, gvp_conv_message

pytest.importorskip("torch_geometric")
pytest.importorskip("torch_scatter")


@pytest.fixture(scope="module")
def pw():
    spec = importlib.util.find_spec("proteinworkshop")
    if spec is None:
        pytest.skip("proteinworkshop is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "models", "graph_encoders", "layers", "gvp.py")
    name = "_proteinworkshop_gvp_layers"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # torch_geometric's MessagePassing inspects the defining module
    module_spec.loader.exec_module(module)
    return module


ACT = {None: None, "relu": F.relu, "sigmoid": torch.sigmoid, "silu": F.silu}


def weights_of(module, acts):
    vi, vo = module.vi, module.vo
    gate = bool(module.vector_gate and vi and vo)
    if vi and vo:
        wv = module.wv.weight
    elif vo:
        wv = torch.empty(vo, 0, dtype=module.ws.weight.dtype)
    else:
        wv = None
    return GVPWeights(
        module.wh.weight if vi else None, module.ws.weight, module.ws.bias, wv,
        module.wsv.weight if gate else None, module.wsv.bias if gate else None, acts[0], acts[1], gate,
    )


@pytest.mark.parametrize(
    "dims,gate,acts",
    list(itertools.product(
        [(5, 3, 6, 4), (5, 0, 6, 4), (5, 3, 6, 0), (4, 2, 7, 5)],
        [False, True],
        [("relu", "sigmoid"), ("silu", "relu"), (None, None), ("sigmoid", None)],
    )),
)
def test_gvp_matches_proteinworkshop(pw, dims, gate, acts):
    si, vi, so, vo = dims
    torch.manual_seed(0)
    module = pw.GVP((si, vi), (so, vo), activations=(ACT[acts[0]], ACT[acts[1]]), vector_gate=gate).double()
    s, v = torch.randn(7, si, dtype=torch.float64), torch.randn(7, vi, 3, dtype=torch.float64)
    expected = module((s, v) if vi else s)
    exp_s, exp_v = expected if vo else (expected, None)
    out_s, out_v = gvp(s, v if vi else None, weights_of(module, acts))
    torch.testing.assert_close(out_s, exp_s)
    if vo:
        torch.testing.assert_close(out_v, exp_v.double())  # gvp-pytorch makes float32 zeros when vi == 0
    else:
        assert out_v is None


@pytest.mark.parametrize("backend", ["extension", "reference"])
@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_gvp_conv_matches_proteinworkshop_real_graph(pw, backend, gate, n_layers):
    from test_gvp_ops import real_inputs

    s, v, es, ev, ei = real_inputs(n_proteins=2, si=6, vi=3, se=4, ve=1)
    torch.manual_seed(1)
    conv = pw.GVPConv((6, 3), (8, 4), (4, 1), n_layers=n_layers, vector_gate=gate).double()
    exp_s, exp_v = conv((s, v), ei, (es, ev))
    acts = [("relu", "sigmoid")] * (n_layers - 1) + [(None, None)]
    stack = [weights_of(m, a) for m, a in zip(conv.message_func, acts)]
    out_s, out_v = gvp_conv_message(s, v, es, ev, ei, stack, backend=backend)
    torch.testing.assert_close(out_s, exp_s)
    torch.testing.assert_close(out_v, exp_v)
