"""Helpers of the pre-training tests (a module with its own name: ``from conftest import`` would resolve to
whichever test folder's conftest Python imported first when the whole suite runs)."""
import torch
from torch import nn

from esmgear_fast.nn import GearNetGraph


class OneHotModel(nn.Module):
    """Contract-1 stand-in: node ``n`` of the batch it sees gets the fixed feature ``e_n`` (one-hot of
    width ``output_dim``), so a head's input reveals exactly which residues it was given. Records every
    call's batch, graph and residue_mask."""

    def __init__(self, output_dim=1024):
        super().__init__()
        self.output_dim = output_dim
        self.sequence_model = None
        self.graph_builder = GearNetGraph()
        self.calls = []

    def build_graph(self, batch):
        edge_index, edge_type = self.graph_builder(batch)
        return {"edge_index": edge_index, "edge_type": edge_type}

    def forward(self, batch, graph=None, residue_mask=None):
        if graph is None:
            graph = self.build_graph(batch)
        self.calls.append({"batch": batch, "graph": graph, "residue_mask": residue_mask})
        node = torch.eye(batch.num_nodes, self.output_dim)
        gf = torch.zeros(batch.num_proteins, self.output_dim).index_add_(0, batch.batch, node)
        return {"node_feature": node, "graph_feature": gf}


def capture_input(module):
    """Registers a hook storing the first Linear layer's input of ``module`` (an MLP) in a list."""
    seen = []
    first = next(m for m in module.modules() if isinstance(m, nn.Linear))
    first.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    return seen


def decode(features, blocks, width):
    """Node indices encoded by one-hot blocks of ``width`` in ``features [S, blocks * width]``."""
    return [features[:, b * width:(b + 1) * width].argmax(-1) for b in range(blocks)]
