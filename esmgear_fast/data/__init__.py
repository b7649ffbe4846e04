"""Batching and preprocessing: packed :class:`ProteinBatch` via :func:`collate`, and the on-disk
:class:`ProteinCache` written by ``python -m esmgear_fast.data.prepare SRC_DIR OUT`` (Python API:
:func:`esmgear_fast.data.prepare.prepare`).

Example::

    # shell: python -m esmgear_fast.data.prepare structures/ proteins.pt --workers 8
    from torch.utils.data import DataLoader
    from esmgear_fast.data import ProteinCache, collate

    cache = ProteinCache("proteins.pt")
    for batch in DataLoader(cache, batch_size=32, shuffle=True, collate_fn=collate, num_workers=2):
        batch = batch.to("cuda", non_blocking=True)   # batch.pos [N, 3], batch.batch [N], batch.ptr [B+1]
"""
from .batch import ProteinBatch, collate
from .cache import ProteinCache, write_cache
from .datasets import EnzymeCommission, GeneOntology, ProteinDataset, StructureDataset
from .samplers import (DistributedBatchSampler, DistributedLengthBatchSampler, FixedBatchSampler,
                       LengthBatchSampler)
from .samples import collate_samples, move_to
from .transforms import Compose, RandomCrop, TruncateProtein, TruncateProteinPair

__all__ = [
    "Compose",
    "DistributedBatchSampler",
    "DistributedLengthBatchSampler",
    "EnzymeCommission",
    "FixedBatchSampler",
    "GeneOntology",
    "LengthBatchSampler",
    "ProteinBatch",
    "ProteinCache",
    "ProteinDataset",
    "RandomCrop",
    "StructureDataset",
    "TruncateProtein",
    "TruncateProteinPair",
    "collate",
    "collate_samples",
    "move_to",
    "write_cache",
]
