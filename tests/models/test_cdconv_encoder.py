"""The CDConv encoder (ESM-GearNet configuration): residue frames, pair pooling, invariance, BatchNorm
modes, empty / tiny proteins, checkpoint key mapping, and parity with the original (ProteinWorkshop's
copy of the CDConv layers and encoder).

Peer loading: ProteinWorkshop 0.2.5's ``layers/cdconv.py`` and ``cdconv.py`` are loaded as single files
with importlib (the package import pulls graphein, hydra, wandb...). ``torch_sparse`` is stubbed (only
used for a branch never taken with tensor edges); for the encoder file ``omegaconf.ListConfig``,
``graphein...ProteinBatch`` (type hints only), ``proteinworkshop.types.EncoderOutput`` (a dict) and
``proteinworkshop.models.utils.get_aggregation`` (torch_geometric's ``global_mean_pool`` /
``global_add_pool``) are stubbed.
"""
import importlib.util
import math
import sys
import types

import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.models import CDConv, cdconv_pool, cdconv_state_dict, residue_frames
from esmgear_fast.testing import real_proteins

ESM_GEARNET_CUTOFFS = [8.0, 12.0, 16.0, 20.0]


def _load_file(name, path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_proteinworkshop_cdconv():
    """(layers module, encoder module) of ProteinWorkshop's CDConv, or skip."""
    pytest.importorskip("torch_geometric")
    pytest.importorskip("torch_scatter")
    pytest.importorskip("torch_cluster")
    spec = importlib.util.find_spec("proteinworkshop")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("proteinworkshop is not installed")
    root = list(spec.submodule_search_locations)[0] + "/models/graph_encoders"
    try:
        import torch_sparse  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch_sparse")
        stub.SparseTensor = type("SparseTensor", (), {})
        sys.modules["torch_sparse"] = stub
    layers = _load_file("_proteinworkshop_cdconv_layers", root + "/layers/cdconv.py")
    if "_proteinworkshop_cdconv_encoder" not in sys.modules:
        from torch_geometric.nn import global_add_pool, global_mean_pool

        def stub_module(name, **attrs):
            if name not in sys.modules:
                module = types.ModuleType(name)
                module.__dict__.update(attrs)
                sys.modules[name] = module
            return sys.modules[name]

        try:
            import omegaconf  # noqa: F401
        except ImportError:
            stub_module("omegaconf", ListConfig=type("ListConfig", (list,), {}))
        try:
            import graphein.protein.tensor.data  # noqa: F401
        except ImportError:
            for name in ("graphein", "graphein.protein", "graphein.protein.tensor"):
                stub_module(name)
            stub_module("graphein.protein.tensor.data", ProteinBatch=type("ProteinBatch", (), {}))
        # The encoder file imports the layers through the package path: point it at the loaded file.
        saved = {k: sys.modules.get(k) for k in ("proteinworkshop", "proteinworkshop.models",
                                                  "proteinworkshop.models.graph_encoders",
                                                  "proteinworkshop.models.graph_encoders.layers",
                                                  "proteinworkshop.models.graph_encoders.layers.cdconv",
                                                  "proteinworkshop.models.utils", "proteinworkshop.types")}
        try:
            for name in list(saved)[:4]:
                stub_module(name)
            sys.modules["proteinworkshop.models.graph_encoders.layers.cdconv"] = layers
            stub_module("proteinworkshop.models.utils", get_aggregation=lambda kind: {"mean": global_mean_pool,
                                                                      "sum": global_add_pool}[kind])
            stub_module("proteinworkshop.types", EncoderOutput=dict)
            _load_file("_proteinworkshop_cdconv_encoder", root + "/cdconv.py")
        finally:
            for k, v in saved.items():  # leave no fake proteinworkshop package behind
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
    return layers, sys.modules["_proteinworkshop_cdconv_encoder"]


def random_rotation(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def small_encoder(input_dim=21, seed=0, dropout=0.2, backend=None):
    torch.manual_seed(seed)
    return CDConv(input_dim=input_dim, embedding_dim=16, hidden_dims=[32, 64, 64, 128], dropout=dropout,
                  backend=backend)


def one_hot(batch):
    return torch.nn.functional.one_hot(batch.residue_type, 21).to(batch.pos.dtype)


# ----------------------------------------------------------------------------------------------------------
# Frames


def test_frames_orthonormal_right_handed_and_equivariant_on_real_proteins():
    batch = collate(real_proteins(8, min_len=30))
    frames = residue_frames(batch.pos.double(), batch.batch)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(frames @ frames.transpose(1, 2), eye.expand_as(frames), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(frames), torch.ones(batch.num_nodes, dtype=torch.float64))
    # p -> Q p + t  gives  R -> R Q^T.
    q = random_rotation()
    moved = residue_frames(batch.pos.double() @ q.T + torch.tensor([3.0, -40.0, 7.5], dtype=torch.float64),
                           batch.batch)
    torch.testing.assert_close(moved, frames @ q.T, atol=1e-10, rtol=0)


def test_frames_follow_the_geometric_definition():
    # Independent of the implementation's vectorisation: for an inner residue k, b is the normalised
    # bisector-like difference of the bond directions, v their normalised cross product, o = b x v.
    pos = real_proteins(1, min_len=40)[0].pos.double()
    frames = residue_frames(pos)
    for k in (1, 7, 20, len(pos) - 2):
        u_in = (pos[k] - pos[k - 1]) / (pos[k] - pos[k - 1]).norm()
        u_out = (pos[k + 1] - pos[k]) / (pos[k + 1] - pos[k]).norm()
        b = (u_in - u_out) / (u_in - u_out).norm()
        v = torch.linalg.cross(u_in, u_out)
        v = v / v.norm()
        torch.testing.assert_close(frames[k], torch.stack([b, v, torch.linalg.cross(b, v)]))
    torch.testing.assert_close(frames[0], frames[1])
    torch.testing.assert_close(frames[-1], frames[-2])


def test_frames_match_the_original_per_protein():
    _, encoder = load_proteinworkshop_cdconv()
    proteins = real_proteins(6, min_len=30)
    # Real lengths plus real fragments of 3, 4, 6, 7 residues (n = 5 is the original's torch.cross bug).
    fragments = [p.pos[:n] for p, n in zip(proteins, (3, 4, 6, 7))]
    chains = [p.pos for p in proteins] + fragments
    pos = torch.cat(chains)
    batch = torch.repeat_interleave(torch.arange(len(chains)), torch.tensor([len(c) for c in chains]))
    ours = residue_frames(pos, batch)
    original = torch.cat([encoder.CDConvModel.orientation(c) for c in chains])
    torch.testing.assert_close(ours, original, atol=1e-6, rtol=1e-6)
    # ProteinWorkshop itself runs the frames over the whole packed batch: the end residues of every
    # protein then mix in its neighbours' coordinates (what per-protein frames avoid).
    whole_batch = encoder.CDConvModel.orientation(pos)
    assert not torch.allclose(whole_batch, original, atol=1e-3)


def test_frames_of_five_residues_are_the_inner_frames_of_the_chain():
    # The original crosses along the residue axis for n = 5 ([3, 3] tensors); ours must agree with the
    # frames the same residues get inside the full chain (inner frames depend on the neighbours only).
    for protein in real_proteins(3, min_len=30):
        full = residue_frames(protein.pos.double())
        for start in (0, 5, 11):
            part = residue_frames(protein.pos[start:start + 5].double())
            torch.testing.assert_close(part[1:4], full[start + 1:start + 4])
            torch.testing.assert_close(part[0], part[1])
            torch.testing.assert_close(part[4], part[3])


def test_frames_of_tiny_proteins_and_no_leakage():
    real = real_proteins(2, min_len=40)
    chains = [real[0].pos[:2], real[0].pos[:1], real[1].pos[:3], real[0].pos[5:9], real[1].pos[:40]]
    pos = torch.cat(chains).double()
    batch = torch.repeat_interleave(torch.arange(5), torch.tensor([len(c) for c in chains]))
    frames = residue_frames(pos, batch)
    assert torch.isfinite(frames).all()
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(frames @ frames.transpose(1, 2), eye.expand_as(frames), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(frames), torch.ones(len(pos), dtype=torch.float64))
    # 3 and 4 residues: every residue has the frame of an inner residue of the same chain.
    full0 = residue_frames(real[0].pos.double())
    torch.testing.assert_close(frames[6:10], full0[6:8].repeat_interleave(2, dim=0))
    # 2 residues: third axis along the bond, both residues share the frame; 1 residue: identity.
    bond = (pos[1] - pos[0]) / (pos[1] - pos[0]).norm()
    torch.testing.assert_close(frames[0, 2], bond)
    torch.testing.assert_close(frames[1], frames[0])
    torch.testing.assert_close(frames[2], eye)
    # Every protein's frames equal the frames computed for it alone.
    offset = 0
    for chain in chains:
        alone = residue_frames(chain.double())
        torch.testing.assert_close(frames[offset:offset + len(chain)], alone)
        offset += len(chain)
    assert residue_frames(torch.zeros(0, 3)).shape == (0, 3, 3)


def test_frames_degenerate_geometry_is_finite():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [2.0, 0, 0], [3.0, 1, 0]])
    frames = residue_frames(pos)
    assert torch.isfinite(frames).all()
    with pytest.raises(ValueError, match="sorted"):
        residue_frames(pos, torch.tensor([0, 1, 1, 0, 1]))
    with pytest.raises(ValueError, match="pos must be"):
        residue_frames(pos[:, :2])


