"""Fast ESM-2 encoder on packed (unpadded) batches of protein sequences."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import alphabet as A
from .attention import ATTENTION_IMPLS, PackedSequences
from .config import EsmConfig
from .heads import MaskedLMHead
from .layer import EsmLayer
from .rotary import rotary_tables
from .windows import assign_windows, window_starts

__all__ = ["ESM2", "EsmOutput"]

_LONG_MODES = ("window", "truncate", "error")


@dataclass
class EsmOutput:
    """Per-residue outputs of :class:`ESM2`, packed like :func:`esmgear_fast.data.collate` (BOS/EOS stripped).

    Attributes:
        representations: ``[N, D]`` the selected layer (default: last layer after the final LayerNorm).
        ptr: ``int64 [B+1]`` residue offsets: protein ``b`` is ``ptr[b]:ptr[b+1]``.
        logits: ``[N, 33]`` masked-LM logits, or ``None`` unless ``return_logits=True``.
        hidden_states: ``{layer: [N, D]}`` for the extra ``repr_layers`` asked for (layer 0 = embeddings,
            ``num_layers`` = after the final LayerNorm, as fair-esm's ``representations``).
    """

    representations: torch.Tensor
    ptr: torch.Tensor
    logits: Optional[torch.Tensor] = None
    hidden_states: Dict[int, torch.Tensor] = field(default_factory=dict)


class ESM2(nn.Module):
    """ESM-2 transformer working on packed tokens; numerically equivalent to fair-esm's ``ESM2``.

    Args:
        config: the shape (:class:`EsmConfig`).
        attn_impl: packed attention implementation (``auto``/``loop``/``padded``/``varlen``, see
            :mod:`esmgear_fast.esm.attention`).
        gradient_checkpointing: recompute each layer in the backward pass (saves activation memory).

    Main entry point: ``model(sequences)`` or ``model(tokens=..., cu_seqlens=...)`` -> :class:`EsmOutput`.
    """

    def __init__(self, config: EsmConfig = EsmConfig(), attn_impl: str = "auto", gradient_checkpointing: bool = False):
        super().__init__()
        if attn_impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {attn_impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
        self.config = config
        D = config.embed_dim
        self.embed_tokens = nn.Embedding(A.VOCAB_SIZE, D, padding_idx=A.PAD)
        self.layers = nn.ModuleList(
            EsmLayer(D, config.ffn_dim, config.attention_heads, config.layer_norm_eps, attn_impl)
            for _ in range(config.num_layers)
        )
        self.emb_layer_norm_after = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.lm_head = MaskedLMHead(D, self.embed_tokens, config.layer_norm_eps)
        self.gradient_checkpointing = gradient_checkpointing
        #: contact-regression weights when the checkpoint had them (kept, not used yet).
        self.contact_regression: Optional[nn.Linear] = None

    # ------------------------------------------------------------------ configuration
    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def set_attention_impl(self, impl: str) -> "ESM2":
        """Switch the packed attention implementation of every layer."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
        for layer in self.layers:
            layer.self_attn.impl = impl
        return self

    def freeze(self, frozen: bool = True) -> "ESM2":
        """Stop (or restart) gradients to every parameter."""
        for p in self.parameters():
            p.requires_grad_(not frozen)
        return self

    def parameter_groups(self, lr: float, weight_decay: float = 0.0,
                         layer_lr_decay: float = 1.0) -> List[Dict[str, object]]:
        """Optimizer parameter groups, e.g. to fine-tune ESM with a reduced learning rate.

        Layer ``i`` (1-based; embeddings are 0, final LayerNorm and LM head are ``num_layers + 1``)
        gets ``lr * layer_lr_decay ** (num_layers + 1 - i)``. Biases and LayerNorm weights get no
        weight decay. Frozen parameters are left out. Each group has a ``"name"`` key.
        """
        groups: Dict[Tuple[int, bool], Dict[str, object]] = {}
        L = self.num_layers
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("layers."):
                depth = int(name.split(".")[1]) + 1
            elif name.startswith("embed_tokens"):
                depth = 0
            else:
                depth = L + 1
            no_decay = p.ndim < 2
            key = (depth, no_decay)
            if key not in groups:
                groups[key] = {"name": f"esm.depth{depth}{'.no_decay' if no_decay else ''}", "params": [],
                               "lr": lr * layer_lr_decay ** (L + 1 - depth),
                               "weight_decay": 0.0 if no_decay else weight_decay}
            groups[key]["params"].append(p)
        return [groups[k] for k in sorted(groups)]

    # ------------------------------------------------------------------ token level
    def forward_tokens(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor, repr_layers: Iterable[int] = (),
                       return_logits: bool = False, lengths: Optional[List[int]] = None) -> Dict[str, object]:
        """Run the transformer on packed tokens (BOS/EOS included, no padding).

        Args:
            tokens: ``int64 [T]``.
            cu_seqlens: ``int64 [B+1]`` token offsets.
            repr_layers: layers whose token states to return (``num_layers`` = after the final LayerNorm).
            return_logits: also run the LM head on every token.
            lengths: ``cu_seqlens.diff()`` as Python ints, if already known (saves a device sync).

        Returns:
            ``{"last": [T, D] after the final LayerNorm, "hidden": {layer: [T, D]}, "logits": [T, 33] or None}``.
        """
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be packed 1-D [T], got shape {tuple(tokens.shape)}")
        cu_seqlens = cu_seqlens.to(device=tokens.device, dtype=torch.long)
        if lengths is None:
            lengths = cu_seqlens.diff().tolist()
        if any(n < 1 for n in lengths):
            raise ValueError("every packed sequence needs at least one token")
        T = tokens.shape[0]
        B = len(lengths)
        seq = torch.repeat_interleave(torch.arange(B, device=tokens.device), cu_seqlens.diff(), output_size=T)
        positions = torch.arange(T, device=tokens.device) - cu_seqlens[:-1][seq]
        cos, sin = rotary_tables(positions, self.config.head_dim)
        packed = PackedSequences(cu_seqlens, lengths, max(lengths), cos, sin)

        x = self.embed_tokens(tokens)
        if self.config.token_dropout:
            is_mask = tokens == A.MASK
            x = x.masked_fill(is_mask[:, None], 0.0)
            mask_train = 0.15 * 0.8
            n_mask = torch.zeros(B, device=tokens.device, dtype=x.dtype).index_add_(0, seq, is_mask.to(x.dtype))
            ratio = n_mask / cu_seqlens.diff().to(x.dtype)
            x = x * (1 - mask_train) / (1 - ratio)[seq, None]

        wanted = set(repr_layers)
        hidden: Dict[int, torch.Tensor] = {}
        if 0 in wanted:
            hidden[0] = x
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if use_ckpt:
                x = checkpoint(layer, x, packed, use_reentrant=False)
            else:
                x = layer(x, packed)
            if i + 1 in wanted and i + 1 != self.num_layers:
                hidden[i + 1] = x
        x = self.emb_layer_norm_after(x)
        if self.num_layers in wanted:
            hidden[self.num_layers] = x
        logits = self.lm_head(x) if return_logits else None
        return {"last": x, "hidden": hidden, "logits": logits}

    # ------------------------------------------------------------------ residue level
    def forward(self, sequences: Optional[Sequence[str]] = None, *, tokens: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None, layer: Optional[int] = None,
                repr_layers: Iterable[int] = (), return_logits: bool = False, long_sequences: str = "window",
                window_overlap: int = 512, max_residues: Optional[int] = None) -> EsmOutput:
        """Per-residue representations for a packed batch.

        Give either ``sequences`` (list of ``str``; letters mapped as in :mod:`esmgear_fast.esm.alphabet`)
        or residue ``tokens`` (``int64 [N]``, ESM token ids, no BOS/EOS; ``<mask>`` = 32 allowed) with
        ``cu_seqlens`` (``[B+1]`` residue offsets).

        Args:
            layer: which layer is ``representations`` (default ``num_layers``: last, after the final LayerNorm;
                ``0`` = embeddings; ``1..num_layers-1`` = raw layer outputs as fair-esm).
            repr_layers: further layers to return in ``hidden_states``.
            return_logits: also return masked-LM logits per residue.
            long_sequences: ``"window"`` / ``"truncate"`` / ``"error"`` for sequences longer than
                ``config.max_residues`` (see :mod:`esmgear_fast.esm.windows`).
            window_overlap: residues shared by consecutive windows.
            max_residues: window size in residues (default ``config.max_residues``, 1022).

        Returns:
            :class:`EsmOutput` with ``[N, D]`` representations in the input's order.
        """
        if long_sequences not in _LONG_MODES:
            raise ValueError(f"long_sequences must be one of {_LONG_MODES}, got {long_sequences!r}")
        device = self.embed_tokens.weight.device
        if sequences is not None:
            if tokens is not None:
                raise ValueError("give either sequences or tokens, not both")
            if isinstance(sequences, str):
                raise TypeError("expected a list of sequences, got a single str")
            res_list = []
            for i, s in enumerate(sequences):
                try:
                    res_list.append(A.encode_sequence(s))
                except ValueError as e:
                    raise ValueError(f"sequence {i}: {e}") from None
            if not res_list:
                raise ValueError("no sequences given")
            residues = torch.cat(res_list)  # assembled on the CPU, moved once below
            lengths = [r.numel() for r in res_list]
        else:
            if tokens is None or cu_seqlens is None:
                raise ValueError("give sequences, or tokens together with cu_seqlens")
            residues = tokens.to(device=device, dtype=torch.long)
            lengths = cu_seqlens.diff().tolist()
            if residues.ndim != 1 or sum(lengths) != residues.numel():
                raise ValueError("tokens must be 1-D residue tokens whose count equals cu_seqlens[-1]")
            if any(n < 1 for n in lengths):
                raise ValueError(f"empty sequence at index {next(i for i, n in enumerate(lengths) if n < 1)}")
            if residues.numel() and bool(((residues < 0) | (residues >= A.VOCAB_SIZE)).any()):
                raise ValueError(f"token ids must be in [0, {A.VOCAB_SIZE})")
        layer = self.num_layers if layer is None else layer
        wanted = set(repr_layers) | {layer}
        if any(not 0 <= l <= self.num_layers for l in wanted):
            raise ValueError(f"layers must be in [0, {self.num_layers}], got {sorted(wanted)}")

        # pieces: (sequence index, residue start, residue count) encoded as separate ESM sequences
        W = self.config.max_residues if max_residues is None else int(max_residues)
        pieces: List[Tuple[int, int, int]] = []
        gather: List[Optional[Tuple[int, torch.Tensor, torch.Tensor]]] = []  # per sequence (first piece, window idx, offset)
        first_piece: List[int] = []
        for b, L in enumerate(lengths):
            first_piece.append(len(pieces))
            if L <= W:
                gather.append(None)
                pieces.append((b, 0, L))
            elif long_sequences == "error":
                raise ValueError(f"sequence {b} has {L} residues, more than the model window of {W}")
            elif long_sequences == "truncate":
                gather.append(None)
                pieces.append((b, 0, W))
            else:
                starts = window_starts(L, W, window_overlap)
                win, off = assign_windows(L, W, starts)
                gather.append((len(pieces), win, off))
                pieces.extend((b, s, W) for s in starts)

        res_offsets = [0]
        for L in lengths:
            res_offsets.append(res_offsets[-1] + L)
        bos = torch.tensor([A.BOS], device=residues.device)
        eos = torch.tensor([A.EOS], device=residues.device)
        parts, piece_lengths = [], []
        for b, s, n in pieces:
            parts += [bos, residues[res_offsets[b] + s: res_offsets[b] + s + n], eos]
            piece_lengths.append(n + 2)
        tok = torch.cat(parts).to(device)
        cu = torch.zeros(len(pieces) + 1, dtype=torch.long)
        cu[1:] = torch.tensor(piece_lengths).cumsum(0)
        out = self.forward_tokens(tok, cu.to(device), repr_layers=wanted, return_logits=return_logits,
                                  lengths=piece_lengths)

        # residue index (into the piece-level token tensor) of every output residue
        piece_tok_start = cu[:-1].tolist()
        idx_parts = []
        for b, L in enumerate(lengths):
            g = gather[b]
            if g is None:
                p = first_piece[b]
                n = pieces[p][2]
                idx_parts.append(torch.arange(n) + piece_tok_start[p] + 1)
                if n < L:  # truncated: rows pointing at index T (a zero row appended below)
                    idx_parts.append(torch.full((L - n,), tok.numel(), dtype=torch.long))
            else:
                first, win, off = g
                starts = torch.tensor(piece_tok_start[first:first + int(win.max()) + 1])
                idx_parts.append(starts[win] + 1 + off)
        index = torch.cat(idx_parts).to(device)
        truncated = long_sequences == "truncate" and any(L > W for L in lengths)

        def select(t: torch.Tensor) -> torch.Tensor:
            if truncated:
                t = torch.cat([t, t.new_zeros(1, t.shape[1])])
            return t.index_select(0, index)

        states = dict(out["hidden"])
        ptr = torch.tensor(res_offsets, dtype=torch.long, device=device)
        hidden = {l: select(states[l]) for l in sorted(wanted)}
        reps = hidden.pop(layer) if layer not in set(repr_layers) else hidden[layer]
        logits = select(out["logits"]) if return_logits else None
        return EsmOutput(representations=reps, ptr=ptr, logits=logits, hidden_states=hidden)

    def extra_repr(self) -> str:
        c = self.config
        return (f"layers={c.num_layers}, embed_dim={c.embed_dim}, heads={c.attention_heads}, "
                f"token_dropout={c.token_dropout}, max_residues={c.max_residues}")
