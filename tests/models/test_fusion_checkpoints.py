"""Published ESM-GearNet checkpoints (TorchDrug FusionNetwork.state_dict() layout) and our own model files.

The published-layout dicts are written here by hand from fair-esm's real ESM2 state dict (random
weights) and the structure encoders' TorchDrug/ESM-GearNet names, then loaded strictly; features must
equal fair-esm + the structure encoder run directly."""
import os

import esm as fair_esm
import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.models import (GVPGNN, CDConv, GearNet, ModelConfig, build_model, load_esm_gearnet, load_model,
                                 save_model, split_state_dict, to_esm_gearnet_state_dict)
from esmgear_fast.nn import GearNetGraph
from esmgear_fast.testing import real_proteins

TD_SYMBOLS = "GASPVTCILNDQKEMHFRYW"  # TorchDrug's residue_symbol2id order


def torchdrug_mapping():
    alphabet = fair_esm.data.Alphabet.from_architecture("ESM-1b")
    mapping = [-1] * max(20, len(alphabet))
    for i, s in enumerate(TD_SYMBOLS):
        mapping[i] = alphabet.get_idx(s)
    return torch.tensor(mapping)


def fair_esm_model(layers=2, dim=64, heads=4, seed=0):
    torch.manual_seed(seed)
    m = fair_esm.model.esm2.ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def fair_esm_residues(ref, sequences):
    alphabet = fair_esm.data.Alphabet.from_architecture("ESM-1b")
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(sequences)])
    reps = ref(tokens, repr_layers=[ref.num_layers])["representations"][ref.num_layers]
    return torch.cat([reps[b, 1:len(s) + 1] for b, s in enumerate(sequences)])


def randomize(module):
    torch.manual_seed(5)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point() and t.numel():
                t.add_(0.05 * torch.randn_like(t))
    return module.eval()


def published(ref_esm, structure, structure_keys=None, extra=None):
    """A TorchDrug FusionNetwork.state_dict(): sequence_model.model.* (fair-esm), sequence_model.mapping,
    structure_model.*."""
    sd = {f"sequence_model.model.{k}": v.clone() for k, v in ref_esm.state_dict().items()}
    sd["sequence_model.mapping"] = torchdrug_mapping()
    for k, v in (structure_keys or structure.state_dict()).items():
        sd[f"structure_model.{k}"] = v.clone()
    sd.update(extra or {})
    return sd


@pytest.fixture(scope="module")
def batch():
    return collate(real_proteins(3, min_len=40, max_len=120))


def gearnet_direct(gearnet, batch, x):
    ei, et = GearNetGraph()(batch)
    return gearnet(x, ei, et, batch.batch, batch.num_proteins)


def one_hot(rt):
    return torch.nn.functional.one_hot(rt, 21).float()


# ---------------------------------------------------------------------------------------- published layout
@pytest.mark.parametrize("fusion", ["serial", "parallel"])
def test_published_gearnet_file_loads_strictly_and_matches_composition(fusion, batch, tmp_path):
    ref = fair_esm_model()
    gearnet = randomize(GearNet(64 if fusion == "serial" else 21, [24, 24, 24]))
    path = tmp_path / "mc_esm_gearnet.pth"
    torch.save(published(ref, gearnet), path)
    model = load_esm_gearnet(path, fusion=fusion)
    assert model.fusion == fusion and model.structure_kind == "gearnet"
    assert model.sequence_model.config.attention_heads == 4 and model.sequence_model.num_layers == 2
    with torch.no_grad():
        out = model(batch)
        seq = fair_esm_residues(ref, batch.sequences)
        st = gearnet_direct(gearnet, batch, seq if fusion == "serial" else one_hot(batch.residue_type))
        seq_graph = torch.stack([seq[a:b].mean(0) for a, b in zip(batch.ptr[:-1], batch.ptr[1:])])
    torch.testing.assert_close(out["node_feature"], torch.cat([seq, st["node_feature"]], -1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["graph_feature"], torch.cat([seq_graph, st["graph_feature"]], -1),
                               rtol=1e-4, atol=2e-3)
    # the contact-regression weights were kept, not dropped
    torch.testing.assert_close(model.sequence_model.contact_regression.weight,
                               ref.state_dict()["contact_head.regression.weight"])


def test_heads_inferred_from_rotary_table(batch):
    ref = fair_esm_model(layers=3, dim=64, heads=8)  # head width 8 -> inv_freq of length 4
    model = load_esm_gearnet(published(ref, randomize(GearNet(64, [16]))))
    assert model.sequence_model.config.attention_heads == 8 and model.sequence_model.num_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["node_feature"][:, :64], fair_esm_residues(ref, batch.sequences),
                                   rtol=1e-4, atol=1e-4)


