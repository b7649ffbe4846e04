"""Fusion of ESM-2 with a structure encoder (ESM-GearNet's ``FusionNetwork``) on packed batches.

:class:`FusionNetwork` runs the packed ESM-2 encoder on a :class:`~esmgear_fast.data.ProteinBatch`, builds
the graph its structure encoder needs (once per forward, on the batch's device) and combines both:

``serial``  (``"series"`` in ESM-GearNet's configs) the structure encoder reads ESM's per-residue output;
``parallel`` the structure encoder reads the 21-dim one-hot residue types;
            both return ``node = [esm node || structure node]`` and ``graph = [esm graph || structure graph]``
            (ESM graph feature = mean over residues);
``cross``   both branches as in ``parallel``, projected to ``cross_dim``, then per protein the ``2 L`` tokens
            ``[L sequence tokens ; L structure tokens]`` go through one multi-head self-attention block
            (:class:`CrossAttentionBlock`); ``node = [sequence half || structure half]``,
            ``graph = sum of node over residues``.

``sequence_model=None`` gives the structure-only baseline (one-hot input), ``structure_model=None`` the
ESM-only baseline. Parameter names equal ESM-GearNet's where the modules are ours (``structure_model.*``,
``seq_linear``, ``struct_linear``, ``attn.{query,key,value,attn}``); ``sequence_model`` is our
:class:`~esmgear_fast.esm.ESM2` (fair-esm's names with fused QKV); :func:`esmgear_fast.models.load_esm_gearnet`
reads (and :func:`~esmgear_fast.models.to_esm_gearnet_state_dict` writes) the published file layout.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..esm import alphabet as A
from ..esm.attention import PackedSequences, packed_attention
from ..io.residues import RESIDUE_SYMBOLS
from ..nn.gearnet_graph import GearNetGraph
from .cdconv import CDConv
from .gearnet import GearNet, graph_readout, residue_one_hot
from .gvp_gnn import GVPGNN, gvp_radius_graph

__all__ = ["FusionNetwork", "CrossAttentionBlock", "FUSIONS", "canonical_fusion", "residue_type_to_esm_token",
           "esm_tokens_from_batch"]

#: Fusion names (``"series"`` is accepted as an alias of ``"serial"``).
FUSIONS = ("serial", "parallel", "cross")
_ALIASES = {"series": "serial"}
_ESM_OPTIONS = ("long_sequences", "window_overlap", "max_residues")

#: ESM token of every TorchDrug residue type (0..19 = G A S P V T C I L N D Q K E M H F R Y W, 20 = unknown -> X).
RESIDUE_TYPE_TO_TOKEN = torch.tensor([A.TOKENS.index(s) for s in RESIDUE_SYMBOLS] + [A.TOKENS.index("X")])
# Tokens a residue of unknown type (20) may carry: non-standard letters (X, B, U, Z, O; J is read as X).
_NONSTANDARD_TOKENS = torch.tensor([A.TOKENS.index(s) for s in "XBUZO"])


def canonical_fusion(fusion: str) -> str:
    """``"serial"`` / ``"parallel"`` / ``"cross"`` for a fusion name (``"series"`` -> ``"serial"``)."""
    if not isinstance(fusion, str):
        raise ValueError(f"fusion must be a string ({', '.join(FUSIONS)} or 'series'), got {fusion!r}")
    name = _ALIASES.get(fusion.lower(), fusion.lower())
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}: choose one of {', '.join(FUSIONS)} ('series' = 'serial')")
    return name


def residue_type_to_esm_token(residue_type: torch.Tensor) -> torch.Tensor:
    """ESM token ids of TorchDrug residue types (what TorchDrug's ``mapping`` buffer does for types 0..19;
    the unknown type 20 becomes ESM's ``X``)."""
    table = RESIDUE_TYPE_TO_TOKEN.to(residue_type.device)
    return table[residue_type.long()]


def esm_tokens_from_batch(batch, check: bool = True) -> torch.Tensor:
    """ESM residue tokens ``int64 [N]`` (no BOS/EOS) of ``batch.sequences``, on the batch's device.

    With ``check`` the sequences must describe the batch's residues: same count per protein as
    ``num_residues`` and, residue by residue, the letter of ``residue_type`` (a residue of unknown type
    20 may carry X, B, U, Z, O or J). Anything else raises :class:`ValueError` naming the protein and
    the first differing residue.
    """
    sequences = list(batch.sequences)
    counts = batch.num_residues.tolist()
    if len(sequences) != len(counts):
        raise ValueError(f"batch has {len(counts)} proteins but {len(sequences)} sequences")
    parts = []
    for b, (seq, n) in enumerate(zip(sequences, counts)):
        if len(seq) != n:
            raise ValueError(f"protein {b} ({batch.names[b]!r}): its sequence has {len(seq)} letters but the "
                             f"structure has {n} residues; sequence and residues must describe the same chain(s)")
        try:
            parts.append(A.encode_sequence(seq))
        except ValueError as e:
            raise ValueError(f"protein {b} ({batch.names[b]!r}): {e}") from None
    tokens = torch.cat(parts)
    if check:
        rt = batch.residue_type.detach().to("cpu", torch.long)
        if rt.numel() and (int(rt.min()) < 0 or int(rt.max()) > 20):
            raise ValueError(f"residue_type must be in 0..20 (TorchDrug order, 20 = unknown), got values in "
                             f"{int(rt.min())}..{int(rt.max())}")
        ok = tokens == RESIDUE_TYPE_TO_TOKEN[rt]
        ok |= (rt == 20) & torch.isin(tokens, _NONSTANDARD_TOKENS)
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0])
            b = int(torch.searchsorted(batch.ptr.cpu(), torch.tensor(i), right=True)) - 1
            local = i - int(batch.ptr[b])
            letter = sequences[b][local]
            expected = (RESIDUE_SYMBOLS + "X")[int(rt[i])]
            raise ValueError(
                f"protein {b} ({batch.names[b]!r}): residue {local} is {expected!r} in residue_type but "
                f"{letter!r} in the sequence given to ESM; residues and ESM tokens disagree")
    return tokens.to(batch.pos.device)


