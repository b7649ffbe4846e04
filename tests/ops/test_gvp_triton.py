"""The fused Triton GVPConv kernel (esmgear_fast.kernels.gvp_conv) against the reference, forward and
backward. Without a GPU it runs under TRITON_INTERPRET=1 (set by tests/conftest.py), so sizes are small."""
import pytest
import torch

import esmgear_fast as ef
from esmgear_fast import BackendUnavailableError
from esmgear_fast.backend import triton_available
from esmgear_fast.ops import gvp_conv_message
from esmgear_fast.ops.gvp import pack_gvps

from test_gvp_ops import WEIGHT_FIELDS, assert_conv_parity, make_stack, random_inputs, real_inputs

pytestmark = pytest.mark.skipif(
    not triton_available(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
    reason="triton is not installed (or TRITON_INTERPRET=1 is not set on a CPU-only machine)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TRITON_CONFIGS = [  # (si, vi, se, ve, so, vo, gate, acts, n_layers)
    (5, 3, 4, 1, 6, 3, False, ("relu", "sigmoid"), 3),
    (5, 3, 4, 1, 6, 3, True, ("relu", "sigmoid"), 3),
    (5, 2, 4, 2, 4, 5, True, ("silu", "silu"), 2),
    (5, 2, 4, 0, 4, 3, False, ("sigmoid", "relu"), 1),
    (5, 0, 4, 2, 4, 3, False, ("relu", None), 3),
    (17, 3, 4, 1, 20, 18, False, ("relu", "sigmoid"), 3),  # sizes past one 16-wide tile
]


def to_device(*xs):
    return [None if x is None else x.to(DEVICE) for x in xs]


@pytest.mark.parametrize("config", TRITON_CONFIGS)
def test_triton_parity_random_float32(config):
    si, vi, se, ve, so, vo, gate, acts, n_layers = config
    stack = make_stack(si, vi, se, ve, so, vo, gate, acts, n_layers, seed=61, dtype=torch.float32)
    # 40 edges on 12 nodes: some targets get more edges than one 16-edge tile; 2 isolated nodes
    s, v, es, ev, ei = random_inputs(12, 90, si, vi, se, ve, seed=62, dtype=torch.float32, isolated=2)
    out, _ = assert_conv_parity("triton", s, v, es, ev, ei, stack, atol=2e-5, rtol=2e-5)
    assert torch.all(out[0][-2:] == 0) and torch.all(out[1][-2:] == 0)


@pytest.mark.parametrize("gate", [False, True])
def test_triton_parity_real_chain(gate):
    s, v, es, ev, ei = real_inputs(n_proteins=1, max_len=40, dtype=torch.float32)
    stack = make_stack(6, 3, 4, 1, 8, 4, gate, seed=63, dtype=torch.float32)
    assert_conv_parity("triton", s, v, es, ev, ei, stack, atol=1e-4, rtol=1e-4)


def test_triton_float16():
    s, v, es, ev, ei = real_inputs(n_proteins=1, max_len=40, dtype=torch.float32)
    stack = make_stack(6, 3, 4, 1, 8, 4, True, seed=64, dtype=torch.float32)
    ref = ef.reference.gvp_conv_message(s, v, es, ev, ei, stack)
    half_stack = [w._replace(**{f: None if getattr(w, f) is None else getattr(w, f).half() for f in WEIGHT_FIELDS})
                  for w in stack]
    out = gvp_conv_message(s.half(), v.half(), es.half(), ev.half(), ei, half_stack, backend="triton")
    assert out[0].dtype == torch.float16
    torch.testing.assert_close(out[0].float(), ref[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out[1].float(), ref[1], atol=2e-2, rtol=2e-2)
    # backward (recomputed in float32) runs and matches the float32 reference gradient of s
    s_h = s.half().requires_grad_(True)
    out = gvp_conv_message(s_h, v.half(), es.half(), ev.half(), ei, half_stack, backend="triton")
    out[0].float().sum().backward()
    s32 = s.clone().requires_grad_(True)
    ef.reference.gvp_conv_message(s32, v, es, ev, ei, stack)[0].sum().backward()
    torch.testing.assert_close(s_h.grad.float(), s32.grad, atol=2e-2, rtol=2e-2)


def test_triton_gradcheck_float64():
    stack = make_stack(3, 2, 2, 1, 3, 2, True, ("silu", "sigmoid"), seed=65)
    s, v, es, ev, ei = random_inputs(5, 12, 3, 2, 2, 1, seed=66, isolated=1)
    params, acts, gates = pack_gvps(stack)
    from esmgear_fast.kernels.gvp_conv import gvp_conv_message_triton, target_csr

    rowptr, perm = target_csr(ei, 5)
    mask = [p is not None for p in params]
    ps = [p.clone().requires_grad_(True) for p in params if p is not None]
    empty = s.new_empty(0)
    inputs = [t.clone().requires_grad_(True) for t in (s, v, es, ev)]

    def fn(s, v, es, ev, *flat):
        it = iter(flat)
        full = [next(it) if m else empty for m in mask]
        return gvp_conv_message_triton(s, v, es, ev, ei, rowptr, perm, full, acts, gates, 5)

    # fast mode (random projections of the Jacobian): the interpreter makes each forward slow
    assert torch.autograd.gradcheck(fn, (*inputs, *ps), atol=1e-6, fast_mode=True)


def test_triton_csr_reuse_and_empty_graph():
    from esmgear_fast.kernels.gvp_conv import target_csr

    stack = make_stack(3, 2, 2, 1, 4, 2, seed=67, dtype=torch.float32)
    s, v, es, ev, ei = random_inputs(8, 30, 3, 2, 2, 1, seed=68, dtype=torch.float32)
    csr = target_csr(ei, 8)
    rowptr, perm = csr
    assert torch.equal(rowptr[1:] - rowptr[:-1], torch.bincount(ei[1], minlength=8))
    assert torch.all(ei[1][perm][1:] >= ei[1][perm][:-1])
    a = gvp_conv_message(s, v, es, ev, ei, stack, backend="triton", csr=csr)
    b = ef.reference.gvp_conv_message(s, v, es, ev, ei, stack)
    torch.testing.assert_close(a[0], b[0], atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="csr must be"):
        gvp_conv_message(s, v, es, ev, ei, stack, backend="triton", csr=(rowptr[:-1], perm))
    empty = gvp_conv_message(s, v, es[:0], ev[:0], ei[:, :0], stack, backend="triton")
    assert torch.all(empty[0] == 0) and torch.all(empty[1] == 0) and empty[1].shape == (8, 2, 3)


def test_triton_unsupported_configs_raise():
    s, v, es, ev, ei = random_inputs(6, 12, 3, 2, 2, 1, seed=69, dtype=torch.float32)
    no_vectors_out = make_stack(3, 2, 2, 1, 4, 0, seed=70, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match="needs vector inputs and outputs"):
        gvp_conv_message(s, v, es, ev, ei, no_vectors_out, backend="triton")
    four = make_stack(3, 2, 2, 1, 4, 2, n_layers=4, seed=71, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match="at most 3 GVPs"):
        gvp_conv_message(s, v, es, ev, ei, four, backend="triton")
    with pytest.raises(ValueError, match="edge_index has entries outside"):
        gvp_conv_message(s, v, es, ev, ei + 6, make_stack(3, 2, 2, 1, 4, 2, dtype=torch.float32), backend="triton")


def test_triton_opcheck():
    from esmgear_fast.kernels.gvp_conv import gvp_conv_message_triton, target_csr

    stack = make_stack(3, 2, 2, 1, 3, 2, True, seed=72, dtype=torch.float32)
    s, v, es, ev, ei = random_inputs(6, 15, 3, 2, 2, 1, seed=73, dtype=torch.float32)
    params, acts, gates = pack_gvps(stack)
    params = [s.new_empty(0) if p is None else p for p in params]
    rowptr, perm = target_csr(ei, 6)
    torch.library.opcheck(gvp_conv_message_triton, (s, v, es, ev, ei, rowptr, perm, params, acts, gates, 6))


def test_triton_torch_compile_fullgraph():
    stack = make_stack(3, 2, 2, 1, 3, 2, True, seed=74, dtype=torch.float32)
    s, v, es, ev, ei = random_inputs(8, 20, 3, 2, 2, 1, seed=75, dtype=torch.float32)
    s.requires_grad_(True)

    def fn(s, v, es, ev):
        out_s, out_v = gvp_conv_message(s, v, es, ev, ei, stack, backend="triton")
        return out_s.sum() + (out_v * out_v).sum()

    loss = torch.compile(fn, fullgraph=True)(s, v, es, ev)
    ref_loss = fn(s, v, es, ev)
    torch.testing.assert_close(loss, ref_loss)
    (g,) = torch.autograd.grad(loss, s)
    (g_ref,) = torch.autograd.grad(ref_loss, s)
    torch.testing.assert_close(g, g_ref)
