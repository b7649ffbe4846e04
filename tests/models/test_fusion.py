"""FusionNetwork: every fusion equals a plain composition of the same parts (fair-esm padded ESM-2 +
the structure encoder on an independently built graph + ESM-GearNet's combination written out in
plain PyTorch), the cross block equals nn.MultiheadAttention on padded input, output widths, rigid-motion
invariance, ESM windows, all Table-2 combinations forward + backward on real structures, bad input."""
import dataclasses

import esm as fair_esm
import pytest
import torch
from torch import nn

from esmgear_fast.data import collate
from esmgear_fast.esm import ESM2_CONFIGS, EsmConfig, load_esm, state_dict_from_fair_esm
from esmgear_fast.esm.loading import _load_into
from esmgear_fast.esm.model import ESM2
from esmgear_fast.models import (CDConv, CrossAttentionBlock, FusionNetwork, GearNet, GVPGNN, ModelConfig,
                                 build_model, gvp_radius_graph)
from esmgear_fast.testing import real_complexes, real_proteins, torchdrug_style_graph

TINY = EsmConfig(2, 64, 4)
FUSIONS = ("serial", "parallel", "cross")


# ---------------------------------------------------------------------------------------- references
def fair_esm_pair(config=TINY, seed=0):
    """A fair-esm ESM2 with random weights and our ESM2 holding the same weights."""
    torch.manual_seed(seed)
    ref = fair_esm.model.esm2.ESM2(num_layers=config.num_layers, embed_dim=config.embed_dim,
                                   attention_heads=config.attention_heads).eval()
    with torch.no_grad():  # fair-esm zero-initialises some biases; make every weight matter
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = ESM2(config)
    _load_into(ours, state_dict_from_fair_esm(ref.state_dict(), config.num_layers), "fair-esm")
    return ref, ours.eval()


def fair_esm_residues(ref, sequences, mask=None):
    """fair-esm's last-layer representations on a padded batch, unpadded to [N, D] (BOS/EOS dropped)."""
    alphabet = fair_esm.data.Alphabet.from_architecture("ESM-1b")
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(sequences)])
    if mask is not None:
        start = 0
        for b, s in enumerate(sequences):
            tokens[b, 1:len(s) + 1][mask[start:start + len(s)]] = alphabet.mask_idx
            start += len(s)
    reps = ref(tokens, repr_layers=[ref.num_layers])["representations"][ref.num_layers]
    return torch.cat([reps[b, 1:len(s) + 1] for b, s in enumerate(sequences)])


def one_hot(residue_type):
    out = torch.zeros(residue_type.numel(), 21)
    out[torch.arange(residue_type.numel()), residue_type] = 1.0
    return out


def structure_reference(model, kind, batch, x):
    """The structure encoder on a graph built independently of FusionNetwork.build_graph."""
    B = batch.num_proteins
    if kind in ("gearnet", "gearnet_edge"):
        edges = torchdrug_style_graph(batch.pos, batch.batch, batch.chain_id)
        edge_index, edge_type = edges[:, :2].t(), edges[:, 2]
        kw = dict(pos=batch.pos, residue_type=batch.residue_type) if kind == "gearnet_edge" else {}
        return model(x, edge_index, edge_type, batch.batch, B, **kw)
    if kind == "gvp":
        return model(x, batch.pos, batch.batch, B, edge_index=gvp_radius_graph(batch.pos, batch.batch))
    g = model(x, batch.pos, batch.residue_number, batch.batch, B)["graph_feature"]
    return {"graph_feature": g, "node_feature": g[batch.batch]}


def cross_reference(fusion, seq_node, struct_node, num_residues):
    """ESM-GearNet's cross fusion step by step: per protein [seq ; struct] tokens, padded, TorchDrug's
    SelfAttentionBlock (query/key/value Linears then nn.MultiheadAttention with a key-padding mask)."""
    s, t = fusion.seq_linear(seq_node), fusion.struct_linear(struct_node)
    groups, start = [], 0
    for n in num_residues:
        groups.append(torch.cat([s[start:start + n], t[start:start + n]]))
        start += n
    L = max(g.size(0) for g in groups)
    padded = torch.zeros(len(groups), L, s.size(1))
    valid = torch.zeros(len(groups), L, dtype=torch.bool)
    for b, g in enumerate(groups):
        padded[b, :g.size(0)] = g
        valid[b, :g.size(0)] = True
    blk = fusion.attn
    q, k, v = (lin(padded).transpose(0, 1) for lin in (blk.query, blk.key, blk.value))
    out = blk.attn(q, k, v, key_padding_mask=~valid)[0].transpose(0, 1)
    node = torch.cat([torch.cat([out[b, :n], out[b, n:2 * n]], -1) for b, n in enumerate(num_residues)])
    batch = torch.repeat_interleave(torch.arange(len(num_residues)), torch.tensor(num_residues))
    return node, torch.zeros(len(num_residues), node.size(1)).index_add_(0, batch, node)


