"""Helpers of the task-head tests: a tiny real FusionNetwork, a stand-in model with the same interface,
a dataset description stub and the MLP computed from its raw weights."""
import torch
from torch import nn

from esmgear_fast.models import GearNet, residue_one_hot
from esmgear_fast.models.factory import ModelConfig, build_model
from esmgear_fast.nn import GearNetGraph


def tiny_fusion(seed: int = 0, fusion: str = "serial"):
    """ESM-2 (random tiny) -> GearNet [16, 16], in eval mode (deterministic BatchNorm)."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(esm="random:tiny", structure="gearnet", fusion=fusion,
                                   hidden_dims=[16, 16])).eval()


class StandIn(nn.Module):
    """The task-model interface without ESM: an embedding as ``sequence_model``, GearNet on one-hot +
    embedding as ``structure_model``."""

    def __init__(self):
        super().__init__()
        self.sequence_model = nn.Embedding(21, 4)
        self.structure_model = GearNet(25, [8, 8])
        self.graph = GearNetGraph()
        self.output_dim = self.structure_model.output_dim

    def forward(self, batch, graph=None, residue_mask=None):
        edge_index, edge_type = self.graph(batch)
        x = torch.cat([residue_one_hot(batch.residue_type), self.sequence_model(batch.residue_type)], dim=-1)
        return self.structure_model(x, edge_index, edge_type, batch.batch, batch.num_proteins)


class DatasetInfo:
    def __init__(self, tasks, task_type):
        self.tasks, self.task_type = list(tasks), task_type


def manual_mlp(mlp, x):
    """TorchDrug MLP semantics from the raw weights: ReLU after every layer but the last."""
    layers = list(mlp.layers)
    for i, layer in enumerate(layers):
        x = x @ layer.weight.T + layer.bias
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x