class CrossAttentionBlock(nn.Module):
    """Multi-head self-attention over packed token groups (TorchDrug's ``SelfAttentionBlock``).

    ``out = MHA(query(x), key(x), value(x))`` where ``MHA`` is :class:`torch.nn.MultiheadAttention`
    (its own input projections, ``num_heads`` heads, dropout on the attention weights, output
    projection); no residual connection, no LayerNorm. Parameter names are TorchDrug's (``query``,
    ``key``, ``value``, ``attn.in_proj_weight``, ``attn.in_proj_bias``, ``attn.out_proj.*``).

    :meth:`forward` takes packed tokens ``x [T, D]`` and ``lengths`` (Python ints, the token count of
    every group; tokens attend only within their group) and never pads on CPU: one SDPA call per group
    (``impl="loop"``); ``"padded"`` makes one masked call, ``"auto"`` = loop on CPU, padded on CUDA
    (the varlen FlashAttention kernel of :func:`esmgear_fast.esm.attention.packed_attention` when no
    dropout is active and the input is half precision). Equal to ``nn.MultiheadAttention`` on the
    padded input with a key-padding mask (tested).
    """

    def __init__(self, hidden_dim: int, num_heads: int = 8, dropout: float = 0.1, impl: str = "auto"):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"cross attention: hidden dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        if impl not in ("auto", "loop", "padded"):
            raise ValueError(f"cross attention impl must be auto, loop or padded, got {impl!r}")
        self.hidden_dim, self.num_heads, self.head_dim = hidden_dim, num_heads, hidden_dim // num_heads
        self.impl = impl
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.key = nn.Linear(hidden_dim, hidden_dim)
        self.value = nn.Linear(hidden_dim, hidden_dim)
        self.attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout)

    def forward(self, x: torch.Tensor, lengths: List[int]) -> torch.Tensor:
        T, D = x.shape
        H, d = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b = self.attn.in_proj_bias
        b_q, b_k, b_v = b.chunk(3) if b is not None else (None, None, None)
        q = F.linear(self.query(x), w_q, b_q).view(T, H, d)
        k = F.linear(self.key(x), w_k, b_k).view(T, H, d)
        v = F.linear(self.value(x), w_v, b_v).view(T, H, d)
        p = self.attn.dropout if self.training else 0.0
        impl = self.impl if self.impl != "auto" else ("padded" if x.is_cuda else "loop")
        if p == 0.0:
            packed = PackedSequences(_cu(lengths, x.device), list(lengths), max(lengths), None, None)
            o = packed_attention(q * d ** -0.5, k, v, packed, "auto" if x.is_cuda else impl)
        elif impl == "loop":
            o = torch.empty_like(q)
            start = 0
            for n in lengths:
                end = start + n
                o[start:end] = F.scaled_dot_product_attention(
                    q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1),
                    dropout_p=p).transpose(0, 1)
                start = end
        else:
            B, L = len(lengths), max(lengths)
            cu = _cu(lengths, x.device)
            lens = cu.diff()
            seq = torch.repeat_interleave(torch.arange(B, device=x.device), lens, output_size=T)
            pos = torch.arange(T, device=x.device) - cu[:-1][seq]
            valid = torch.arange(L, device=x.device)[None, :] < lens[:, None]

            def pad(t):
                out = t.new_zeros(B, L, H, d)
                out[seq, pos] = t
                return out.transpose(1, 2)

            o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=valid[:, None, None, :],
                                               dropout_p=p).transpose(1, 2)[seq, pos]
        return self.attn.out_proj(o.reshape(T, D))


