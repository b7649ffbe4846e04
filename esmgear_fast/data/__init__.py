"""Batching, preprocessing and datasets.

* packed :class:`ProteinBatch` via :func:`collate`; the on-disk :class:`ProteinCache` written by
  ``python -m esmgear_fast.data.prepare SRC_DIR OUT`` (Python API: :func:`esmgear_fast.data.prepare.prepare`);
* datasets returning dict samples (:mod:`esmgear_fast.data.samples`): :class:`EnzymeCommission`,
  :class:`GeneOntology` (DeepFRI, as TorchDrug has them), :class:`PSR`, :class:`MSP` (Atom3D LMDB),
  :class:`AlphaFoldDB` (pre-training), :class:`StructureDataset` (your own files + CSV);
  :func:`collate_samples` packs their samples, :func:`move_to` moves a packed batch to a device;
* transforms (:mod:`esmgear_fast.data.transforms`) and batch samplers by residue count or fixed size,
  with DDP variants (:mod:`esmgear_fast.data.samplers`).

Example::

    # shell: python -m esmgear_fast.data.prepare structures/ proteins.pt --workers 8
    from torch.utils.data import DataLoader
    from esmgear_fast.data import ProteinCache, collate

    cache = ProteinCache("proteins.pt")
    for batch in DataLoader(cache, batch_size=32, shuffle=True, collate_fn=collate, num_workers=2):
        batch = batch.to("cuda", non_blocking=True)   # batch.pos [N, 3], batch.batch [N], batch.ptr [B+1]

    from esmgear_fast.data import EnzymeCommission, LengthBatchSampler, TruncateProtein, collate_samples
    train, valid, test = EnzymeCommission("data/", transform=TruncateProtein(550)).split()
    sampler = LengthBatchSampler(train.lengths, max_residues=8192, seed=0)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate_samples)  # {"protein", "target", "names"}
"""
from .batch import ProteinBatch, collate
from .cache import ProteinCache, write_cache
from .samplers import (DistributedBatchSampler, DistributedLengthBatchSampler, FixedBatchSampler,
                       LengthBatchSampler)
from .samples import collate_samples, move_to
from .transforms import Compose, RandomCrop, TruncateProtein, TruncateProteinPair

__all__ = [
    "AlphaFoldDB",
    "AlphaFoldDBStream",
    "Compose",
    "DistributedBatchSampler",
    "DistributedLengthBatchSampler",
    "EnzymeCommission",
    "FixedBatchSampler",
    "GeneOntology",
    "LengthBatchSampler",
    "MSP",
    "PSR",
    "ProteinBatch",
    "ProteinCache",
    "ProteinDataset",
    "RandomCrop",
    "StructureDataset",
    "TruncateProtein",
    "TruncateProteinPair",
    "collate",
    "collate_samples",
    "download_url",
    "missing_data_error",
    "move_to",
    "write_cache",
]

# The datasets and the download helpers import `prepare` / `download`, which are also command-line modules
# (`python -m esmgear_fast.data.prepare`, `... .download`): importing them here, eagerly, would make runpy warn
# that the module was imported before it ran. They load on first access instead.
_LAZY = {
    **{name: ".datasets" for name in ("AlphaFoldDB", "AlphaFoldDBStream", "EnzymeCommission", "GeneOntology", "MSP",
                                      "PSR", "ProteinDataset", "StructureDataset")},
    "download_url": ".download",
    "missing_data_error": ".download",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