def test_gearnet_edge_gvp_cdconv_and_cross_layouts(batch):
    ref = fair_esm_model()
    seq = fair_esm_residues(ref, batch.sequences).detach()
    # GearNet-Edge (serial)
    edge = randomize(GearNet(64, [16, 16], num_angle_bin=8, edge_input_dim=59))
    model = load_esm_gearnet(published(ref, edge))
    assert model.structure_kind == "gearnet_edge"
    ei, et = GearNetGraph()(batch)
    with torch.no_grad():
        direct = edge(seq, ei, et, batch.batch, 3, pos=batch.pos, residue_type=batch.residue_type)
        torch.testing.assert_close(model(batch)["node_feature"][:, 64:], direct["node_feature"], rtol=1e-4, atol=1e-4)
    # GVP: ESM-GearNet spells residue_embdding
    gvp = randomize(GVPGNN(64, node_h_dim=(16, 4), edge_h_dim=(8, 1), num_layers=2))
    keys = {("residue_embdding." + k.split(".", 1)[1] if k.startswith("residue_embedding.") else k): v
            for k, v in gvp.state_dict().items()}
    model = load_esm_gearnet(published(ref, gvp, keys))
    with torch.no_grad():
        direct = gvp(seq, batch.pos, batch.batch, 3)
        torch.testing.assert_close(model(batch)["node_feature"][:, 64:], direct["node_feature"], rtol=1e-4, atol=1e-4)
    # CDConv (parallel, one-hot input)
    cd = randomize(CDConv(21, embedding_dim=8, hidden_dims=[16, 16, 32, 32]))
    model = load_esm_gearnet(published(ref, cd), fusion="parallel")
    with torch.no_grad():
        direct = cd(one_hot(batch.residue_type), batch.pos, batch.residue_number, batch.batch, 3)
        torch.testing.assert_close(model(batch)["graph_feature"][:, 64:], direct["graph_feature"], rtol=1e-4, atol=1e-4)
    # cross fusion: the attention keys decide, cross_dim read from them
    g = randomize(GearNet(21, [16, 16]))
    torch.manual_seed(3)
    cross = {"seq_linear.weight": torch.randn(24, 64) * 0.1, "seq_linear.bias": torch.randn(24) * 0.1,
             "struct_linear.weight": torch.randn(24, 32) * 0.1, "struct_linear.bias": torch.randn(24) * 0.1}
    for n in ("query", "key", "value"):
        cross[f"attn.{n}.weight"], cross[f"attn.{n}.bias"] = torch.randn(24, 24) * 0.2, torch.randn(24) * 0.1
    cross.update({"attn.attn.in_proj_weight": torch.randn(72, 24) * 0.2, "attn.attn.in_proj_bias": torch.randn(72) * 0.1,
                  "attn.attn.out_proj.weight": torch.randn(24, 24) * 0.2, "attn.attn.out_proj.bias": torch.randn(24) * 0.1})
    model = load_esm_gearnet(published(ref, g, extra=cross), fusion="cross")
    assert model.fusion == "cross" and model.output_dim == 48
    torch.testing.assert_close(model.attn.attn.in_proj_weight, cross["attn.attn.in_proj_weight"])
    with pytest.raises(ValueError, match="cross-fusion model"):
        load_esm_gearnet(published(ref, g, extra=cross), fusion="parallel")


