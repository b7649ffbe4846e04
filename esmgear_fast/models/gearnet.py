"""GearNet (Zhang et al., 2022), the structure encoder of ESM-GearNet, with TorchDrug's exact forward
and parameter names."""
from collections.abc import Sequence
from typing import Dict, Mapping, Optional, Union

import torch
from torch import nn

from ..nn.geometric_relational_graph_conv import GeometricRelationalGraphConv
from ..ops.relational_csr import relational_csr
# GearNet-Edge's line graph is the compiled op; re-exported here (esmgear_fast.models.spatial_line_graph).
from ..ops.spatial_line_graph import spatial_line_graph


def residue_one_hot(residue_type: torch.Tensor, num_classes: int = 21) -> torch.Tensor:
    """TorchDrug's ``residue_symbol`` node feature: one-hot residue type [N, 21] (float32), the
    ``input_dim=21`` input of published GearNet / ESM-GearNet models."""
    return nn.functional.one_hot(residue_type.long(), num_classes).float()


def gearnet_edge_feature(residue_type: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor,
                         edge_type: torch.Tensor, num_relation: int = 7, max_seq_dist: int = 10,
                         num_residue_type: int = 20) -> torch.Tensor:
    """TorchDrug's ``edge_feature="gearnet"``: per edge j -> i the concatenation of one-hot(type of j)
    [20], one-hot(type of i) [20], one-hot(relation) [num_relation], one-hot(min(|i - j|, 10)) [11]
    and the C-alpha distance |pos_j - pos_i| [1]: 59 features for 7 relations, float32 [E, 59].

    Residue indices are positions in the packed batch (edges never cross proteins, so |i - j| is
    the sequence separation). Unknown residues (type 20) get an all-zero one-hot block, where
    TorchDrug would fail an assertion.
    """
    source, target = edge_index[0], edge_index[1]

    def one_hot(index, size):
        out = torch.zeros(index.numel(), size + 1, device=index.device)
        out.scatter_(1, index.clamp(0, size).unsqueeze(-1), 1.0)
        return out[:, :size]

    seq = (target - source).abs().clamp(max=max_seq_dist)
    dist = (pos.index_select(0, source) - pos.index_select(0, target)).norm(dim=-1)
    return torch.cat([
        one_hot(residue_type[source], num_residue_type),
        one_hot(residue_type[target], num_residue_type),
        one_hot(edge_type, num_relation),
        one_hot(seq, max_seq_dist + 1),
        dist.float().unsqueeze(-1),
    ], dim=-1)


