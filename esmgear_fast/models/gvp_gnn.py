"""GVP-GNN (Jing et al., 2021) as the structure encoder of ESM-GearNet (``models.GVPGNN`` of
DeepGraphLearning/ESM-GearNet), with its graph, edge features, forward and parameter names."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from .. import ops
from ..nn.gvp import GVP, check_dims
from ..nn.gvp_conv_layer import GVPConvLayer
from ..nn.gvp_layer_norm import GVPLayerNorm
from .gearnet import graph_readout

# TorchDrug's SpatialEdge drops edges between (numerically) coincident positions.
COINCIDENT_EPS = 1e-10


def gvp_radius_graph(pos: torch.Tensor, batch: Optional[torch.Tensor] = None, radius: float = 10.0,
                     max_num_neighbors: Optional[int] = 32, backend: Optional[str] = None) -> torch.Tensor:
    """ESM-GearNet's GVP graph (TorchDrug ``SpatialEdge(radius=10, min_distance=0)``): edges j -> i
    between residues of the same protein with ``|pos_j - pos_i| < radius``, no self loops, at most
    ``max_num_neighbors`` sources per target, and no edge between coincident positions
    (distance < 1e-10). Returns ``edge_index`` [2, E] (row 0 source j, row 1 target i).

    The cap keeps the *nearest* sources (:func:`esmgear_fast.ops.radius_graph`). TorchDrug calls
    ``torch_cluster.radius_graph``, which keeps the first neighbours its search meets (index order
    on GPU, KD-tree order on CPU; 32 or, when the centre itself was not among the first 33 found,
    33 sources). Both agree whenever no residue has more than 32 neighbours within the radius;
    with C-alpha atoms and 10 A some residues of compact proteins do, and only the choice among
    their neighbours differs.
    """
    edge_index = ops.radius_graph(pos, radius, batch, max_num_neighbors=max_num_neighbors, loop=False,
                                  backend=backend)
    if edge_index.numel():
        length = (pos[edge_index[1]] - pos[edge_index[0]]).norm(dim=-1)
        keep = length >= COINCIDENT_EPS
        if not bool(keep.all()):
            edge_index = edge_index[:, keep]
    return edge_index


def gvp_rbf(distance: torch.Tensor, num_rbf: int = 16, d_min: float = 0.0, d_max: float = 20.0) -> torch.Tensor:
    """Gaussian radial basis of distances: ``exp(-((d - mu_k) / sigma)^2)`` with ``mu_k`` =
    ``linspace(d_min, d_max, num_rbf)`` and ``sigma = (d_max - d_min) / num_rbf`` (ESM-GearNet's
    ``GVPGNN.rbf``). ``distance`` [...] -> [..., num_rbf]."""
    mu = torch.linspace(d_min, d_max, num_rbf, device=distance.device, dtype=distance.dtype)
    sigma = (d_max - d_min) / num_rbf
    return torch.exp(-(((distance.unsqueeze(-1) - mu) / sigma) ** 2))


def gvp_edge_features(pos: torch.Tensor, edge_index: torch.Tensor, num_rbf: int = 16,
                      d_max: float = 20.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """ESM-GearNet's GVP input edge features for edges j -> i: scalars ``rbf(|x_i - x_j|)``
    [E, num_rbf] and one vector channel ``x_i - x_j`` [E, 1, 3] (target minus source, not
    normalised: the encoder's first ``GVPLayerNorm`` scales each edge's vector to unit length)."""
    vector = pos[edge_index[1]] - pos[edge_index[0]]
    return gvp_rbf(vector.norm(dim=-1), num_rbf, 0.0, d_max), vector.unsqueeze(-2)


class GVPGNN(nn.Module):
    r"""GVP-GNN structure encoder of ESM-GearNet (its ``models.GVPGNN``, itself adapted from
    gvp-pytorch's model-quality-assessment model).

    With node input ``x`` [N, input_dim] (ESM-2 residue embeddings in the series fusion
    "ESM-GVP", ``input_dim=1280`` for ESM-2 650M; one-hot residue types, ``input_dim=21``, for
    standalone/parallel models) and C-alpha positions ``pos`` [N, 3]::

        h        = residue_embedding(x)                    # Linear(input_dim, input_dim, bias=False)
        h        = W_v(h)                                  # GVPLayerNorm((input_dim, 0)) -> GVP((input_dim, 0) -> node_h_dim)
                                                           #   no activations; initial vectors are zeros
        e        = W_e((rbf(|x_i - x_j|), x_i - x_j))      # GVPLayerNorm((16, 1)) -> GVP((16, 1) -> edge_h_dim), no activations
        h        = layers[k](h, edge_index, e)             # num_layers x GVPConvLayer(node_h_dim, edge_h_dim, drop_rate)
        node     = W_out(h)                                # GVPLayerNorm(node_h_dim) -> GVP(node_h_dim -> (ns, 0)), activations
        graph    = mean (or sum) of node over each protein

    The graph is :func:`gvp_radius_graph` (10 A, at most 32 neighbours, no self loops) unless
    ``edge_index`` is given; the edge features are :func:`gvp_edge_features` unless
    ``edge_feature=(edge_s [E, 16], edge_v [E, 1, 3])`` is given. All GVPs use ESM-GearNet's
    ``activations=(relu, None)`` and ``vector_gate=True`` (so the vector gate is
    ``sigmoid(wsv(s))``) except where "no activations" is stated.

    Returns ``{"node_feature": [N, ns], "graph_feature": [B, ns]}`` (``ns = node_h_dim[0]``, 256).

    Parameter names are ESM-GearNet's (``W_v``, ``W_e``, ``layers``, ``W_out``), except that its
    misspelt ``residue_embdding`` is ``residue_embedding`` here; :func:`gvp_state_dict` maps an
    ESM-GearNet checkpoint onto this module for ``load_state_dict(..., strict=True)``.

    Args:
        input_dim: node input features (1280 ESM-2 650M, 21 one-hot residues).
        node_h_dim, edge_h_dim: hidden ``(n_scalar, n_vector)`` of nodes (256, 16) and edges (64, 1).
        num_rbf: radial basis functions of the input edge scalars (16 -> ``edge_in_dim = (16, 1)``).
        num_layers, drop_rate: GVPConvLayers (5) and their dropout (0.1).
        activations, vector_gate: of the GVPs (ESM-GearNet: ``("relu", None)``, True).
        readout: "mean" (ESM-GearNet's GVP configs) or "sum".
        radius, max_num_neighbors: of the default graph.
        backend: backend of the GVP ops (``None``: the global default).
    """

    def __init__(self, input_dim: int = 1280, node_h_dim=(256, 16), edge_h_dim=(64, 1), num_rbf: int = 16,
                 num_layers: int = 5, drop_rate: float = 0.1, activations=("relu", None), vector_gate: bool = True,
                 readout: str = "mean", radius: float = 10.0, max_num_neighbors: Optional[int] = 32,
                 backend: Optional[str] = None):
        super().__init__()
        if readout not in ("sum", "mean"):
            raise ValueError(f"Unknown readout {readout!r}: choose 'sum' or 'mean'")
        node_h_dim = check_dims("node_h_dim", node_h_dim)
        edge_h_dim = check_dims("edge_h_dim", edge_h_dim)
        if input_dim < 1 or num_rbf < 1:
            raise ValueError(f"input_dim and num_rbf must be >= 1, got {input_dim}, {num_rbf}")
        self.input_dim = int(input_dim)
        self.node_h_dim, self.edge_h_dim = node_h_dim, edge_h_dim
        self.edge_in_dim = (int(num_rbf), 1)
        self.num_rbf = int(num_rbf)
        self.output_dim = node_h_dim[0]
        self.readout = readout
        self.radius = float(radius)
        self.max_num_neighbors = max_num_neighbors
        self.backend = backend

        node_in_dim = (self.input_dim, 0)
        self.residue_embedding = nn.Linear(self.input_dim, self.input_dim, bias=False)
        self.W_v = nn.Sequential(
            GVPLayerNorm(node_in_dim),
            GVP(node_in_dim, node_h_dim, activations=(None, None), vector_gate=vector_gate, backend=backend),
        )
        self.W_e = nn.Sequential(
            GVPLayerNorm(self.edge_in_dim),
            GVP(self.edge_in_dim, edge_h_dim, activations=(None, None), vector_gate=vector_gate, backend=backend),
        )
        self.layers = nn.ModuleList(
            GVPConvLayer(node_h_dim, edge_h_dim, drop_rate=drop_rate, activations=activations,
                         vector_gate=vector_gate, backend=backend)
            for _ in range(num_layers)
        )
        self.W_out = nn.Sequential(
            GVPLayerNorm(node_h_dim),
            GVP(node_h_dim, (node_h_dim[0], 0), activations=activations, vector_gate=vector_gate, backend=backend),
        )

    def reset_parameters(self) -> None:
        self.residue_embedding.reset_parameters()
        for block in (self.W_v, self.W_e, self.W_out):
            for module in block:
                module.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: torch.Tensor, pos: torch.Tensor, batch: Optional[torch.Tensor] = None,
                num_graphs: Optional[int] = None, edge_index: Optional[torch.Tensor] = None,
                edge_feature: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """See the class docstring. ``batch`` [N] sorted protein index (``None``: one protein),
        ``num_graphs`` B (default ``batch.max() + 1``; pass it when trailing proteins may be empty),
        ``edge_index`` [2, E], ``edge_feature`` ``(edge_s [E, num_rbf], edge_v [E, 1, 3])``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.size(1) != self.input_dim:
            raise ValueError(f"GVPGNN: x must be [N, input_dim={self.input_dim}], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"GVPGNN: x must be a floating-point tensor (e.g. one-hot residues as float), got {x.dtype}")
        if not isinstance(pos, torch.Tensor) or tuple(pos.shape) != (x.size(0), 3):
            raise ValueError(f"GVPGNN: pos must be [N, 3] = [{x.size(0)}, 3] (one C-alpha per row of x), got "
                             f"{tuple(pos.shape) if isinstance(pos, torch.Tensor) else type(pos).__name__}")
        if batch is not None and tuple(batch.shape) != (x.size(0),):
            raise ValueError(f"GVPGNN: batch must be [N] = [{x.size(0)}], got {tuple(batch.shape)}")
        if edge_index is None:
            edge_index = gvp_radius_graph(pos, batch, self.radius, self.max_num_neighbors)
        if edge_feature is None:
            # Distances in at least float32 even for half-precision features.
            geometry_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            edge_s, edge_v = gvp_edge_features(pos.to(geometry_dtype), edge_index, self.num_rbf)
            edge_feature = (edge_s.to(x.dtype), edge_v.to(x.dtype))
        else:
            edge_s, edge_v = edge_feature
            num_edges = edge_index.size(1)
            if tuple(edge_s.shape) != (num_edges, self.num_rbf) or tuple(edge_v.shape) != (num_edges, 1, 3):
                raise ValueError(f"GVPGNN: edge_feature must be ([E, {self.num_rbf}], [E, 1, 3]) with E = "
                                 f"{num_edges}, got ({tuple(edge_s.shape)}, {tuple(edge_v.shape)})")

        h = self.W_v(self.residue_embedding(x))
        e = self.W_e(tuple(edge_feature))
        for layer in self.layers:
            h = layer(h, edge_index, e)
        node_feature = self.W_out(h)
        if batch is None and num_graphs is None:
            num_graphs = 1
        graph_feature = graph_readout(node_feature, batch, num_graphs, self.readout)
        return {"graph_feature": graph_feature, "node_feature": node_feature}


# Roots of the GVPGNN parameter names, in this module and in ESM-GearNet checkpoints.
_GVP_ROOTS = ("residue_embdding.", "residue_embedding.", "W_v.", "W_e.", "layers.", "W_out.")


def gvp_state_dict(checkpoint: Mapping[str, object], prefix: str = "structure_model.") -> Dict[str, torch.Tensor]:
    """Extracts the GVP-GNN part of an ESM-GearNet checkpoint for :class:`GVPGNN`.

    Accepts a state dict or a TorchDrug engine checkpoint holding one under ``"model"`` or
    ``"state_dict"``. In a ``FusionNetwork`` ("ESM-GVP", series or parallel) the structure model's
    keys contain ``structure_model.`` (e.g. ``model.structure_model.W_v.1.ws.weight`` in a task
    checkpoint); everything up to and including that prefix is stripped and the ``sequence_model``
    (ESM) keys are dropped. Without such keys (a standalone GVPGNN task checkpoint), keys starting
    with the GVPGNN roots after any leading ``model.``/``module.`` are taken.

    Key mapping (everything else unchanged, gvp-pytorch names throughout)::

        residue_embdding.weight  -> residue_embedding.weight   (ESM-GearNet's spelling)
        W_v.{0,1}.* / W_e.{0,1}.* / layers.{k}.* / W_out.{0,1}.*  -> same

    The result loads with ``GVPGNN(input_dim, ...).load_state_dict(sd, strict=True)``; it includes
    gvp-pytorch's empty ``dummy_param`` entries (which GVPGNN also has).
    """
    state = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    out = {k.split(prefix, 1)[1]: v for k, v in state.items() if prefix in k}
    if not out:
        for k, v in state.items():
            name = k
            while not name.startswith(_GVP_ROOTS) and name.startswith(("model.", "module.")):
                name = name.split(".", 1)[1]
            if name.startswith(_GVP_ROOTS):
                out[name] = v
    if not out:
        raise KeyError(f"gvp_state_dict: no GVP-GNN parameters (keys containing {prefix!r} or starting with "
                       f"residue_embdding./W_v./W_e./layers./W_out.) in the checkpoint")
    renamed = {}
    for k, v in out.items():
        if k.startswith("residue_embdding."):
            k = "residue_embedding." + k[len("residue_embdding."):]
        renamed[k] = v
    return renamed