def test_task_checkpoints_and_baseline_layouts(batch, tmp_path):
    ref = fair_esm_model()
    gearnet = randomize(GearNet(64, [16]))
    head = {"mlp.layers.0.weight": torch.randn(8, 80), "mlp.layers.0.bias": torch.randn(8)}
    task = {**{f"model.{k}": v for k, v in published(ref, gearnet).items()}, **head}
    path = tmp_path / "task.pth"
    torch.save({"model": task, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, path)
    model, extra = load_esm_gearnet(path, return_extra=True)
    assert set(extra) == set(head) and model.output_dim == 80
    with pytest.warns(UserWarning, match="task-head keys"):
        load_esm_gearnet(path)
    fusion_part, rest = split_state_dict(task, "model.")
    assert set(rest) == set(head) and "sequence_model.mapping" in fusion_part
    # ESM-only TorchDrug task (config esm.yaml): task.model is the ESM wrapper itself
    esm_task = {**{f"model.model.{k}": v for k, v in ref.state_dict().items()}, "model.mapping": torchdrug_mapping(),
                **head}
    esm_only, extra = load_esm_gearnet({"model": esm_task}, return_extra=True)
    assert esm_only.structure_model is None and set(extra) == set(head)
    with torch.no_grad():
        torch.testing.assert_close(esm_only(batch)["node_feature"], fair_esm_residues(ref, batch.sequences),
                                   rtol=1e-4, atol=1e-4)
    # structure-only GearNet
    g21 = randomize(GearNet(21, [16]))
    struct_only = load_esm_gearnet(g21.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(struct_only(batch)["node_feature"],
                                   gearnet_direct(g21, batch, one_hot(batch.residue_type))["node_feature"])


def test_export_round_trip(batch):
    ref = fair_esm_model()
    sd = published(ref, randomize(GearNet(64, [16, 16])))
    model = load_esm_gearnet(sd)
    out = to_esm_gearnet_state_dict(model)
    assert set(out) == set(sd)
    for k in sd:
        torch.testing.assert_close(out[k], sd[k], msg=k)


# ---------------------------------------------------------------------------------------- bad files
def test_bad_published_files(tmp_path):
    ref = fair_esm_model()
    good = published(ref, randomize(GearNet(64, [16, 16])))
    missing = dict(good)
    del missing["structure_model.layers.1.linear.bias"]
    with pytest.raises(ValueError, match=r"missing \(1\).*structure_model.layers.1.linear.bias"):
        load_esm_gearnet(missing)
    unexpected = {**good, "structure_model.layers.0.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected \(1\).*structure_model.layers.0.extra"):
        load_esm_gearnet(unexpected)
    wrong_shape = {**good, "structure_model.layers.1.linear.weight": torch.zeros(16, 100)}
    with pytest.raises(ValueError, match=r"shape differs: structure_model.layers.1.linear.weight"):
        load_esm_gearnet(wrong_shape)
    bad_mapping = {**good, "sequence_model.mapping": torch.arange(33)}
    with pytest.raises(ValueError, match="mapping"):
        load_esm_gearnet(bad_mapping)
    with pytest.raises(ValueError, match="parallel-fusion model"):
        load_esm_gearnet(published(ref, randomize(GearNet(21, [16]))))
    assert load_esm_gearnet(published(ref, randomize(GearNet(21, [16]))), fusion=None).fusion == "parallel"
    with pytest.raises(ValueError, match="match no known layout"):
        load_esm_gearnet({"encoder.weight": torch.zeros(3)})
    stray = {**good, "classifier.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="classifier.weight"):
        load_esm_gearnet(stray)
    bad_rotary = {**good, "sequence_model.model.layers.0.self_attn.rot_emb.inv_freq": torch.ones(8)}
    with pytest.raises(ValueError, match="rotary"):
        load_esm_gearnet(bad_rotary)
    path = tmp_path / "pickled.pth"
    torch.save({"model": good, "extra": Unsafe()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_esm_gearnet(path)


class Unsafe:  # an arbitrary class: weights_only loading must refuse it
    pass


# ---------------------------------------------------------------------------------------- our files
def test_save_and_load_model_round_trip(batch, tmp_path):
    cfg = ModelConfig(esm="random:tiny", structure="gearnet", fusion="cross", cross_dim=16, hidden_dims=[16, 16])
    model = build_model(cfg).eval()
    model.sequence_model.contact_regression = torch.nn.Linear(8, 1)
    path = tmp_path / "sub" / "model.pt"
    save_model(cfg, model, path)
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary file left behind
    loaded = load_model(path)
    assert loaded.model_config == cfg and not loaded.training
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    torch.testing.assert_close(a["node_feature"], b["node_feature"])
    torch.testing.assert_close(a["graph_feature"], b["graph_feature"])
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an esmgear_fast.model file"):
        load_model(tmp_path / "plain.pt")
