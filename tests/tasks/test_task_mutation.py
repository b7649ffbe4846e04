"""MSP head: features averaged over the mutated residues of both sides, against a hand computation."""
import pytest
import torch

from esmgear_fast.data import collate, collate_samples
from esmgear_fast.io import Protein
from esmgear_fast.tasks import MutationStability

from task_helpers import manual_mlp, tiny_fusion

SWAP = {"A": "G", "G": "A"}


def mutate(p: Protein, positions, name=None) -> Protein:
    seq = list(p.sequence)
    for i in positions:
        seq[i] = SWAP.get(seq[i], "A" if seq[i] != "A" else "G")
    return Protein.from_arrays("".join(seq), p.pos, backbone=p.backbone, name=name or p.name + "_mut")


def test_msp_prediction_and_loss_by_hand(proteins):
    model = tiny_fusion(3)
    task = MutationStability(model).eval()
    sites = [[3], [0, 5, 9], [1], [7, 8]]
    wild = proteins
    mutants = [mutate(p, s) for p, s in zip(wild, sites)]
    inputs = collate_samples([{"wild_type": w, "mutant": m, "target": torch.tensor([float(i % 2)])}
                              for i, (w, m) in enumerate(zip(wild, mutants))])
    out = task(inputs)
    with torch.no_grad():
        wt_nodes = model(collate(wild))["node_feature"]
        mt_nodes = model(collate(mutants))["node_feature"]
    rows, start = [], 0
    for p, s in zip(wild, sites):
        idx = [start + i for i in s]
        rows.append(torch.cat([wt_nodes[idx].mean(0), mt_nodes[idx].mean(0)]))
        start += len(p.sequence)
    expected_logit = manual_mlp(task.mlp, torch.stack(rows))
    torch.testing.assert_close(out.pred, expected_logit, rtol=1e-5, atol=1e-5)
    assert out.pred.shape == (4, 1) and len(task.mlp.layers) == 1
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    z = expected_logit.double()
    bce = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    assert out.loss.item() == pytest.approx(bce.item(), rel=1e-5)
    assert task.selection_metric == "auroc"
    assert set(task.evaluate(torch.tensor([[0.1], [0.9], [0.2], [0.7]]), y)) == {"auroc", "auprc"}
    assert task.evaluate(torch.tensor([[0.1], [0.9], [0.2], [0.7]]), y)["auroc"] == 1.0


def test_msp_pair_errors_name_the_pair(proteins):
    task = MutationStability(tiny_fusion(4))
    same = collate_samples([{"wild_type": proteins[0], "mutant": mutate(proteins[0], [2]), "target": torch.ones(1)},
                            {"wild_type": proteins[1], "mutant": mutate(proteins[1], []), "target": torch.ones(1)}])
    with pytest.raises(ValueError, match=r"pair 1 \(.*\) has no residue whose type differs"):
        task(same)
    short = proteins[2]
    cut = Protein.from_arrays(short.sequence[:-1], short.pos[:-1], backbone=short.backbone[:-1], name="cut")
    bad = collate_samples([{"wild_type": short, "mutant": cut, "target": torch.ones(1)}])
    with pytest.raises(ValueError, match="must align residue by residue"):
        task(bad)