class GearNet(nn.Module):
    r"""Geometry-aware relational graph neural network (TorchDrug's ``models.GearNet``).

    For layer ``i`` with input :math:`h^{(i)}` (``h^{(0)} = x``)::

        hidden = layers[i](h, edge_index, edge_type, edge_weight)   # act(BN(linear(agg) + self_loop(h)))
        if short_cut and hidden.shape == h.shape: hidden = hidden + h
        if batch_norm: hidden = batch_norms[i](hidden)              # second BatchNorm, after the shortcut
        h = hidden

    ``node_feature`` is the concatenation of all layer outputs (``concat_hidden``) or the last one;
    ``graph_feature`` is its sum (or mean) over the residues of each protein.

    Parameter names and shapes are TorchDrug's (``layers.{i}.linear``, ``layers.{i}.self_loop``,
    ``layers.{i}.batch_norm``, ``batch_norms.{i}``), so a TorchDrug GearNet state dict loads with
    ``strict=True``. Note the defaults follow the published ESM-GearNet configuration
    (``batch_norm``, ``concat_hidden`` and ``short_cut`` on), not TorchDrug's class defaults (off).

    Inputs of :meth:`forward`: ``x`` [N, input_dim] node features (e.g. :func:`residue_one_hot`),
    ``edge_index`` [2, E] (row 0 source j, row 1 target i) and ``edge_type`` [E] — e.g. the output
    of :class:`esmgear_fast.nn.GearNetGraph` on a :class:`~esmgear_fast.data.ProteinBatch` —,
    ``batch`` [N] sorted protein index (``None``: one protein), ``num_graphs`` B (default
    ``batch.max() + 1``), ``edge_weight`` [E] (default 1).

    The residue graph is sorted once per forward (:func:`esmgear_fast.ops.relational_csr`) and
    shared by all node layers; ``fused`` (default ``None``: whenever the backend offers it) makes
    the node layers compute ``linear(aggregate)`` with the fused
    :func:`esmgear_fast.ops.relational_linear`, see :class:`~esmgear_fast.nn.GeometricRelationalGraphConv`.

    Returns ``{"node_feature": [N, D_out], "graph_feature": [B, D_out]}`` with ``D_out =
    sum(hidden_dims)`` when ``concat_hidden`` else ``hidden_dims[-1]``.

    GearNet-Edge (``num_angle_bin=8, edge_input_dim=59``): a second stack ``edge_layers.{i}``
    (``GeometricRelationalGraphConv(edge_dims[i], edge_dims[i+1], num_angle_bin)`` with
    ``edge_dims = [edge_input_dim] + dims[:-1]``) runs on the :func:`spatial_line_graph` of the
    residue graph, starting from the :func:`gearnet_edge_feature` features; layer i adds
    ``act(layers[i].linear(sum of edge hidden states into (target, relation) blocks))`` to the node
    update before the second BatchNorm, exactly as TorchDrug does.
    The line graph is built in every forward by the compiled op
    :func:`esmgear_fast.ops.spatial_line_graph.spatial_line_graph` (``backend`` applies to it as to the
    layers' aggregation).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims,
        num_relation: int = 7,
        edge_input_dim: Optional[int] = None,
        num_angle_bin: Optional[int] = None,
        batch_norm: bool = True,
        concat_hidden: bool = True,
        short_cut: bool = True,
        readout: str = "sum",
        activation="relu",
        backend: Optional[str] = None,
        fused: Optional[bool] = None,
    ):
        super().__init__()
        if readout not in ("sum", "mean"):
            raise ValueError(f"Unknown readout {readout!r}: choose 'sum' or 'mean'")
        if not isinstance(hidden_dims, Sequence):
            hidden_dims = [hidden_dims]
        self.input_dim = input_dim
        self.output_dim = sum(hidden_dims) if concat_hidden else hidden_dims[-1]
        self.dims = [input_dim] + list(hidden_dims)
        self.num_relation = num_relation
        self.edge_input_dim = edge_input_dim
        self.num_angle_bin = num_angle_bin
        self.short_cut = short_cut
        self.concat_hidden = concat_hidden
        self.batch_norm = batch_norm
        self.readout = readout
        self.backend = backend

        self.layers = nn.ModuleList(
            GeometricRelationalGraphConv(self.dims[i], self.dims[i + 1], num_relation, batch_norm=batch_norm,
                                         activation=activation, backend=backend, fused=fused)
            for i in range(len(self.dims) - 1)
        )
        if num_angle_bin:
            if not edge_input_dim:
                raise ValueError("GearNet-Edge (num_angle_bin) needs edge_input_dim (59 for the gearnet edge features)")
            self.edge_dims = [edge_input_dim] + self.dims[:-1]
            self.edge_layers = nn.ModuleList(
                GeometricRelationalGraphConv(self.edge_dims[i], self.edge_dims[i + 1], num_angle_bin,
                                             batch_norm=batch_norm, activation=activation, backend=backend)
                for i in range(len(self.edge_dims) - 1)
            )
        if batch_norm:
            self.batch_norms = nn.ModuleList(nn.BatchNorm1d(d) for d in self.dims[1:])

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
        for layer in getattr(self, "edge_layers", []):
            layer.reset_parameters()
        if self.batch_norm:
            for bn in self.batch_norms:
                bn.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_type: torch.Tensor,
        batch: Optional[torch.Tensor] = None,
        num_graphs: Optional[int] = None,
        edge_weight: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        residue_type: Optional[torch.Tensor] = None,
        edge_feature: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """See the class docstring. GearNet-Edge also needs ``pos`` [N, 3] (C-alpha positions, for
        the line graph's angles) and either ``edge_feature`` [E, edge_input_dim] or ``residue_type``
        [N] (then :func:`gearnet_edge_feature` computes the 59 TorchDrug features)."""
        hiddens = []
        layer_input = x
        if self.num_angle_bin:
            if pos is None:
                raise ValueError("GearNet-Edge needs pos (C-alpha positions) for the spatial line graph")
            if edge_feature is None:
                if residue_type is None:
                    raise ValueError("GearNet-Edge needs edge_feature or residue_type")
                edge_feature = gearnet_edge_feature(residue_type, pos, edge_index, edge_type, self.num_relation)
            line_index, line_type = spatial_line_graph(pos, edge_index, self.num_angle_bin, backend=self.backend)
            line_csr = relational_csr(line_index, line_type, edge_index.size(1), self.num_angle_bin)
            edge_input = edge_feature.float()
            n = x.size(0)
            out_row = edge_index[1] * self.num_relation + edge_type
        # The residue graph is sorted for the message-passing kernels once; every layer (forward and
        # backward) reuses it.
        csr = relational_csr(edge_index, edge_type, x.size(0), self.num_relation)
        for i, layer in enumerate(self.layers):
            hidden = layer(layer_input, edge_index, edge_type, edge_weight, csr=csr)
            if self.short_cut and hidden.shape == layer_input.shape:
                hidden = hidden + layer_input
            if self.num_angle_bin:
                # Edge message passing on the line graph, then each edge's hidden state is summed
                # into its (target, relation) block and mixed by this layer's own `linear`.
                edge_hidden = self.edge_layers[i](edge_input, line_index, line_type, csr=line_csr)
                message = edge_hidden if edge_weight is None else edge_hidden * edge_weight.unsqueeze(-1)
                # In place into a fresh buffer: the out-of-place index_add would copy the zeros first.
                update = message.new_zeros(n * self.num_relation, edge_hidden.size(1)).index_add_(0, out_row, message)
                update = layer.linear(update.view(n, self.num_relation * edge_hidden.size(1)))
                if layer.activation is not None:
                    update = layer.activation(update)
                hidden = hidden + update
                edge_input = edge_hidden
            if self.batch_norm:
                hidden = self.batch_norms[i](hidden)
            hiddens.append(hidden)
            layer_input = hidden
        node_feature = torch.cat(hiddens, dim=-1) if self.concat_hidden else hiddens[-1]
        graph_feature = graph_readout(node_feature, batch, num_graphs, self.readout)
        return {"graph_feature": graph_feature, "node_feature": node_feature}


def graph_readout(node_feature: torch.Tensor, batch: Optional[torch.Tensor], num_graphs: Optional[int] = None,
                  readout: str = "sum") -> torch.Tensor:
    """Sum or mean of node features per graph of a packed batch: [N, D] -> [B, D]."""
    if batch is None:
        batch = torch.zeros(node_feature.size(0), dtype=torch.long, device=node_feature.device)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    out = node_feature.new_zeros(num_graphs, node_feature.size(1))
    out.index_add_(0, batch, node_feature)
    if readout == "mean":
        count = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(out.dtype)
        out = out / count.unsqueeze(-1)
    return out


def structure_state_dict(checkpoint: Union[Mapping[str, torch.Tensor], Mapping[str, object]],
                         prefix: str = "structure_model.") -> Dict[str, torch.Tensor]:
    """Extracts the GearNet part of a TorchDrug ESM-GearNet checkpoint.

    Accepts a state dict or a TorchDrug/engine checkpoint dict holding one under ``"model"`` or
    ``"state_dict"``. The keys of the structure model of a ``FusionNetwork`` contain
    ``structure_model.`` (e.g. ``model.structure_model.layers.0.linear.weight`` in a task
    checkpoint); everything up to and including that prefix is stripped. If no key contains the
    prefix, the keys of a plain GearNet (optionally under ``model.``/``module.``) are returned.
    Load the result with ``GearNet(...).load_state_dict(sd, strict=True)``.
    """
    state = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    out = {k.split(prefix, 1)[1]: v for k, v in state.items() if prefix in k}
    if out:
        return out
    gearnet_roots = ("layers.", "batch_norms.", "edge_layers.")
    for k, v in state.items():
        name = k
        for p in ("module.", "model."):
            while name.startswith(p) and not name.startswith(gearnet_roots):
                name = name[len(p):]
        if name.startswith(gearnet_roots):
            out[name] = v
    if not out:
        raise KeyError(f"structure_state_dict: no GearNet parameters (keys containing {prefix!r} or "
                       f"starting with layers./batch_norms.) in the checkpoint")
    return out