# ----------------------------------------------------------------------------------------------------------
# Pooling


def test_pooling_odd_lengths_and_numbering_gaps():
    pos = torch.arange(24, dtype=torch.float64).reshape(8, 3)
    x = torch.arange(16, dtype=torch.float64).reshape(8, 2)
    seq = torch.tensor([1, 2, 5, 7, 8, 10, 11, 3])   # protein 0: 5 residues with gaps; 1: 2; 2: 1
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    ori = residue_frames(pos + torch.randn(8, 3, dtype=torch.float64), batch)
    px, ppos, pseq, pori, pbatch = cdconv_pool(x, pos, seq, ori, batch)
    assert pbatch.tolist() == [0, 0, 0, 1, 2]
    assert pseq.tolist() == [0, 2, 4, 5, 1]            # floor(first of the pair / 2)
    pairs = [[0, 1], [2, 3], [4], [5, 6], [7]]
    for k, members in enumerate(pairs):
        torch.testing.assert_close(px[k], x[members].mean(0))
        torch.testing.assert_close(ppos[k], pos[members].mean(0))
        mean = ori[members].mean(0)
        torch.testing.assert_close(pori[k], mean / mean.norm(dim=-1, keepdim=True))
    # Empty proteins (num_graphs) keep their slot.
    _, _, _, _, b2 = cdconv_pool(x, pos, seq, ori, torch.tensor([0, 0, 0, 0, 0, 2, 2, 3]), num_graphs=5)
    assert b2.tolist() == [0, 0, 0, 2, 3]


