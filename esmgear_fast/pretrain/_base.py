"""What the six pre-training methods share: the task interface of the engine, the frozen ESM, crops, MLPs."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..data.batch import ProteinBatch
from . import _sampling as S

from ..tasks.base import MLP, TaskOutput  # contract 2: what the engine reads


def mlp(input_dim: int, hidden_dims: List[int]) -> nn.Module:
    """TorchDrug's ``layers.MLP`` (Linear layers ``layers.{i}`` with ReLU between them, none after the
    last), so head weights keep TorchDrug's names (``mlp.layers.0.weight``)."""
    return MLP(input_dim, list(hidden_dims))


def head_dims(output_dim: int, num_mlp_layer: int, out: int) -> List[int]:
    if num_mlp_layer < 1:
        raise ValueError(f"num_mlp_layer must be >= 1, got {num_mlp_layer}")
    return [output_dim] * (num_mlp_layer - 1) + [out]


def _protein_batch(inputs) -> ProteinBatch:
    if isinstance(inputs, ProteinBatch):
        return inputs
    if not isinstance(inputs, dict) or "protein" not in inputs:
        raise ValueError("pre-training inputs must be a dict with a 'protein' ProteinBatch "
                         "(esmgear_fast.data.collate_samples of {'protein': Protein} samples)"
                         + ("" if not isinstance(inputs, dict) else f"; got keys {sorted(inputs)}"))
    batch = inputs["protein"]
    if not isinstance(batch, ProteinBatch):
        raise TypeError(f"inputs['protein'] must be a ProteinBatch, got {type(batch).__name__}")
    return batch


class PretrainTask(nn.Module):
    """Base of the pre-training methods (the engine's task interface, contract 2).

    Args:
        model: a ``FusionNetwork`` (contract 1): ``build_graph(batch)``, ``forward(batch, graph, residue_mask)``.
        fix_sequence_model: freeze ESM (ESM-GearNet's ``fix_sequence_model: True``): its parameters get
            ``requires_grad=False`` and stay in eval mode; they are left out of :meth:`parameter_groups`, so
            the optimizer holds no state for them. ESM's inputs are integer tokens, so with frozen weights
            autograd records nothing inside ESM: its forward keeps no activations for backward, exactly
            as under ``torch.no_grad()``.
        crop_length: every protein longer than this is cut to a random contiguous window of this many
            residues before anything else (``TruncateProtein(max_length, random=True)``); ``None`` = off.
    """

    name = "base"
    selection_metric = "loss"
    selection_mode = "min"

    def __init__(self, model: nn.Module, fix_sequence_model: bool = True, crop_length: Optional[int] = 100):
        super().__init__()
        self.model = model
        self.fix_sequence_model = bool(fix_sequence_model)
        self.crop_length = crop_length
        if crop_length is not None and (isinstance(crop_length, bool) or not isinstance(crop_length, int)
                                        or crop_length < 1):
            raise ValueError(f"crop_length must be a positive int or None, got {crop_length!r}")
        if self.fix_sequence_model:
            esm = getattr(model, "sequence_model", None)
            if esm is not None:
                for p in esm.parameters():
                    p.requires_grad_(False)
                esm.eval()

    # ------------------------------------------------------------------ engine interface
    def train(self, mode: bool = True):
        super().train(mode)
        esm = getattr(self.model, "sequence_model", None)
        if self.fix_sequence_model and esm is not None:
            esm.eval()
        return self

    def preprocess(self, train_set) -> None:  # noqa: D401 - nothing to fit
        return None

    def forward(self, inputs) -> TaskOutput:
        return self.compute(_protein_batch(inputs))

    def compute(self, batch: ProteinBatch) -> TaskOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, inputs) -> torch.Tensor:
        return self.forward(inputs).pred

    def loss(self, inputs) -> torch.Tensor:
        return self.forward(inputs).loss

    def parameter_groups(self, lr: float, sequence_model_lr_ratio: float = 0.1, weight_decay: float = 0.0):
        """Trainable parameters only: structure encoder + fusion + heads at ``lr``; ESM (when not frozen)
        at ``lr * sequence_model_lr_ratio``."""
        esm = getattr(self.model, "sequence_model", None)
        esm_ids = {id(p) for p in esm.parameters()} if esm is not None else set()
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in esm_ids]
        groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "structure+heads"}]
        if esm is not None and not self.fix_sequence_model:
            esm_params = [p for p in esm.parameters() if p.requires_grad]
            if esm_params:
                groups.append({"params": esm_params, "lr": lr * sequence_model_lr_ratio,
                               "weight_decay": weight_decay, "name": "sequence_model"})
        return groups

    # ------------------------------------------------------------------ helpers
    def crop(self, batch: ProteinBatch) -> ProteinBatch:
        return S.random_crop(batch, self.crop_length)[0]

    def encode(self, batch: ProteinBatch, graph=None, residue_mask=None) -> Dict[str, torch.Tensor]:
        return self.model(batch, graph=graph, residue_mask=residue_mask)

    def build_graph(self, batch: ProteinBatch):
        graph = self.model.build_graph(batch)
        if graph is None or "edge_index" not in graph:
            raise ValueError(f"{self.name} pre-training needs a structure encoder with a residue graph "
                             "(GearNet / GearNet-Edge / GVP); this model's build_graph returned none")
        return graph

    @staticmethod
    def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
        if target.numel() == 0:
            raise ValueError("evaluate() got no samples")
        return float((pred.argmax(-1) == target).float().mean())
