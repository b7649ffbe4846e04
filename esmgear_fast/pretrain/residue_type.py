"""Residue type prediction (TorchDrug's ``AttributeMasking`` at residue level, ESM-GearNet's ``attr`` config)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from . import _sampling as S
from ._base import PretrainTask, TaskOutput, head_dims, mlp

NUM_RESIDUE_CLASSES = 20


class ResidueTypePrediction(PretrainTask):
    """Mask ``mask_rate`` of every protein's residues (at least one) and predict their types.

    Masked residues get ESM's ``<mask>`` token and an all-zero one-hot structure input (the graph is built
    from the coordinates, which stay). A ``num_mlp_layer`` MLP on the fused node features of the masked
    residues gives 20-way logits; the loss is the mean cross entropy over the masked residues of the batch.

    TorchDrug gives the masked residues type 0 (glycine), which its ESM wrapper then reads as ``G``; we
    give ESM its own ``<mask>`` token (the issue's specification and what ESM was trained with).

    ``pred``: ``[M, 20]`` logits, ``target``: ``[M]`` types of the ``M`` masked residues.
    """

    name = "residue_type"
    selection_metric = "accuracy"
    selection_mode = "max"

    def __init__(self, model, mask_rate: float = 0.15, num_mlp_layer: int = 2, fix_sequence_model: bool = True,
                 crop_length=100):
        super().__init__(model, fix_sequence_model, crop_length)
        if not 0.0 <= mask_rate <= 1.0:
            raise ValueError(f"mask_rate must be in [0, 1], got {mask_rate}")
        self.mask_rate = float(mask_rate)
        self.mlp = mlp(model.output_dim, head_dims(model.output_dim, num_mlp_layer, NUM_RESIDUE_CLASSES))

    def compute(self, batch) -> TaskOutput:
        batch = self.crop(batch)
        mask = S.sample_residue_mask(batch, self.mask_rate)
        index = mask.nonzero().squeeze(1)
        target = batch.residue_type[index]
        node = self.encode(batch, residue_mask=mask)["node_feature"]
        pred = self.mlp(node[index].float())
        loss = F.cross_entropy(pred, target)
        acc = (pred.detach().argmax(-1) == target).float().mean()
        return TaskOutput(loss=loss, pred=pred.detach(), target=target,
                          logs={"ce": loss.detach(), "accuracy": acc, "num_masked": torch.tensor(float(index.numel()))})

    def evaluate(self, preds, targets):
        return {"accuracy": self.accuracy(preds, targets), "ce": float(F.cross_entropy(preds.float(), targets))}