def test_pooling_matches_original_average_pooling():
    layers, _ = load_proteinworkshop_cdconv()
    proteins = real_proteins(3, min_len=50, max_len=200)
    lengths = [len(proteins[0]), 31, 44]  # odd and even lengths
    pos = torch.cat([p.pos[:n] for p, n in zip(proteins, lengths)])
    batch_vector = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    batch = types.SimpleNamespace(pos=pos, batch=batch_vector, num_nodes=len(pos),
                                  num_residues=torch.tensor(lengths))
    # The original pools by residue number // 2, ESM-GearNet (and we) by position: they agree on
    # contiguous numbering, which is used here.
    seq = torch.cat([torch.arange(int(n)) for n in batch.num_residues])
    ori = residue_frames(batch.pos, batch.batch)
    x = torch.randn(batch.num_nodes, 5)
    ours = cdconv_pool(x, batch.pos, seq, ori, batch.batch)
    peer = layers.AvgPooling()(x, batch.pos, seq[:, None], ori, batch.batch)
    for a, b in zip(ours, peer):
        torch.testing.assert_close(a, b.reshape(a.shape))


# ----------------------------------------------------------------------------------------------------------
# Encoder


def test_encoder_configuration_and_parameter_names():
    model = CDConv(input_dim=1280)
    state = model.state_dict()
    assert state["embedding.weight"].shape == (16, 1280) and "embedding.bias" not in state
    assert len(model.layers) == 8
    assert [layer.conv.r for layer in model.layers] == [8.0, 8.0, 12.0, 12.0, 16.0, 16.0, 20.0, 20.0]
    assert state["layers.0.identity.module.3.weight"].shape == (256, 16)
    assert state["layers.0.input.module.3.weight"].shape == (64, 16)      # width = 256 * 16 / 64
    assert state["layers.0.conv.WeightNet.Ws.0"].shape == (21, 7, 32)
    assert state["layers.0.conv.W"].shape == (32 * 64, 64)
    assert state["layers.7.conv.W"].shape == (32 * 512, 512)
    assert state["layers.7.output.module.3.weight"].shape == (2048, 512)
    assert "layers.1.identity.module.3.weight" not in state               # 256 -> 256: plain shortcut
    assert state["layers.0.input.module.0.running_mean"].shape == (16,)
    assert model.layers[0].input.module[0].momentum == 0.2
    assert model.layers[0].input.module[1].negative_slope == 0.1
    assert model.layers[0].output.module[2].p == 0.2
    assert model.output_dim == 2048


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_encoder_matches_original_on_real_proteins(backend):
    torch.manual_seed(0)
    _, encoder = load_proteinworkshop_cdconv()
    proteins = real_proteins(3, min_len=40, max_len=160)
    batch = collate(proteins)
    ours = small_encoder(seed=3, backend=backend).eval()
    peer = encoder.CDConvModel(geometric_radius=4.0, sequential_kernel_size=21, kernel_channels=[32],
                               channels=[32, 64, 64, 128], base_width=16.0, embedding_dim=16, batch_norm=True,
                               dropout=0.2, bias=False, readout="mean")
    # ProteinWorkshop's radii are r * stage; ESM-GearNet's are [8, 12, 16, 20]: set them per layer.
    for k, layer in enumerate(peer.layers):
        layer.conv.r = ESM_GEARNET_CUTOFFS[k // 2]
    x = one_hot(batch)
    peer.embedding(x)  # materialise the LazyLinear
    # Randomise BatchNorm statistics and affine parameters so eval mode is not the identity.
    with torch.no_grad():
        for module in ours.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    state = dict(ours.state_dict())
    state["embedding.bias"] = torch.zeros(16)  # the original ESM-GearNet embedding has no bias
    peer.load_state_dict(state, strict=True)
    peer.eval()
    # Frames per protein (ProteinWorkshop's orientation over the packed batch leaks across proteins).
    starts = batch.ptr.tolist()
    peer.orientation = lambda pos: torch.cat([encoder.CDConvModel.orientation(pos[a:b])
                                              for a, b in zip(starts[:-1], starts[1:])])
    # The original pools by residue number // 2: give it contiguous numbering (pairs by position).
    seq = torch.cat([torch.arange(int(n)) for n in batch.num_residues])
    data = types.SimpleNamespace(x=x, pos=batch.pos, seq_pos=seq[:, None], batch=batch.batch)
    expected = peer(data)["graph_embedding"]
    got = ours(x, batch.pos, seq, batch.batch)["graph_feature"]
    assert got.shape == (3, 128)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert got.abs().max() > 1e-2


def test_encoder_training_mode_matches_original():
    # Train mode (batch statistics, running-stat updates), dropout off on both sides.
    _, encoder = load_proteinworkshop_cdconv()
    batch = collate(real_proteins(2, min_len=60, max_len=120))
    ours = small_encoder(seed=4, dropout=0.0).train()
    peer = encoder.CDConvModel(geometric_radius=4.0, sequential_kernel_size=21, kernel_channels=[32],
                               channels=[32, 64, 64, 128], dropout=0.0, readout="mean").train()
    for k, layer in enumerate(peer.layers):
        layer.conv.r = ESM_GEARNET_CUTOFFS[k // 2]
    x = one_hot(batch)
    peer.embedding(x)
    state = dict(ours.state_dict())
    state["embedding.bias"] = torch.zeros(16)
    peer.load_state_dict(state, strict=True)
    starts = batch.ptr.tolist()
    peer.orientation = lambda pos: torch.cat([encoder.CDConvModel.orientation(pos[a:b])
                                              for a, b in zip(starts[:-1], starts[1:])])
    seq = torch.cat([torch.arange(int(n)) for n in batch.num_residues])
    data = types.SimpleNamespace(x=x, pos=batch.pos, seq_pos=seq[:, None], batch=batch.batch)
    expected = peer(data)["graph_embedding"]
    got = ours(x, batch.pos, seq, batch.batch)["graph_feature"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # Backward through the whole encoder: every parameter gradient equals the original's.
    grad = torch.randn_like(got)
    names = [k for k, _ in ours.named_parameters()]
    ours_grads = torch.autograd.grad(got, list(ours.parameters()), grad)
    peer_params = dict(peer.named_parameters())
    peer_grads = torch.autograd.grad(expected, [peer_params[k] for k in names], grad)
    for name, a, b in zip(names, ours_grads, peer_grads):
        atol = 1e-5 * max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"grad of {name}: {m}")
    assert any(float(g.abs().max()) > 1e-3 for g in ours_grads)
    ours_state, peer_state = ours.state_dict(), peer.state_dict()
    for key in ours_state:
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(ours_state[key], peer_state[key], rtol=1e-4, atol=1e-5)


def test_encoder_is_rotation_and_translation_invariant():
    batch = collate(real_proteins(3, min_len=50, max_len=250))
    model = small_encoder(seed=1).double().eval()
    x = one_hot(batch).double()
    pos = batch.pos.double()
    out = model(x, pos, batch.residue_number, batch.batch)["graph_feature"]
    moved = pos @ random_rotation(seed=5).T + torch.tensor([12.0, -3.0, 40.0], dtype=torch.float64)
    out_moved = model(x, moved, batch.residue_number, batch.batch)["graph_feature"]
    torch.testing.assert_close(out_moved, out, rtol=1e-9, atol=1e-11)
    assert out.abs().max() > 1e-3
    # Not trivially invariant: mirroring flips the handedness of the frames and changes the output.
    mirrored = pos * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    out_mirrored = model(x, mirrored, batch.residue_number, batch.batch)["graph_feature"]
    assert not torch.allclose(out_mirrored, out, rtol=1e-4, atol=1e-6)


def test_batchnorm_train_and_eval_modes():
    batch = collate(real_proteins(2, min_len=60, max_len=200))
    model = small_encoder(seed=2, dropout=0.0)
    x = one_hot(batch)
    bn = model.layers[0].input.module[0]
    before = bn.running_mean.clone()
    model.train()
    train_out = model(x, batch.pos, batch.residue_number, batch.batch)["graph_feature"]
    assert not torch.equal(bn.running_mean, before)           # statistics updated
    assert int(bn.num_batches_tracked) == 1
    # Batch statistics of the input of the first block: momentum 0.2 update from (0, 1).
    h = model.embedding(x).detach()
    torch.testing.assert_close(bn.running_mean, 0.2 * h.mean(0))
    model.eval()
    eval_out = model(x, batch.pos, batch.residue_number, batch.batch)["graph_feature"]
    again = model(x, batch.pos, batch.residue_number, batch.batch)["graph_feature"]
    assert torch.equal(eval_out, again)
    assert not torch.allclose(eval_out, train_out, atol=1e-4)
    # Training on a batch whose deepest stage has one residue fails in BatchNorm, as in the original.
    tiny = collate(real_proteins(1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.train()(one_hot(tiny)[:6], tiny.pos[:6], tiny.residue_number[:6])


def test_empty_and_tiny_proteins_and_no_cross_protein_leakage():
    real = real_proteins(2, min_len=50, max_len=120)
    pieces = [(real[0].pos, real[0].residue_number, real[0].residue_type),
              (real[1].pos[:1], real[1].residue_number[:1], real[1].residue_type[:1]),
              (real[1].pos[:2], real[1].residue_number[:2], real[1].residue_type[:2]),
              (real[1].pos[:4], real[1].residue_number[:4], real[1].residue_type[:4])]
    pos = torch.cat([p for p, _, _ in pieces]).double()
    seq = torch.cat([s for _, s, _ in pieces])
    x = torch.nn.functional.one_hot(torch.cat([t for _, _, t in pieces]), 21).double()
    sizes = [len(p) for p, _, _ in pieces]
    # Protein 2 of 5 is empty.
    graph_of = [0, 1, 3, 4]
    batch = torch.repeat_interleave(torch.tensor(graph_of), torch.tensor(sizes))
    model = small_encoder(seed=5).double().eval()
    out = model(x, pos, seq, batch, num_graphs=5)["graph_feature"]
    assert out.shape == (5, 128) and torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(128, dtype=torch.float64))
    offset = 0
    for g, size in zip(graph_of, sizes):
        alone = model(x[offset:offset + size], pos[offset:offset + size], seq[offset:offset + size])["graph_feature"]
        torch.testing.assert_close(out[g], alone[0], rtol=1e-10, atol=1e-12)
        offset += size
    # A one-residue protein is rotation invariant too (identity frame, only the self loop).
    q = random_rotation(seed=9)
    one = model(x[sizes[0]:sizes[0] + 1], pos[sizes[0]:sizes[0] + 1] @ q.T, seq[sizes[0]:sizes[0] + 1])
    torch.testing.assert_close(one["graph_feature"][0], out[1], rtol=1e-10, atol=1e-12)
    two = model(x[sizes[0] + 1:sizes[0] + 3], pos[sizes[0] + 1:sizes[0] + 3] @ q.T, seq[sizes[0] + 1:sizes[0] + 3])
    torch.testing.assert_close(two["graph_feature"][0], out[3], rtol=1e-10, atol=1e-12)


def test_encoder_bad_inputs():
    model = small_encoder()
    batch = collate(real_proteins(1))
    x = one_hot(batch)
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :20], batch.pos, batch.residue_number)
    with pytest.raises(ValueError, match="residue_number"):
        model(x, batch.pos, batch.residue_number[:-1])
    bad = batch.pos.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(x, bad, batch.residue_number)
    with pytest.raises(ValueError, match="num_graphs"):
        model(x, batch.pos, batch.residue_number, torch.ones(batch.num_nodes, dtype=torch.long), num_graphs=1)
    with pytest.raises(ValueError, match="empty"):
        model(x[:0], batch.pos[:0], batch.residue_number[:0])


# ----------------------------------------------------------------------------------------------------------
# Checkpoint mapping


def test_cdconv_state_dict_from_esm_gearnet_checkpoints():
    source = small_encoder(seed=7)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-1, 1)
    encoder_state = source.state_dict()
    esm_keys = {"sequence_model.model.embed_tokens.weight": torch.randn(33, 8),
                "sequence_model.model.layers.0.fc1.weight": torch.randn(4, 8)}
    fusion = {**esm_keys, **{f"structure_model.{k}": v for k, v in encoder_state.items()}}
    engine = {"model": {**{f"model.{k}": v for k, v in fusion.items()}, "mlp.layers.0.weight": torch.randn(3, 4)},
              "optimizer": {"state": {}, "param_groups": []}}
    data_parallel = {f"module.{k}": v for k, v in encoder_state.items()}
    for checkpoint in (fusion, engine, encoder_state, data_parallel):
        target = small_encoder(seed=8)
        mapped = cdconv_state_dict(checkpoint)
        assert set(mapped) == set(encoder_state)
        target.load_state_dict(mapped, strict=True)
        for key, value in encoder_state.items():
            assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(KeyError, match="no CDConv"):
        cdconv_state_dict({"sequence_model.a": torch.zeros(1)})
    with pytest.raises(KeyError, match="GearNet or GVP"):
        cdconv_state_dict({"structure_model.layers.0.linear.weight": torch.zeros(1)})


