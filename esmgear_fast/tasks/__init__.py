"""Task heads: the loss, predictions and metrics of each downstream task around a representation model.

Every head is an ``nn.Module`` with ``model`` (the representation model), ``mlp`` (the head),
``forward(inputs) -> TaskOutput``, ``predict``, ``loss``, ``evaluate(preds, targets)``,
``parameter_groups(lr, sequence_model_lr_ratio)``, ``preprocess(train_set)``, ``selection_metric`` and
``selection_mode``. :func:`build_task` makes one from a :class:`TaskConfig`, a model and a dataset.
"""
from .base import MLP, TASKS, Task, TaskConfig, TaskOutput, build_task, masked_task_mean, register_task
from .multiclass import MultiClassification
from .multiple_binary import MultipleBinaryClassification
from .mutation import MutationStability, mutated_residue_mean
from .property import PropertyPrediction

__all__ = [
    "MLP", "MultiClassification", "MultipleBinaryClassification", "MutationStability", "PropertyPrediction",
    "TASKS", "Task", "TaskConfig", "TaskOutput", "build_task", "masked_task_mean", "mutated_residue_mean",
    "register_task",
]
