"""SiamDiff at residue level (ESM-GearNet's ``gearnet/siamdiff.py`` with its ``siamdiff`` config)."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch.nn import functional as F

from . import _sampling as S
from ._base import PretrainTask, TaskOutput, head_dims, mlp
from .residue_type import NUM_RESIDUE_CLASSES


def noise_schedule(num_noise_level: int, sigma_begin: float, sigma_end: float) -> torch.Tensor:
    """``alphas [T]``: ``β_t = sigmoid(linspace(-6, 6, T)) (σ_end - σ_begin) + σ_begin``,
    ``α_t = Π_{s<=t} (1 - β_s)``."""
    betas = torch.linspace(-6, 6, num_noise_level).sigmoid() * (sigma_end - sigma_begin) + sigma_begin
    return (1.0 - betas).cumprod(dim=0)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    total = src.new_zeros((size,) + src.shape[1:]).index_add_(0, index, src)
    count = torch.bincount(index, minlength=size).clamp(min=1).to(src.dtype)
    return total / count.view((size,) + (1,) * (src.dim() - 1))


def edge_to_node(score: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Invariant edge scores -> per-node vectors (GeoDiff's ``eq_transform``): with ``u = (x_src - x_dst) /
    |x_src - x_dst|``, node n gets ``mean over edges leaving n of u·s`` + ``mean over edges entering n of -u·s``."""
    src, dst = edge_index
    diff = pos[src] - pos[dst]
    unit = diff / (diff.norm(dim=-1, keepdim=True) + 1e-10)
    n = pos.size(0)
    return scatter_mean(unit * score.unsqueeze(-1), src, n) + scatter_mean(-unit * score.unsqueeze(-1), dst, n)