def small_structure(kind, input_dim):
    torch.manual_seed(1)
    if kind == "gearnet":
        return GearNet(input_dim, [24, 24])
    if kind == "gearnet_edge":
        return GearNet(input_dim, [24, 24], num_angle_bin=8, edge_input_dim=59)
    if kind == "gvp":
        return GVPGNN(input_dim, node_h_dim=(24, 4), edge_h_dim=(8, 1), num_layers=2)
    return CDConv(input_dim, embedding_dim=8, hidden_dims=[16, 16, 32, 32])


def randomize_batchnorm(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


@pytest.fixture(scope="module")
def batch():
    return collate(real_proteins(3, min_len=40, max_len=140))


@pytest.fixture(scope="module")
def esm_pair():
    return fair_esm_pair()


def make(kind, fusion, esm, cross_dim=32):
    structure = None
    if kind is not None:
        structure = small_structure(kind, esm.embed_dim if (fusion == "serial" and esm is not None) else 21)
        randomize_batchnorm(structure)
    torch.manual_seed(2)
    return FusionNetwork(esm, structure, fusion=fusion, cross_dim=cross_dim).eval()


COMBOS = [(k, f) for k in ("gearnet", "gearnet_edge", "gvp", "cdconv") for f in FUSIONS
          if not (k == "cdconv" and f == "cross")]


# ---------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("kind,fusion", COMBOS)
def test_fusion_equals_plain_composition(kind, fusion, batch, esm_pair):
    ref_esm, ours_esm = esm_pair
    model = make(kind, fusion, ours_esm)
    with torch.no_grad():
        out = model(batch)
        seq = fair_esm_residues(ref_esm, batch.sequences)
        x = seq if fusion == "serial" else one_hot(batch.residue_type)
        st = structure_reference(model.structure_model, kind, batch, x)
        counts = batch.num_residues.tolist()
        if fusion == "cross":
            node, graph = cross_reference(model, seq, st["node_feature"], counts)
        else:
            seq_graph = torch.stack([seq[a:b].mean(0) for a, b in zip(batch.ptr[:-1], batch.ptr[1:])])
            node = torch.cat([seq, st["node_feature"]], -1)
            graph = torch.cat([seq_graph, st["graph_feature"]], -1)
    assert out["node_feature"].shape == (batch.num_nodes, model.output_dim)
    assert out["graph_feature"].shape == (batch.num_proteins, model.output_dim)
    torch.testing.assert_close(out["node_feature"], node, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["graph_feature"], graph, rtol=1e-4, atol=2e-3)


def test_baselines_equal_their_parts(batch, esm_pair):
    ref_esm, ours_esm = esm_pair
    esm_only = FusionNetwork(ours_esm, None).eval()
    with torch.no_grad():
        out = esm_only(batch)
        seq = fair_esm_residues(ref_esm, batch.sequences)
    assert esm_only.output_dim == TINY.embed_dim and esm_only.fusion is None
    torch.testing.assert_close(out["node_feature"], seq, rtol=1e-4, atol=1e-4)
    means = torch.stack([seq[a:b].mean(0) for a, b in zip(batch.ptr[:-1], batch.ptr[1:])])
    torch.testing.assert_close(out["graph_feature"], means, rtol=1e-4, atol=1e-4)

    for kind in ("gearnet", "gvp", "cdconv"):
        model = make(kind, "parallel", None)
        with torch.no_grad():
            out = model(batch)
            ref = structure_reference(model.structure_model, kind, batch, one_hot(batch.residue_type))
        torch.testing.assert_close(out["node_feature"], ref["node_feature"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out["graph_feature"], ref["graph_feature"], rtol=1e-4, atol=1e-3)


def test_train_mode_batchnorm_matches_composition(batch, esm_pair):
    """Train mode (batch statistics, dropout off in ESM) through the same parts gives the same output."""
    ref_esm, ours_esm = esm_pair
    model = make("gearnet", "serial", ours_esm).train()
    out = model(batch)
    seq = fair_esm_residues(ref_esm, batch.sequences)
    st = structure_reference(model.structure_model, "gearnet", batch, seq)
    torch.testing.assert_close(out["node_feature"][:, TINY.embed_dim:], st["node_feature"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------- cross block
@pytest.mark.parametrize("impl", ["loop", "padded"])
def test_cross_block_equals_multihead_attention_on_padded_input(impl):
    torch.manual_seed(0)
    blk = CrossAttentionBlock(32, num_heads=8, dropout=0.1, impl=impl)
    lengths = [10, 3, 7]
    x = torch.randn(sum(lengths), 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)

    def reference(inp):
        L = max(lengths)
        padded = torch.zeros(len(lengths), L, 32)
        valid = torch.zeros(len(lengths), L, dtype=torch.bool)
        start = 0
        for b, n in enumerate(lengths):
            padded[b, :n] = inp[start:start + n]
            valid[b, :n] = True
            start += n
        q, k, v = (lin(padded).transpose(0, 1) for lin in (blk.query, blk.key, blk.value))
        out = blk.attn(q, k, v, key_padding_mask=~valid)[0].transpose(0, 1)
        return out[valid]

    blk.eval()  # dropout off
    out = blk(x, lengths)
    ref = reference(x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for p in blk.parameters():
        assert p.grad is not None

    blk.train()  # dropout active: stochastic, differs from eval, same expectation scale
    with torch.no_grad():
        a, b = blk(x, lengths), blk(x, lengths)
    assert not torch.allclose(a, b) and not torch.allclose(a, ref.detach())
    blk.attn.dropout = 0.0  # train mode without dropout is the deterministic computation
    with torch.no_grad():
        torch.testing.assert_close(blk(x, lengths), ref.detach(), rtol=1e-5, atol=1e-5)


def test_cross_parameter_names_are_esm_gearnets(esm_pair):
    model = make("gearnet", "cross", esm_pair[1])
    names = {k for k in model.state_dict() if not k.startswith(("sequence_model.", "structure_model."))}
    assert names == {"seq_linear.weight", "seq_linear.bias", "struct_linear.weight", "struct_linear.bias",
                     "attn.query.weight", "attn.query.bias", "attn.key.weight", "attn.key.bias",
                     "attn.value.weight", "attn.value.bias", "attn.attn.in_proj_weight", "attn.attn.in_proj_bias",
                     "attn.attn.out_proj.weight", "attn.attn.out_proj.bias"}


# ---------------------------------------------------------------------------------------- shapes
def test_output_dims_of_the_paper_models_without_weights():
    with torch.device("meta"):
        esm = ESM2(ESM2_CONFIGS["esm2_t33_650M_UR50D"])
        serial = FusionNetwork(esm, GearNet(1280, [512] * 6), "series")
        parallel = FusionNetwork(esm, GearNet(21, [512] * 6), "parallel")
        cross = FusionNetwork(esm, GearNet(21, [512] * 6), "cross", cross_dim=512)
        gvp = FusionNetwork(esm, GVPGNN(1280), "serial")
        cdconv = FusionNetwork(esm, CDConv(1280), "serial")
    assert serial.fusion == "serial"
    assert serial.output_dim == parallel.output_dim == 4352
    assert cross.output_dim == 1024
    assert gvp.output_dim == 1280 + 256 and cdconv.output_dim == 1280 + 2048


# ---------------------------------------------------------------------------------------- invariance
def random_rigid(seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float(), (torch.randn(3, generator=g) * 20).float()


@pytest.mark.parametrize("kind,fusion", COMBOS + [("gearnet", None)])
def test_rigid_motion_invariance(kind, fusion, batch):
    esm = load_esm("random:tiny") if fusion is not None else None
    model = make(kind, fusion or "parallel", esm)
    R, t = random_rigid(3)
    moved = dataclasses.replace(batch, pos=batch.pos @ R.T + t, backbone=batch.backbone @ R.T + t)
    with torch.no_grad():
        a, b = model(batch), model(moved)
    for key in ("node_feature", "graph_feature"):
        scale = a[key].abs().max()
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-3 * float(scale))


# ---------------------------------------------------------------------------------------- ESM windows
def test_esm_windows_inside_the_fusion(esm_pair):
    """A protein longer than the window: node counts match and the ESM half is the windowed ESM output."""
    _, esm = esm_pair
    b = collate(real_proteins(2, min_len=150, max_len=400))
    torch.manual_seed(0)
    model = FusionNetwork(esm, small_structure("gearnet", esm.embed_dim), "serial", max_residues=64,
                          window_overlap=16).eval()
    with torch.no_grad():
        out = model(b)
        direct = esm(b.sequences, max_residues=64, window_overlap=16).representations
        whole = esm(b.sequences).representations
    assert out["node_feature"].shape[0] == b.num_nodes
    torch.testing.assert_close(out["node_feature"][:, :esm.embed_dim], direct)
    assert not torch.allclose(direct, whole, atol=1e-3)  # windows really were used

    truncate = FusionNetwork(esm, None, long_sequences="truncate", max_residues=64).eval()
    with torch.no_grad():
        t = truncate(b)
    first = t["node_feature"][:64]
    assert t["node_feature"].shape[0] == b.num_nodes and bool((t["node_feature"][64:b.ptr[1]] == 0).all())
    torch.testing.assert_close(t["graph_feature"][0], first.mean(0))  # mean over encoded residues


def test_real_complex_longer_than_esm_window():
    complex_ = real_complexes(1)[0]
    assert len(complex_) > 1022
    model = build_model(ModelConfig(esm="random:tiny", structure="gearnet", hidden_dims=[16])).eval()
    b = collate([complex_])
    with torch.no_grad():
        out = model(b)
    assert out["node_feature"].shape == (len(complex_), 64 + 16)
    assert torch.isfinite(out["node_feature"]).all()


# ---------------------------------------------------------------------------------------- masks, graphs
def test_residue_mask(batch, esm_pair):
    ref_esm, esm = esm_pair
    model = make("gearnet", "parallel", esm)
    mask = torch.zeros(batch.num_nodes, dtype=torch.bool)
    mask[::7] = True
    with torch.no_grad():
        out = model(batch, residue_mask=mask)
        seq = fair_esm_residues(ref_esm, batch.sequences, mask=mask)
        x = one_hot(batch.residue_type)
        x[mask] = 0
        st = structure_reference(model.structure_model, "gearnet", batch, x)
    torch.testing.assert_close(out["node_feature"], torch.cat([seq, st["node_feature"]], -1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="residue_mask"):
        model(batch, residue_mask=mask[:-1])
    with pytest.raises(ValueError, match="residue_mask"):
        model(batch, residue_mask=mask.long())


def test_edited_graph_is_used(batch, esm_pair):
    model = make("gearnet", "parallel", esm_pair[1])
    graph = model.build_graph(batch)
    assert set(graph) == {"edge_index", "edge_type"}
    keep = torch.arange(graph["edge_index"].size(1)) % 3 != 0
    edited = {"edge_index": graph["edge_index"][:, keep], "edge_type": graph["edge_type"][keep]}
    with torch.no_grad():
        full, cut = model(batch), model(batch, graph=edited)
        ref = model.structure_model(one_hot(batch.residue_type), edited["edge_index"], edited["edge_type"],
                                    batch.batch, batch.num_proteins)
    assert not torch.allclose(full["node_feature"], cut["node_feature"])
    torch.testing.assert_close(cut["node_feature"][:, TINY.embed_dim:], ref["node_feature"])
    assert make("gvp", "serial", esm_pair[1]).build_graph(batch)["edge_index"].shape[0] == 2
    assert make("cdconv", "serial", esm_pair[1]).build_graph(batch) is None


# ---------------------------------------------------------------------------------------- training
TABLE2 = [(k, f) for k, f in COMBOS if k != "gearnet_edge"]


@pytest.mark.parametrize("kind,fusion", TABLE2 + [("gearnet_edge", f) for f in FUSIONS] + [(None, "serial"),
                                                                                             ("gearnet", None)])
def test_forward_backward_on_real_structures(kind, fusion):
    """The 8 Table-2 combinations, GearNet-Edge in every GearNet row, ESM-only and structure-only."""
    proteins = real_proteins(4, min_len=30, max_len=200)
    b = collate(proteins)
    hidden = [16, 16, 32, 32] if kind == "cdconv" else [16, 16]
    cfg = ModelConfig(esm="random:tiny" if fusion is not None else None, structure=kind,
                      fusion=fusion or "serial", cross_dim=16, hidden_dims=hidden)
    model = build_model(cfg).train()
    out = model(b)
    assert out["node_feature"].shape == (b.num_nodes, model.output_dim)
    assert out["graph_feature"].shape == (b.num_proteins, model.output_dim)
    (out["graph_feature"].square().mean() + out["node_feature"].mean()).backward()
    for part in (model.sequence_model, model.structure_model):
        if part is None:
            continue
        # ESM's masked-LM head is not part of the representation
        grads = [p.grad for n, p in part.named_parameters() if p.numel() and not n.startswith("lm_head.")]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_gradient_checkpointing_same_gradients(batch):
    cfg = ModelConfig(esm="random:tiny", structure="gearnet", hidden_dims=[16])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # same GearNet initialisation; random:tiny ESM is seeded itself
        model = build_model(dataclasses.replace(cfg, gradient_checkpointing=ckpt)).train()
        assert model.sequence_model.gradient_checkpointing is ckpt
        model(batch)["graph_feature"].sum().backward()
        grads.append(model.sequence_model.embed_tokens.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------- bad input
def test_bad_configurations(esm_pair):
    esm = esm_pair[1]
    with pytest.raises(ValueError, match="unknown fusion 'sequential'"):
        FusionNetwork(esm, GearNet(64, [8]), "sequential")
    with pytest.raises(ValueError, match="cross fusion is not defined for CDConv"):
        FusionNetwork(esm, CDConv(21), "cross", cross_dim=32)
    with pytest.raises(ValueError, match="cross_dim"):
        FusionNetwork(esm, GearNet(21, [8]), "cross")
    with pytest.raises(ValueError, match="input_dim=21 but serial fusion"):
        FusionNetwork(esm, GearNet(21, [8]), "serial")
    with pytest.raises(ValueError, match="input_dim=64 but parallel fusion"):
        FusionNetwork(esm, GearNet(64, [8]), "parallel")
    with pytest.raises(ValueError, match="neither"):
        FusionNetwork(None, None)
    with pytest.raises(ValueError, match="cross fusion needs both"):
        FusionNetwork(None, GearNet(21, [8]), "cross", cross_dim=16)
    with pytest.raises(ValueError, match="structure_model must be"):
        FusionNetwork(esm, nn.Linear(3, 3))
    with pytest.raises(TypeError, match="unknown option"):
        FusionNetwork(esm, None, windows=3)
    with pytest.raises(ValueError, match="unknown structure encoder 'egnn'"):
        build_model(ModelConfig(esm="random:tiny", structure="egnn"))
    with pytest.raises(ValueError, match="cross fusion is not defined for CDConv"):
        build_model(ModelConfig(esm="random:tiny", structure="cdconv", fusion="cross", cross_dim=16))
    with pytest.raises(ValueError, match="unknown model config key"):
        build_model({"esm": "random:tiny", "structur": "gearnet"})


def test_bad_batches(esm_pair):
    model = make("gearnet", "serial", esm_pair[1])
    proteins = real_proteins(2, min_len=40, max_len=100)
    good = collate(proteins)

    wrong_letter = list(good.sequences)
    i = 5
    letter = "W" if wrong_letter[1][i] != "W" else "A"
    wrong_letter[1] = wrong_letter[1][:i] + letter + wrong_letter[1][i + 1:]
    with pytest.raises(ValueError, match=r"protein 1 .*residue 5 .*disagree"):
        model(dataclasses.replace(good, sequences=wrong_letter))
    with pytest.raises(ValueError, match=r"protein 0 .*letters but the structure has"):
        model(dataclasses.replace(good, sequences=[good.sequences[0][:-1], good.sequences[1]]))

    pos = good.pos.clone()
    pos[good.ptr[1] + 3] = float("nan")
    with pytest.raises(ValueError, match=r"protein 1 .*NaN or infinite"):
        model(dataclasses.replace(good, pos=pos))

    one = dataclasses.replace(proteins[0], sequence=proteins[0].sequence[:1], residue_type=proteins[0].residue_type[:1],
                              pos=proteins[0].pos[:1], backbone=proteins[0].backbone[:1],
                              chain_id=proteins[0].chain_id[:1], residue_number=proteins[0].residue_number[:1],
                              insertion_code=proteins[0].insertion_code[:1])
    with pytest.raises(ValueError, match="single residue"):
        model(collate([proteins[1], one]))
    with torch.no_grad():  # ESM alone encodes a one-residue protein
        assert FusionNetwork(esm_pair[1], None).eval()(collate([one]))["node_feature"].shape == (1, 64)

    counts = good.num_residues.clone()
    empty = dataclasses.replace(good, num_residues=torch.tensor([int(counts[0]), int(counts[1]), 0]),
                                ptr=torch.cat([good.ptr, good.ptr[-1:]]), names=good.names + ["empty"],
                                sequences=good.sequences + [""])
    with pytest.raises(ValueError, match=r"protein 2 \('empty'\) has no residues"):
        model(empty)
