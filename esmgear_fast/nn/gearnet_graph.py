from typing import Optional, Tuple

import torch
from torch import nn

from .. import ops

# TorchDrug's SpatialEdge / KNNEdge drop pairs closer than this (duplicate coordinates).
DUPLICATE_EPS = 1e-10


def gearnet_graph(
    pos: torch.Tensor,
    batch: torch.Tensor,
    chain_id: torch.Tensor,
    seq_max_distance: int = 2,
    radius: float = 10.0,
    knn_k: int = 10,
    min_distance: int = 5,
    max_num_neighbors: Optional[int] = 32,
    chain_aware_min_distance: bool = False,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Functional form of :class:`GearNetGraph` on packed tensors.

    Args:
        pos: [N, 3] C-alpha positions of a packed batch.
        batch: [N] int64 sorted protein index of each residue.
        chain_id: [N] chain index of each residue (compared only within a protein).

    Returns:
        ``(edge_index [2, E], edge_type [E])``, see :class:`GearNetGraph`.
    """
    n = pos.size(0)
    if batch.shape != (n,) or chain_id.shape != (n,):
        raise ValueError(
            f"gearnet_graph: pos {list(pos.shape)}, batch {list(batch.shape)} and chain_id "
            f"{list(chain_id.shape)} must describe the same N residues"
        )
    batch = batch.long()
    chain_id = chain_id.long()
    index = torch.arange(n, device=pos.device)
    blocks = []  # one [2, E_r] edge block per relation, each ordered by (target, source)

    # Relations 0 .. 2*seq_max_distance: offset = index(target) - index(source) within one chain.
    # Slices pair every target with its source (no gathers).
    for offset in range(-seq_max_distance, seq_max_distance + 1):
        lo, hi = max(offset, 0), n + min(offset, 0)  # targets whose source index exists
        if hi <= lo:
            blocks.append(index.new_empty((2, 0)))
            continue
        tgt = index[lo:hi]
        same = (batch[lo - offset:hi - offset] == batch[lo:hi]) & (chain_id[lo - offset:hi - offset] == chain_id[lo:hi])
        tgt = tgt[same]
        blocks.append(torch.stack([tgt - offset, tgt]))

    spatial = ops.radius_knn_graph(pos, radius, knn_k, batch, max_num_neighbors=max_num_neighbors, backend=backend)
    for edge_index in spatial:
        src, tgt = edge_index
        # As TorchDrug: the sequence filter runs after the neighbour query (the cap counted these
        # pairs) and compares indices within the protein, not PDB residue numbers; then pairs
        # closer than 1e-10 (duplicate coordinates) go.
        far = (src - tgt).abs() >= min_distance
        if chain_aware_min_distance:
            far |= chain_id.index_select(0, src) != chain_id.index_select(0, tgt)
        distinct = (pos.index_select(0, src) - pos.index_select(0, tgt)).norm(dim=-1) >= DUPLICATE_EPS
        blocks.append(edge_index.index_select(1, (far & distinct).nonzero().squeeze(1)))

    return _group_by_protein(blocks, batch)


def _group_by_protein(blocks, batch):
    """Concatenates relation blocks into one edge list ordered by (protein, relation, target, source).

    Each block is already ordered by target, hence by protein, so every (protein, relation) group
    is a contiguous run of its block: a counting placement moves the runs without sorting.
    """
    num_proteins = int(batch[-1]) + 1 if batch.numel() else 0
    num_relation = len(blocks)
    group_sizes = torch.stack(
        [torch.bincount(batch[b[1]], minlength=num_proteins) for b in blocks], dim=1
    )  # [num_proteins, num_relation]
    flat = group_sizes.flatten()
    out_start = (flat.cumsum(0) - flat).view(num_proteins, num_relation)  # row-major: protein first
    total = int(flat.sum())
    edge_index = batch.new_empty((2, total))
    edge_type = batch.new_empty((total,))
    for relation, block in enumerate(blocks):
        if block.size(1) == 0:
            continue
        protein = batch[block[1]]
        sizes = group_sizes[:, relation]
        block_start = sizes.cumsum(0) - sizes
        rank = torch.arange(block.size(1), device=batch.device) - block_start[protein]
        dest = out_start[protein, relation] + rank
        edge_index[:, dest] = block
        edge_type[dest] = relation
    return edge_index, edge_type


class GearNetGraph(nn.Module):
    r"""The residue graph of GearNet / ESM-GearNet, with TorchDrug's exact relation scheme.

    Nodes are residues (C-alpha positions). Edges j -> i never cross proteins and are typed:

    * relations ``0 .. 2*seq_max_distance``: sequential edges between residues of the same chain
      whose indices differ by ``offset = index(i) - index(j)`` in ``[-seq_max_distance,
      seq_max_distance]``; relation ``offset + seq_max_distance`` (relation 2 holds the self loops);
    * relation ``2*seq_max_distance + 1`` (5 by default): radius edges, ``|x_j - x_i| < radius``,
      at most ``max_num_neighbors`` nearest sources per target;
    * relation ``2*seq_max_distance + 2`` (6 by default): the ``knn_k`` nearest sources per target.

    For radius and kNN edges, pairs whose residue indices within the protein differ by less than
    ``min_distance`` are removed after the neighbour query (so the cap counted them), then pairs
    closer than 1e-10 are removed — exactly as TorchDrug's ``SpatialEdge``/``KNNEdge``. The index
    rule ignores chains (TorchDrug's behaviour); ``chain_aware_min_distance=True`` keeps pairs from
    different chains regardless of their index difference, for multi-chain complexes.

    Edges are grouped by protein and ordered by (relation, target, source) within each protein.

    Shapes: called on a :class:`~esmgear_fast.data.ProteinBatch` with N residues, returns
    ``edge_index`` [2, E] int64 (row 0 source j, row 1 target i) and ``edge_type`` [E] int64.
    """

    def __init__(
        self,
        seq_max_distance: int = 2,
        radius: float = 10.0,
        knn_k: int = 10,
        min_distance: int = 5,
        max_num_neighbors: Optional[int] = 32,
        chain_aware_min_distance: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        self.seq_max_distance = seq_max_distance
        self.radius = radius
        self.knn_k = knn_k
        self.min_distance = min_distance
        self.max_num_neighbors = max_num_neighbors
        self.chain_aware_min_distance = chain_aware_min_distance
        self.backend = backend

    @property
    def num_relation(self) -> int:
        return 2 * self.seq_max_distance + 3

    def forward(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        return gearnet_graph(
            batch.pos,
            batch.batch,
            batch.chain_id,
            seq_max_distance=self.seq_max_distance,
            radius=self.radius,
            knn_k=self.knn_k,
            min_distance=self.min_distance,
            max_num_neighbors=self.max_num_neighbors,
            chain_aware_min_distance=self.chain_aware_min_distance,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"seq_max_distance={self.seq_max_distance}, radius={self.radius}, knn_k={self.knn_k}, "
            f"min_distance={self.min_distance}, max_num_neighbors={self.max_num_neighbors}, "
            f"chain_aware_min_distance={self.chain_aware_min_distance}"
        )