class SiamDiff(PretrainTask):
    """Siamese diffusion trajectory prediction (residue level).

    Per batch: crop to ``crop_length``; the second view is the same proteins with Gaussian coordinate noise
    ``view_sigma`` Å (``NoiseTransform``). One noise level ``t`` per protein (shared by both views) out of
    ``num_noise_level`` levels of the sigmoid schedule :func:`noise_schedule`. Sequence diffusion masks
    ``max(1, floor(L * r_t))`` residues, ``r_t = min_mask_ratio + (max_mask_ratio - min_mask_ratio)(t+1)/T``,
    the same residues in both views (ESM ``<mask>``, zero one-hot). Each view's graph is built *before*
    its coordinates are perturbed by ``sqrt(1-α_t)/sqrt(α_t)`` Gaussian noise; the structure target on
    every edge is ``(d - d̃) sqrt(α_t)/sqrt(1-α_t)`` (original minus perturbed length), predicted from
    the *other* view's node features (``struct_mlp([h_src * h_dst ‖ dist_mlp(d̃)])``) and compared as
    per-node vectors (:func:`edge_to_node`): ``0.5 |pred - target|²`` averaged per protein then over
    proteins. The masked types are predicted from the other view's features (``seq_mlp``, ``0.5 CE``).
    Loss = ``γ (struct₁ + struct₂) + (1 - γ)(seq₁ + seq₂)``.

    ``pred``: ``[M, 20]`` sequence logits of view 1, ``target``: ``[M]`` masked residue types.
    """

    name = "siamdiff"
    selection_metric = "accuracy"
    selection_mode = "max"
    min_mask_ratio = 0.15

    def __init__(self, model, sigma_begin: float = 1e-3, sigma_end: float = 0.1, num_noise_level: int = 100,
                 gamma: float = 0.5, max_mask_ratio: float = 1.0, num_mlp_layer: int = 3, view_sigma: float = 0.3,
                 fix_sequence_model: bool = True, crop_length=150):
        super().__init__(model, fix_sequence_model, crop_length)
        if not 0.0 <= gamma <= 1.0 or num_noise_level < 1 or not self.min_mask_ratio <= max_mask_ratio <= 1.0:
            raise ValueError(f"bad SiamDiff options: gamma={gamma}, num_noise_level={num_noise_level}, "
                             f"max_mask_ratio={max_mask_ratio}")
        if not 0.0 < sigma_begin < 1.0 or not 0.0 < sigma_end < 1.0:
            raise ValueError(f"sigma_begin and sigma_end must be in (0, 1), got {sigma_begin}, {sigma_end}")
        self.num_noise_level = int(num_noise_level)
        self.gamma = float(gamma)
        self.max_mask_ratio = float(max_mask_ratio)
        self.view_sigma = float(view_sigma)
        self.register_buffer("alphas", noise_schedule(num_noise_level, sigma_begin, sigma_end), persistent=False)
        D = model.output_dim
        self.struct_mlp = mlp(2 * D, head_dims(D, num_mlp_layer, 1))
        self.dist_mlp = mlp(1, head_dims(D, num_mlp_layer, D))
        self.seq_mlp = mlp(D, head_dims(D, num_mlp_layer, NUM_RESIDUE_CLASSES))

    def perturb(self, batch, graph, alpha):
        """(perturbed batch, perturbed edge lengths, structure target per edge) for noise levels ``alpha [B]``."""
        src, dst = graph["edge_index"]
        a_pos = alpha[batch.batch].unsqueeze(-1)
        a_edge = alpha[batch.batch[dst]]
        dist = (batch.pos[src] - batch.pos[dst]).norm(dim=-1)
        pos = batch.pos + torch.randn_like(batch.pos) * ((1.0 - a_pos).sqrt() / a_pos.sqrt())
        perturbed = (pos[src] - pos[dst]).norm(dim=-1)
        target = (dist - perturbed) / (1.0 - a_edge).sqrt() * a_edge.sqrt()
        return _with_pos(batch, pos), perturbed, target

    def struct_loss(self, other_node, batch, graph, perturbed, target):
        src, dst = graph["edge_index"]
        h = other_node.float()
        edge_pred = self.struct_mlp(torch.cat([h[src] * h[dst], self.dist_mlp(perturbed.unsqueeze(-1))], -1))
        pred = edge_to_node(edge_pred.squeeze(-1), batch.pos, graph["edge_index"])
        true = edge_to_node(target, batch.pos, graph["edge_index"])
        per_node = 0.5 * ((pred - true) ** 2).sum(-1)
        return scatter_mean(per_node, batch.batch, batch.num_proteins).mean()

    def seq_loss(self, other_node, batch, index, target):
        logits = self.seq_mlp(other_node[index].float())
        per = 0.5 * F.cross_entropy(logits, target, reduction="none")
        return scatter_mean(per, batch.batch[index], batch.num_proteins).mean(), logits

    def compute(self, batch) -> TaskOutput:
        batch = self.crop(batch)
        B, device = batch.num_proteins, batch.device
        view2 = _with_pos(batch, batch.pos + torch.randn_like(batch.pos) * self.view_sigma)
        t = torch.randint(0, self.num_noise_level, (B,), device=device)
        logs = {"noise_level": t.float().mean()}
        mask = index = seq_target = None
        if self.gamma < 1.0:
            rate = (self.max_mask_ratio - self.min_mask_ratio) * ((t + 1).double() / self.num_noise_level) \
                + self.min_mask_ratio
            mask = S.sample_residue_mask(batch, rate)
            index = mask.nonzero().squeeze(1)
            seq_target = batch.residue_type[index]
        graph1, graph2 = self.build_graph(batch), self.build_graph(view2)     # before the structure noise
        alpha = self.alphas[t]
        if self.gamma > 0.0:
            batch, pd1, tgt1 = self.perturb(batch, graph1, alpha)
            view2, pd2, tgt2 = self.perturb(view2, graph2, alpha)
        out1 = self.encode(batch, graph=graph1, residue_mask=mask)["node_feature"]
        out2 = self.encode(view2, graph=graph2, residue_mask=mask)["node_feature"]
        loss = out1.new_zeros((), dtype=torch.float32)
        pred = target = None
        if self.gamma > 0.0:
            s1 = self.struct_loss(out2, batch, graph1, pd1, tgt1)
            s2 = self.struct_loss(out1, view2, graph2, pd2, tgt2)
            loss = loss + self.gamma * (s1 + s2)
            logs["structure_loss"] = (s1 + s2).detach()
        if self.gamma < 1.0:
            q1, logits1 = self.seq_loss(out2, batch, index, seq_target)
            q2, logits2 = self.seq_loss(out1, view2, index, seq_target)
            loss = loss + (1.0 - self.gamma) * (q1 + q2)
            acc = 0.5 * ((logits1.argmax(-1) == seq_target).float().mean()
                         + (logits2.argmax(-1) == seq_target).float().mean())
            logs.update(sequence_loss=(q1 + q2).detach(), accuracy=acc.detach())
            pred, target = logits1.detach(), seq_target
        return TaskOutput(loss=loss, pred=pred, target=target, logs=logs)

    def evaluate(self, preds, targets):
        if preds is None:
            raise ValueError("SiamDiff with gamma=1 predicts no residue types; nothing to evaluate")
        return {"accuracy": self.accuracy(preds, targets)}


def _with_pos(batch, pos):
    backbone = batch.backbone + (pos - batch.pos).unsqueeze(1)
    return replace(batch, pos=pos, backbone=backbone)
