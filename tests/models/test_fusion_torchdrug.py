"""Parity with real TorchDrug 0.2.1 modules when ``torchdrug`` imports (not in the default install; see the
README's "Checking against the original implementations"; run in its own process:
``PYTHONPATH=/tmp/td python -m pytest -q tests -k torchdrug``).

TorchDrug's ESM wrapper (``models.ESM``: residue types -> tokens through its ``mapping`` buffer, padded
fair-esm ESM-2, mean readout) and ``models.GearNet`` are combined as ESM-GearNet's FusionNetwork does
(serial / parallel concatenation; cross: TorchDrug's ``_extend`` + ``variadic_to_padded`` +
``layers.SelfAttentionBlock`` + sum readout). Their ``state_dict()`` under ``sequence_model.`` /
``structure_model.`` is the published checkpoint layout produced by the real modules; it must load with
``load_esm_gearnet`` and give the same features, and ``to_esm_gearnet_state_dict`` must give it back."""
import warnings

import pytest
import torch

torchdrug = pytest.importorskip("torchdrug")
fair_esm = pytest.importorskip("esm")

from torchdrug import data, layers, models  # noqa: E402
from torchdrug.layers import functional  # noqa: E402
from torchdrug.models.esm import EvolutionaryScaleModeling  # noqa: E402

from esmgear_fast.data import collate  # noqa: E402
from esmgear_fast.models import load_esm_gearnet, to_esm_gearnet_state_dict  # noqa: E402
from esmgear_fast.nn import GearNetGraph  # noqa: E402
from esmgear_fast.testing import real_proteins  # noqa: E402


@pytest.fixture(scope="module")
def td_esm_factory(tmp_path_factory):
    torch.manual_seed(0)
    ref = fair_esm.model.esm2.ESM2(num_layers=2, embed_dim=64, attention_heads=4).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    alphabet = fair_esm.data.Alphabet.from_architecture("ESM-1b")
    # a tiny ESM-2 through TorchDrug's own wrapper (no download: load_weight returns the model above)
    EvolutionaryScaleModeling.url["ESM-2-tiny"] = "esm2_tiny.pt"
    EvolutionaryScaleModeling.md5["ESM-2-tiny"] = None
    EvolutionaryScaleModeling.output_dim["ESM-2-tiny"] = 64
    EvolutionaryScaleModeling.num_layer["ESM-2-tiny"] = 2
    EvolutionaryScaleModeling.load_weight = lambda self, path, model: (ref, alphabet)
    path = str(tmp_path_factory.mktemp("esm"))
    return lambda: models.ESM(path=path, model="ESM-2-tiny")


def td_graph(batch):
    """A TorchDrug PackedProtein (residue view) with the same GearNet graph per protein."""
    proteins = []
    for prot in batch.unbatch():
        ei, et = GearNetGraph()(collate([prot]))
        n = len(prot)
        proteins.append(data.Protein(
            edge_list=torch.stack([ei[0], ei[1], et], 1), atom_type=torch.zeros(n, dtype=torch.long),
            bond_type=torch.zeros(ei.size(1), dtype=torch.long), residue_type=prot.residue_type, view="residue",
            num_node=n, num_relation=7, atom_name=torch.ones(n, dtype=torch.long), atom2residue=torch.arange(n),
            residue_feature=torch.nn.functional.one_hot(prot.residue_type, 21).float(), node_position=prot.pos))
    return data.Protein.pack(proteins)


def td_fusion(seq, struct, cross, graph, fusion):
    """ESM-GearNet's FusionNetwork.forward with TorchDrug's modules and functions."""
    out1 = seq(graph, graph.residue_feature.float())
    node1 = out1["residue_feature"]
    out2 = struct(graph, node1 if fusion == "serial" else graph.residue_feature.float())
    node2 = out2["node_feature"]
    if fusion != "cross":
        return torch.cat([node1, node2], -1), torch.cat([out1["graph_feature"], out2["graph_feature"]], -1)
    seq_linear, struct_linear, attn = cross
    sizes = graph.num_residues
    tokens, ext = functional._extend(seq_linear(node1), sizes, struct_linear(node2), sizes)
    padded, mask = functional.variadic_to_padded(tokens, ext)
    node = functional.padded_to_variadic(attn(padded, mask), ext)
    index = torch.arange(graph.num_residue)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), graph.num_cum_residues])
    node = torch.cat([node[index + starts[graph.residue2graph]], node[index + graph.num_cum_residues[graph.residue2graph]]], -1)
    return node, torch.zeros(graph.batch_size, node.size(1)).index_add_(0, graph.residue2graph, node)


@pytest.mark.parametrize("fusion", ["serial", "parallel", "cross"])
def test_real_torchdrug_fusion_layout_and_features(fusion, td_esm_factory):
    warnings.filterwarnings("ignore")
    torch.manual_seed(1)
    seq = td_esm_factory()
    struct = models.GearNet(input_dim=64 if fusion == "serial" else 21, hidden_dims=[32, 32, 32], num_relation=7,
                            batch_norm=True, concat_hidden=True, short_cut=True, readout="sum")
    cross = None
    state = {**{f"sequence_model.{k}": v for k, v in seq.state_dict().items()},
             **{f"structure_model.{k}": v for k, v in struct.state_dict().items()}}
    if fusion == "cross":
        cross = (torch.nn.Linear(64, 32), torch.nn.Linear(96, 32), layers.SelfAttentionBlock(32, num_heads=8, dropout=0.1))
        for prefix, module in zip(("seq_linear.", "struct_linear.", "attn."), cross):
            state.update({prefix + k: v for k, v in module.state_dict().items()})
            module.eval()
    with torch.no_grad():
        for name, t in struct.state_dict().items():
            if "running_var" in name:
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
    seq.eval(), struct.eval()
    ours = load_esm_gearnet(state, fusion=fusion)
    exported = to_esm_gearnet_state_dict(ours)
    assert set(exported) == set(state)
    for k, v in state.items():
        assert torch.equal(exported[k].to(v.dtype), v), k

    batch = collate(real_proteins(3, min_len=40, max_len=200))
    graph = td_graph(batch)
    with torch.no_grad():
        node, graph_feature = td_fusion(seq, struct, cross, graph, fusion)
        out = ours(batch)
    torch.testing.assert_close(out["node_feature"], node, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(out["graph_feature"], graph_feature, rtol=1e-4, atol=1e-3)
