"""Shared sampling for the pre-training methods: crops, residue masks, edges, edge pairs and edge paths.

Everything works on packed batches (:class:`~esmgear_fast.data.ProteinBatch`) and on residue graphs given
as dicts (``{"edge_index": [2, E], "edge_type": [E], ...}``, what ``FusionNetwork.build_graph`` returns;
``edge_index[0]`` = source j, ``edge_index[1]`` = target i). Randomness comes from torch's generator of
the batch's device (the engine seeds it per rank), so runs are reproducible.

Sampling rules (TorchDrug 0.2.1 semantics, differences noted):

* :func:`random_crop`: every protein longer than ``max_length`` keeps one contiguous window of exactly
  ``max_length`` residues, its start uniform over the ``L - max_length + 1`` possible starts
  (TorchDrug's ``TruncateProtein(random=True)``; its ``SubsequenceNode`` draws the start from
  ``L - max_length`` positions, one fewer); shorter proteins are kept whole.
* :func:`sample_residue_mask`: ``max(1, floor(L * rate))`` distinct residues per protein (TorchDrug
  draws that many positions *with* replacement, so it masks fewer when two draws coincide), never
  residues of unknown type (20, no class to predict).
* :func:`sample_edges`, :func:`sample_edge_pairs`, :func:`sample_edge_paths`: ``num_sample`` draws per
  protein, with replacement, uniform over that protein's candidates (``functional.variadic_sample``).
  Pairs are line-graph edges ``(k->j, j->i)`` with ``k != i``; paths are ``(k->t, t->j, j->i)`` with
  ``k != j`` and ``t != i`` (TorchDrug's removal of line-graph self loops and reversed edges). With
  ``exclude_self_loops`` (our default) self-loop edges (``i -> i``, relation 2 of GearNet's graph)
  are never drawn: TorchDrug draws them, giving zero-length distances and degenerate angles (θ = 0).
  Proteins with fewer than ``min_residues`` residues are skipped (dihedral: 4, the fewest that can
  form a path of four distinct residues). Candidates are counted exactly and drawn without building the (second) line graph, so the cost is
  O(E log E) whatever the degree. A protein without any candidate is skipped; the number of skipped
  proteins is returned so the task can log it, and a batch where every protein is skipped raises
  :class:`ValueError`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional, Tuple

import torch

from ..data.batch import ProteinBatch

__all__ = [
    "crop_batch",
    "random_crop",
    "sample_residue_mask",
    "sample_edges",
    "sample_edge_pairs",
    "sample_edge_paths",
    "remove_edges",
    "mask_edges",
    "subgraph",
    "UNKNOWN_RESIDUE",
]

UNKNOWN_RESIDUE = 20
# per-edge entries of a graph dict and the dimension that indexes edges
_EDGE_KEYS = {"edge_index": 1, "edge_type": 0, "edge_feature": 0, "edge_weight": 0}


# ---------------------------------------------------------------------------------------------- crops
def crop_batch(batch: ProteinBatch, starts: torch.Tensor, lengths: torch.Tensor) -> Tuple[ProteinBatch, torch.Tensor]:
    """The batch cut to residues ``starts[b] .. starts[b] + lengths[b] - 1`` of every protein ``b``.

    Returns ``(cropped, index)``: ``index [N']`` are the kept residues' rows in ``batch`` (so any
    per-residue tensor ``x`` of the batch crops as ``x[index]``).
    """
    B = batch.num_proteins
    starts = starts.to("cpu", torch.long)
    lengths = lengths.to("cpu", torch.long)
    num = batch.num_residues.to("cpu")
    if starts.shape != (B,) or lengths.shape != (B,):
        raise ValueError(f"crop_batch: starts {list(starts.shape)} and lengths {list(lengths.shape)} must be [{B}]")
    if bool((lengths < 1).any()) or bool((starts < 0).any()) or bool((starts + lengths > num).any()):
        bad = int(((lengths < 1) | (starts < 0) | (starts + lengths > num)).nonzero()[0, 0])
        raise ValueError(f"crop_batch: protein {bad} ({batch.names[bad]!r}, {int(num[bad])} residues) cannot be "
                         f"cropped to start {int(starts[bad])}, length {int(lengths[bad])}")
    ptr = batch.ptr.to("cpu")
    first = ptr[:-1] + starts
    owner = torch.repeat_interleave(torch.arange(B), lengths)
    new_ptr = torch.zeros(B + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=new_ptr[1:])
    index = first[owner] + (torch.arange(int(new_ptr[-1])) - new_ptr[:-1][owner])
    dev_index = index.to(batch.device)
    s, ln = starts.tolist(), lengths.tolist()
    cropped = replace(
        batch,
        pos=batch.pos[dev_index],
        backbone=batch.backbone[dev_index],
        residue_type=batch.residue_type[dev_index],
        chain_id=batch.chain_id[dev_index],
        residue_number=batch.residue_number[dev_index],
        plddt=None if batch.plddt is None else batch.plddt[dev_index],
        batch=owner.to(batch.device),
        ptr=new_ptr.to(batch.device),
        num_residues=lengths.to(batch.device),
        sequences=[q[a:a + n] for q, a, n in zip(batch.sequences, s, ln)],
        insertion_codes=[q[a:a + n] for q, a, n in zip(batch.insertion_codes, s, ln)],
        max_num_residues=max(ln),
    )
    return cropped, dev_index


def random_crop(batch: ProteinBatch, max_length: Optional[int]) -> Tuple[ProteinBatch, torch.Tensor]:
    """A uniformly placed contiguous window of ``max_length`` residues per protein (shorter ones kept whole).

    ``max_length=None`` returns the batch unchanged (and ``index`` = all rows).
    """
    if max_length is None:
        return batch, torch.arange(batch.num_nodes, device=batch.device)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"crop length must be a positive int or None, got {max_length!r}")
    num = batch.num_residues.to("cpu")
    lengths = num.clamp(max=max_length)
    room = (num - lengths + 1).to(torch.float64)
    starts = (torch.rand(len(num), dtype=torch.float64, device=batch.device).cpu() * room).long()
    starts = torch.minimum(starts, num - lengths)
    return crop_batch(batch, starts, lengths)


# ---------------------------------------------------------------------------------------------- residues
def sample_residue_mask(batch: ProteinBatch, rate, min_per_protein: int = 1) -> torch.Tensor:
    """``bool [N]``: ``max(min_per_protein, floor(L_b * rate_b))`` distinct residues of each protein.

    ``rate`` is a float or a ``[B]`` tensor (per-protein rates, SiamDiff). Residues of unknown type are
    never chosen; a protein with fewer eligible residues than asked gets all of its eligible ones, and a
    protein without any raises :class:`ValueError` naming it.
    """
    device = batch.device
    N, B = batch.num_nodes, batch.num_proteins
    rate = torch.as_tensor(rate, dtype=torch.float64, device=device)
    if rate.dim() == 0:
        rate = rate.expand(B)
    if rate.shape != (B,) or bool(((rate < 0) | (rate > 1) | rate.isnan()).any()):
        raise ValueError(f"mask rate must be in [0, 1] (a float or one per protein), got {rate.tolist()}")
    eligible = batch.residue_type != UNKNOWN_RESIDUE
    num_eligible = torch.bincount(batch.batch[eligible], minlength=B)
    if bool((num_eligible == 0).any()):
        bad = int((num_eligible == 0).nonzero()[0, 0])
        raise ValueError(f"protein {bad} ({batch.names[bad]!r}) has no residue of known type to mask")
    want = (batch.num_residues.to(torch.float64) * rate).floor().long().clamp(min=min_per_protein)
    want = torch.minimum(want, num_eligible)
    # a random rank of every eligible residue within its protein: the `want` lowest ranks are masked
    key = torch.rand(N, dtype=torch.float64, device=device)
    key = torch.where(eligible, key, torch.full_like(key, 2.0)) + batch.batch.to(torch.float64) * 4.0
    order = torch.argsort(key)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(N, device=device)
    rank = rank - batch.ptr[:-1][batch.batch]
    return (rank < want[batch.batch]) & eligible


# ---------------------------------------------------------------------------------------------- edges
def _check_graph(graph: Dict[str, torch.Tensor], num_nodes: int) -> torch.Tensor:
    if not isinstance(graph, dict) or "edge_index" not in graph:
        raise ValueError("this pre-training method needs a residue graph with edges ({'edge_index': [2, E], ...}); "
                         "the model's build_graph returned " + ("None (no structure encoder?)" if graph is None
                                                                 else f"keys {sorted(graph)}"))
    edge_index = graph["edge_index"]
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    return edge_index


def _csr(key: torch.Tensor, major: torch.Tensor, num_nodes: int):
    """Edges sorted by ``key`` (= major * N + minor): (order, sorted keys, rowptr over ``major``)."""
    sorted_key, order = torch.sort(key, stable=True)
    counts = torch.bincount(major, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=key.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return order, sorted_key, rowptr


def _draw(weight: torch.Tensor, group: torch.Tensor, num_groups: int, num_sample: int):
    """``num_sample`` draws with replacement per group, probability ∝ integer ``weight`` within the group.

    Returns ``(picked [G', S] element indices, groups [G'] that have positive total weight, skipped)``.
    """
    order = torch.argsort(group, stable=True)
    w = weight[order]
    cw = torch.cumsum(w, 0)
    total = torch.zeros(num_groups, dtype=torch.long, device=weight.device).index_add_(0, group, weight)
    base = torch.cumsum(total, 0) - total
    groups = (total > 0).nonzero().squeeze(1)
    skipped = num_groups - int(groups.numel())
    if groups.numel() == 0:
        raise ValueError("no protein of the batch has anything to sample (too few residues or edges)")
    u = torch.rand(groups.numel(), num_sample, dtype=torch.float64, device=weight.device)
    r = (u * total[groups, None].to(torch.float64)).long()
    r = torch.minimum(r, total[groups, None] - 1) + base[groups, None]
    pos = torch.searchsorted(cw, r, right=True)
    return order[pos], groups, skipped


def _pick_excluding(rowptr_start, degree, block_lo, block_len, order):
    """One uniform element of ``[start, start + degree)`` outside ``[block_lo, block_lo + block_len)``."""
    u = torch.rand(degree.shape, dtype=torch.float64, device=degree.device)
    r = (u * (degree - block_len).to(torch.float64)).long()
    r = torch.minimum(r, degree - block_len - 1)
    pos = rowptr_start + r
    pos = torch.where(pos >= block_lo, pos + block_len, pos)
    return order[pos]


def _candidates(edge_index: torch.Tensor, exclude_self_loops: bool, node_batch: torch.Tensor,
                num_proteins: int, min_residues: int) -> torch.Tensor:
    """Edges that may be drawn: no self loops (when excluded), only in proteins of >= ``min_residues``."""
    ok = torch.ones(edge_index.size(1), dtype=torch.bool, device=edge_index.device)
    if exclude_self_loops:
        ok &= edge_index[0] != edge_index[1]
    if min_residues > 1:
        size = torch.bincount(node_batch, minlength=num_proteins)
        ok &= size[node_batch[edge_index[1]]] >= min_residues
    return ok.nonzero().squeeze(1)


def sample_edges(graph, node_batch: torch.Tensor, num_proteins: int, num_sample: int,
                 exclude_self_loops: bool = True, min_residues: int = 1):
    """``num_sample`` edge ids per protein (uniform, with replacement).

    Returns ``(edges [B', S], proteins [B'], skipped)``: the edge ids into ``graph``, the proteins they
    belong to, and how many proteins had no candidate edge.
    """
    edge_index = _check_graph(graph, node_batch.numel())
    cand = _candidates(edge_index, exclude_self_loops, node_batch, num_proteins, min_residues)
    weight = torch.ones(cand.numel(), dtype=torch.long, device=edge_index.device)
    picked, groups, skipped = _draw(weight, node_batch[edge_index[1, cand]], num_proteins, num_sample)
    return cand[picked], groups, skipped


def sample_edge_pairs(graph, node_batch: torch.Tensor, num_proteins: int, num_sample: int,
                      exclude_self_loops: bool = True, min_residues: int = 1):
    """``num_sample`` adjacent edge pairs ``(a = k->j, b = j->i)``, ``k != i``, per protein (uniform).

    Returns ``(a [B', S], b [B', S], proteins [B'], skipped)`` (edge ids into ``graph``).
    """
    edge_index = _check_graph(graph, node_batch.numel())
    N = node_batch.numel()
    cand = _candidates(edge_index, exclude_self_loops, node_batch, num_proteins, min_residues)
    src, dst = edge_index[0, cand], edge_index[1, cand]
    # in-edges of every node, sorted by (target, source): the in-edges of j from i are one block
    in_order, in_key, in_ptr = _csr(dst * N + src, dst, N)
    j, i = src, dst                                           # b = (j -> i) for every candidate b
    rev_lo = torch.searchsorted(in_key, j * N + i)            # in-edges of j coming from i
    rev_len = torch.searchsorted(in_key, j * N + i, right=True) - rev_lo
    indeg_j = in_ptr[j + 1] - in_ptr[j]
    weight = indeg_j - rev_len                                # valid a for this b
    b_local, groups, skipped = _draw(weight, node_batch[dst], num_proteins, num_sample)
    bj = j[b_local]
    a_local = _pick_excluding(in_ptr[bj], indeg_j[b_local], rev_lo[b_local], rev_len[b_local], in_order)
    return cand[a_local], cand[b_local], groups, skipped


def sample_edge_paths(graph, node_batch: torch.Tensor, num_proteins: int, num_sample: int,
                      exclude_self_loops: bool = True, min_residues: int = 1):
    """``num_sample`` three-edge paths ``(a = k->t, b = t->j, c = j->i)``, ``k != j``, ``t != i``, per protein.

    Returns ``(a, b, c [B', S], proteins [B'], skipped)`` (edge ids into ``graph``).
    """
    edge_index = _check_graph(graph, node_batch.numel())
    N = node_batch.numel()
    cand = _candidates(edge_index, exclude_self_loops, node_batch, num_proteins, min_residues)
    src, dst = edge_index[0, cand], edge_index[1, cand]
    in_order, in_key, in_ptr = _csr(dst * N + src, dst, N)      # grouped by target, then source
    out_order, out_key, out_ptr = _csr(src * N + dst, src, N)   # grouped by source, then target
    t, j = src, dst                                              # b = (t -> j)
    # a = (k -> t) with k != j: exclude the in-edges of t coming from j (the edges j -> t)
    a_lo = torch.searchsorted(in_key, t * N + j)
    a_len = torch.searchsorted(in_key, t * N + j, right=True) - a_lo
    # c = (j -> i) with i != t: exclude the out-edges of j going to t (the same edges j -> t)
    c_lo = torch.searchsorted(out_key, j * N + t)
    c_len = torch.searchsorted(out_key, j * N + t, right=True) - c_lo
    indeg_t = in_ptr[t + 1] - in_ptr[t]
    outdeg_j = out_ptr[j + 1] - out_ptr[j]
    weight = (indeg_t - a_len) * (outdeg_j - c_len)
    b_local, groups, skipped = _draw(weight, node_batch[dst], num_proteins, num_sample)
    a_local = _pick_excluding(in_ptr[t[b_local]], indeg_t[b_local], a_lo[b_local], a_len[b_local], in_order)
    c_local = _pick_excluding(out_ptr[j[b_local]], outdeg_j[b_local], c_lo[b_local], c_len[b_local], out_order)
    return cand[a_local], cand[b_local], cand[c_local], groups, skipped


def _edge_subset(graph: Dict[str, torch.Tensor], keep: torch.Tensor) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in graph.items():
        if key not in _EDGE_KEYS:
            raise ValueError(f"cannot remove edges from a graph with the entry {key!r} "
                             f"(known per-edge entries: {sorted(_EDGE_KEYS)})")
        out[key] = None if value is None else value.index_select(_EDGE_KEYS[key], keep)
    return out


def remove_edges(graph: Dict[str, torch.Tensor], edge_ids: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The graph without the edges ``edge_ids`` (any shape, repeats allowed); other edges keep their order."""
    E = graph["edge_index"].size(1)
    keep = torch.ones(E, dtype=torch.bool, device=graph["edge_index"].device)
    keep[edge_ids.reshape(-1)] = False
    return _edge_subset(graph, keep.nonzero().squeeze(1))


def mask_edges(graph: Dict[str, torch.Tensor], node_batch: torch.Tensor, num_proteins: int, rate: float):
    """Removes ``max(1, floor(E_b * rate))`` distinct random edges of every protein with edges.

    TorchDrug's ``RandomEdgeMask`` draws that many with replacement (fewer when draws coincide).
    """
    edge_index = _check_graph(graph, node_batch.numel())
    E = edge_index.size(1)
    if E == 0:
        return graph
    owner = node_batch[edge_index[1]]
    per = torch.bincount(owner, minlength=num_proteins)
    want = (per.to(torch.float64) * rate).floor().long().clamp(min=1)
    key = torch.rand(E, dtype=torch.float64, device=edge_index.device) + owner.to(torch.float64) * 2.0
    order = torch.argsort(key)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(E, device=edge_index.device)
    start = torch.cumsum(per, 0) - per
    drop = (rank - start[owner]) < want[owner]
    return _edge_subset(graph, (~drop).nonzero().squeeze(1))


def subgraph(graph: Dict[str, torch.Tensor], index: torch.Tensor, num_nodes: int) -> Dict[str, torch.Tensor]:
    """The graph restricted to the nodes ``index`` (renumbered ``0..len(index)-1``), edges keep their order."""
    edge_index = _check_graph(graph, num_nodes)
    new_id = torch.full((num_nodes,), -1, dtype=torch.long, device=edge_index.device)
    new_id[index] = torch.arange(index.numel(), device=edge_index.device)
    mapped = new_id[edge_index]
    keep = ((mapped[0] >= 0) & (mapped[1] >= 0)).nonzero().squeeze(1)
    out = _edge_subset(graph, keep)
    out["edge_index"] = mapped.index_select(1, keep)
    return out