def _cu(lengths: List[int], device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return cu.to(device)


def _structure_kind(model: Optional[nn.Module]) -> Optional[str]:
    if model is None:
        return None
    if isinstance(model, GearNet):
        return "gearnet_edge" if model.num_angle_bin else "gearnet"
    if isinstance(model, GVPGNN):
        return "gvp"
    if isinstance(model, CDConv):
        return "cdconv"
    raise ValueError(f"structure_model must be a GearNet, GVPGNN or CDConv (or None), got {type(model).__name__}")


class FusionNetwork(nn.Module):
    """ESM-2 + structure encoder (see the module doc for the fusions and baselines).

    Args:
        sequence_model: an :class:`~esmgear_fast.esm.ESM2` or ``None`` (structure-only baseline).
        structure_model: a :class:`~esmgear_fast.models.GearNet` (incl. GearNet-Edge),
            :class:`~esmgear_fast.models.GVPGNN`, :class:`~esmgear_fast.models.CDConv` or ``None``
            (ESM-only baseline). Its ``input_dim`` must be ESM's width for ``serial`` and 21 otherwise.
        fusion: ``"serial"`` (alias ``"series"``), ``"parallel"`` or ``"cross"``. For a baseline the
            fusion has no effect (recorded as ``None``); ``cross`` is rejected there.
        cross_dim: width of the cross-fusion projections (required for ``cross``, a multiple of 8).
        **esm_options: passed to every ESM call: ``long_sequences`` (``"window"`` default /
            ``"truncate"`` / ``"error"``), ``window_overlap``, ``max_residues``.

    Attributes: ``output_dim``, ``fusion``, ``structure_kind`` (``gearnet``, ``gearnet_edge``, ``gvp``,
    ``cdconv`` or ``None``), ``mask_token`` (ESM token given to residues of ``residue_mask``, default
    ``<mask>`` = 32).
    """

    def __init__(self, sequence_model: Optional[nn.Module], structure_model: Optional[nn.Module],
                 fusion: str = "serial", cross_dim: Optional[int] = None, **esm_options):
        super().__init__()
        unknown = sorted(set(esm_options) - set(_ESM_OPTIONS))
        if unknown:
            raise TypeError(f"FusionNetwork: unknown option(s) {unknown}; ESM options are {list(_ESM_OPTIONS)}")
        fusion = canonical_fusion(fusion)
        if sequence_model is None and structure_model is None:
            raise ValueError("FusionNetwork needs a sequence model, a structure model or both; got neither")
        kind = _structure_kind(structure_model)
        self.sequence_model = sequence_model
        self.structure_model = structure_model
        self.structure_kind = kind
        self.esm_options = dict(esm_options)
        self.mask_token = A.MASK
        self.graph_builder = GearNetGraph() if kind in ("gearnet", "gearnet_edge") else None
        if kind in ("gearnet", "gearnet_edge") and structure_model.num_relation != self.graph_builder.num_relation:
            raise ValueError(f"GearNet has num_relation={structure_model.num_relation} but the ESM-GearNet graph "
                             f"has {self.graph_builder.num_relation} relations")

        if sequence_model is None or structure_model is None:
            if fusion == "cross":
                raise ValueError("cross fusion needs both a sequence and a structure model "
                                 f"(got sequence_model={'None' if sequence_model is None else 'ESM'}, "
                                 f"structure_model={kind})")
            self.fusion = None
            if structure_model is not None:
                self._check_input_dim(21, "the structure-only baseline reads one-hot residue types")
                self.output_dim = structure_model.output_dim
            else:
                self.output_dim = sequence_model.embed_dim
            return
        self.fusion = fusion
        esm_dim = sequence_model.embed_dim
        if fusion == "serial":
            self._check_input_dim(esm_dim, "serial fusion feeds ESM's per-residue output to the structure encoder")
        else:
            self._check_input_dim(21, f"{fusion} fusion feeds one-hot residue types to the structure encoder")
        if fusion in ("serial", "parallel"):
            self.output_dim = esm_dim + structure_model.output_dim
        else:
            if kind == "cdconv":
                raise ValueError("cross fusion is not defined for CDConv: CDConv has no per-residue output (its node "
                                 "feature is the protein feature broadcast); ESM-GearNet pairs CDConv only with "
                                 "serial and parallel fusion")
            if cross_dim is None or int(cross_dim) < 1 or int(cross_dim) % 8:
                raise ValueError(f"cross fusion needs cross_dim, a positive multiple of 8 (8 heads), got {cross_dim!r}")
            cross_dim = int(cross_dim)
            self.seq_linear = nn.Linear(esm_dim, cross_dim)
            self.struct_linear = nn.Linear(structure_model.output_dim, cross_dim)
            self.attn = CrossAttentionBlock(cross_dim, num_heads=8, dropout=0.1)
            self.output_dim = 2 * cross_dim
        self.cross_dim = cross_dim if fusion == "cross" else None

    def _check_input_dim(self, expected: int, why: str) -> None:
        got = self.structure_model.input_dim
        if got != expected:
            raise ValueError(f"structure encoder ({self.structure_kind}) has input_dim={got} but {why} "
                             f"(width {expected})")

    # ------------------------------------------------------------------ inputs
    def check_batch(self, batch) -> None:
        """Raises :class:`ValueError` for batches this model cannot encode (see the README)."""
        counts = batch.num_residues.tolist()
        for b, n in enumerate(counts):
            if n == 0:
                raise ValueError(f"protein {b} ({batch.names[b]!r}) has no residues")
            if n == 1 and self.structure_model is not None:
                raise ValueError(f"protein {b} ({batch.names[b]!r}) has a single residue: the structure encoder "
                                 f"({self.structure_kind}) needs at least 2 residues")
        if self.structure_model is not None and not bool(torch.isfinite(batch.pos).all()):
            bad = (~torch.isfinite(batch.pos).all(-1)).nonzero()[:, 0]
            b = int(batch.batch[bad[0]])
            raise ValueError(f"protein {b} ({batch.names[b]!r}) has {int((batch.batch[bad] == b).sum())} C-alpha "
                             f"coordinates that are NaN or infinite (missing atoms?); the structure encoder "
                             f"needs finite positions")

    def build_graph(self, batch) -> Optional[Dict[str, torch.Tensor]]:
        """The graph the structure encoder reads, on the batch's device: GearNet / GearNet-Edge
        ``{"edge_index" [2, E], "edge_type" [E]}`` (:class:`~esmgear_fast.nn.GearNetGraph`), GVP
        ``{"edge_index"}`` (10 A radius graph, 32 nearest), CDConv / no structure model: ``None``
        (CDConv builds its own radius graphs per stage)."""
        kind = self.structure_kind
        if kind in ("gearnet", "gearnet_edge"):
            edge_index, edge_type = self.graph_builder(batch)
            return {"edge_index": edge_index, "edge_type": edge_type}
        if kind == "gvp":
            m = self.structure_model
            return {"edge_index": gvp_radius_graph(batch.pos, batch.batch, m.radius, m.max_num_neighbors)}
        return None

    # ------------------------------------------------------------------ branches
    def encode_sequence(self, batch, residue_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ESM's per-residue output ``[N, D]`` (last layer after the final LayerNorm)."""
        tokens = esm_tokens_from_batch(batch)
        if residue_mask is not None:
            tokens = tokens.masked_fill(residue_mask, self.mask_token)
        out = self.sequence_model(tokens=tokens, cu_seqlens=batch.ptr, **self.esm_options)
        return out.representations

    def sequence_graph_feature(self, batch, node: torch.Tensor) -> torch.Tensor:
        """Mean of ESM's residue outputs per protein (with ``long_sequences="truncate"`` over the encoded
        residues only, as TorchDrug's ESM)."""
        B = batch.num_proteins
        total = node.new_zeros(B, node.size(1)).index_add_(0, batch.batch, node)
        count = batch.num_residues
        if self.esm_options.get("long_sequences") == "truncate":
            window = self.esm_options.get("max_residues") or self.sequence_model.config.max_residues
            count = count.clamp(max=int(window))
        return total / count.clamp(min=1).to(total.dtype).unsqueeze(-1)

    def encode_structure(self, batch, x: torch.Tensor, graph: Optional[dict],
                         residue_mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        kind, m, B = self.structure_kind, self.structure_model, batch.num_proteins
        if kind in ("gearnet", "gearnet_edge"):
            if graph is None or "edge_index" not in graph or "edge_type" not in graph:
                raise ValueError("GearNet needs graph={'edge_index', 'edge_type'} (see build_graph)")
            kwargs = {}
            if kind == "gearnet_edge":
                rt = batch.residue_type
                if residue_mask is not None:
                    rt = rt.masked_fill(residue_mask, 20)  # masked residues: all-zero type blocks
                kwargs = dict(pos=batch.pos, residue_type=rt, edge_feature=graph.get("edge_feature"))
            return m(x, graph["edge_index"], graph["edge_type"], batch.batch, B, **kwargs)
        if kind == "gvp":
            edge_index = None if graph is None else graph.get("edge_index")
            return m(x, batch.pos, batch.batch, B, edge_index=edge_index)
        out = m(x, batch.pos, batch.residue_number, batch.batch, B)
        return {"graph_feature": out["graph_feature"], "node_feature": out["graph_feature"][batch.batch]}

    # ------------------------------------------------------------------ forward
    def forward(self, batch, graph: Optional[dict] = None,
                residue_mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``{"node_feature": [N, output_dim], "graph_feature": [B, output_dim]}`` for a packed batch.

        ``graph``: a (possibly edited) result of :meth:`build_graph`; ``None`` builds it here.
        ``residue_mask`` (bool ``[N]``): those residues get ESM's ``mask_token`` and an all-zero
        one-hot structure input (GearNet-Edge edge features see them as unknown type). In serial
        fusion the structure encoder reads ESM's output for the masked tokens.

        ESM-GearNet's residue-type pre-training (TorchDrug ``AttributeMasking``) instead zeroes the
        one-hot ``residue_feature`` and sets ``residue_type`` to 0, so its ESM reads glycine (``G``)
        at masked residues and its GearNet-Edge edge features see glycine; set
        ``model.mask_token = esmgear_fast.esm.TOKENS.index("G")`` to feed ESM the same token.
        """
        self.check_batch(batch)
        N = batch.num_nodes
        if residue_mask is not None:
            if residue_mask.dtype != torch.bool or tuple(residue_mask.shape) != (N,):
                raise ValueError(f"residue_mask must be a bool tensor of shape [N={N}], got "
                                 f"{residue_mask.dtype} {tuple(residue_mask.shape)}")
            residue_mask = residue_mask.to(batch.pos.device)

        seq_node = seq_graph = None
        if self.sequence_model is not None:
            seq_node = self.encode_sequence(batch, residue_mask)
            if self.structure_model is None:
                return {"node_feature": seq_node, "graph_feature": self.sequence_graph_feature(batch, seq_node)}
            if self.fusion != "cross":
                seq_graph = self.sequence_graph_feature(batch, seq_node)

        if self.fusion == "serial":
            x = seq_node
        else:
            x = residue_one_hot(batch.residue_type)
            if residue_mask is not None:
                x = x.masked_fill(residue_mask.unsqueeze(-1), 0.0)
            x = x.to(next(self.structure_model.parameters()).dtype)
        if graph is None:
            graph = self.build_graph(batch)
        struct = self.encode_structure(batch, x, graph, residue_mask)
        if self.sequence_model is None:
            return {"node_feature": struct["node_feature"], "graph_feature": struct["graph_feature"]}

        if self.fusion in ("serial", "parallel"):
            node = torch.cat([seq_node, struct["node_feature"].to(seq_node.dtype)], dim=-1)
            graph_feature = torch.cat([seq_graph, struct["graph_feature"].to(seq_graph.dtype)], dim=-1)
            return {"node_feature": node, "graph_feature": graph_feature}

        # cross: per protein [L sequence tokens ; L structure tokens] through one attention block
        seq_tok = self.seq_linear(seq_node)
        struct_tok = self.struct_linear(struct["node_feature"])
        ptr = batch.ptr
        index = torch.arange(N, device=seq_tok.device)
        seq_index = index + ptr[:-1][batch.batch]
        struct_index = index + ptr[1:][batch.batch]
        dtype = torch.promote_types(seq_tok.dtype, struct_tok.dtype)
        tokens = seq_tok.new_empty(2 * N, seq_tok.size(1), dtype=dtype)
        tokens[seq_index] = seq_tok.to(dtype)
        tokens[struct_index] = struct_tok.to(dtype)
        lengths = [2 * n for n in batch.num_residues.tolist()]
        out = self.attn(tokens, lengths)
        node = torch.cat([out[seq_index], out[struct_index]], dim=-1)
        graph_feature = graph_readout(node, batch.batch, batch.num_proteins, "sum")
        return {"node_feature": node, "graph_feature": graph_feature}

    def extra_repr(self) -> str:
        return f"fusion={self.fusion}, structure={self.structure_kind}, output_dim={self.output_dim}"