def test_full_size_encoder_loads_original_state_dict():
    # The full ESM-GearNet configuration (input_dim 1280): a state dict of the original encoder
    # (ProteinWorkshop's copy, same module names) loads with strict=True after dropping the bias of
    # ProteinWorkshop's LazyLinear embedding (ESM-GearNet's embedding has none).
    _, encoder = load_proteinworkshop_cdconv()
    peer = encoder.CDConvModel(geometric_radius=4.0, sequential_kernel_size=21, kernel_channels=[32],
                               channels=[256, 512, 1024, 2048], base_width=16.0, embedding_dim=16, dropout=0.2)
    peer.embedding(torch.zeros(1, 1280))
    state = {k: v for k, v in peer.state_dict().items() if k != "embedding.bias"}
    model = CDConv(input_dim=1280)
    model.load_state_dict(cdconv_state_dict({f"structure_model.{k}": v for k, v in state.items()}), strict=True)
    assert torch.equal(model.layers[7].conv.W, peer.layers[7].conv.W)
    assert math.isclose(sum(p.numel() for p in model.parameters()),
                        sum(p.numel() for p in peer.parameters()) - 16)


def test_integer_input_is_a_clear_error():
    from esmgear_fast.models import CDConv as CDConvEncoder

    with pytest.raises(TypeError, match="floating-point"):
        CDConvEncoder(input_dim=21)(torch.zeros(5, 21, dtype=torch.long), torch.randn(5, 3), torch.arange(5))
