"""Batch samplers: by residue count, by fixed size, and their DDP variants; all resumable mid-epoch.

Use any of them as a ``DataLoader``'s ``batch_sampler`` (they yield lists of dataset indices)::

    sampler = LengthBatchSampler(dataset.lengths, max_residues=8192, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)            # deterministic order per (seed, epoch)
        for step, batch in enumerate(loader): ...

* :class:`LengthBatchSampler` fills each batch, in (shuffled) dataset order, with proteins until the next
  one would push the residue total above ``max_residues`` (packed batches have no padding, so no length
  sorting is needed). A protein longer than ``max_residues`` forms a batch of its own and is counted in
  ``num_oversized`` (a warning names how many). ``max_batch_size`` optionally caps proteins per batch.
* :class:`FixedBatchSampler`: ``batch_size`` proteins per batch.
* :class:`DistributedLengthBatchSampler` / :class:`DistributedBatchSampler`: every rank computes the same
  global batch list for ``(seed, epoch)`` and takes batches ``rank, rank + W, rank + 2W, ...``, so the
  ranks hold disjoint shards and every rank has the same number of batches (DDP never waits for a
  rank that ran out). When the number of batches is not a multiple of ``W``, ``even_batches=True``
  (default) repeats the first batches of the epoch to fill the last round (like ``DistributedSampler``'s
  padding; a few proteins are seen twice), ``drop_last=True`` drops the incomplete round, and
  ``even_batches=False`` leaves the last ranks one batch short (for evaluation without duplicates; only
  safe when the step has no collective operation).

Resuming: ``sampler.load_state_dict({"epoch": e, "start_batch": k})`` (or ``sampler.set_epoch(e,
start_batch=k)``) makes the next iteration skip the first ``k`` batches of epoch ``e`` (batches are
counted per rank); later epochs start at 0. ``state_dict(batches_done=k)`` returns that dict. Pass the
number of batches the training loop has *consumed*: a ``DataLoader`` draws batches from the sampler ahead
of time, so the sampler's own count (used when ``batches_done`` is omitted) may run ahead.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["DistributedBatchSampler", "DistributedLengthBatchSampler", "FixedBatchSampler",
           "LengthBatchSampler", "length_batches"]


def length_batches(lengths: np.ndarray, order: np.ndarray, max_residues: int,
                   max_batch_size: Optional[int] = None) -> List[List[int]]:
    """Greedy residue-budget batches over ``order`` (indices into ``lengths``); see the module docstring."""
    batches: List[List[int]] = []
    current: List[int] = []
    total = 0
    cap = max_batch_size if max_batch_size is not None else math.inf
    for i in order.tolist():
        n = int(lengths[i])
        if current and (total + n > max_residues or len(current) >= cap):
            batches.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        batches.append(current)
    return batches


def _as_lengths(lengths) -> np.ndarray:
    arr = lengths.numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)
    arr = np.asarray(arr, dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {int(arr.min())} at index {int(arr.argmin())}")
    return arr


class _Resumable:
    """Epoch, seed and mid-epoch resumption shared by the samplers; subclasses define ``_epoch_batches``."""

    def __init__(self, num_items: int, shuffle: bool, seed: int):
        self.num_items = int(num_items)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.start_batch = 0
        self._yielded = 0
        self._cache_key = None
        self._cache: List[List[int]] = []

    # ------------------------------------------------------------------ order
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(self.num_items, generator=g).numpy()

    def _epoch_batches(self, epoch: int) -> List[List[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, epoch: Optional[int] = None) -> List[List[int]]:
        """This rank's full batch list for ``epoch`` (default: the current one), ignoring ``start_batch``."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache_key != epoch:
            self._cache = self._epoch_batches(epoch)
            self._cache_key = epoch
        return self._cache

    # ------------------------------------------------------------------ protocol
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Selects the epoch (changes the shuffle) and how many of its batches to skip."""
        if int(epoch) < 0 or int(start_batch) < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.batches()
        start = self.start_batch
        if start > len(batches):
            raise ValueError(f"start_batch {start} is past the {len(batches)} batches of epoch {self.epoch}")
        self.start_batch = 0  # the skip applies to one pass only
        self._yielded = start
        for b in batches[start:]:
            self._yielded += 1
            yield list(b)

    def __len__(self) -> int:
        """Batches in the current epoch (after the pending ``start_batch`` skip)."""
        return max(0, len(self.batches()) - self.start_batch)

    def state_dict(self, batches_done: Optional[int] = None) -> Dict[str, int]:
        """``{"epoch", "start_batch", "seed"}`` for :meth:`load_state_dict` (see the module docstring)."""
        done = self._yielded if batches_done is None else int(batches_done)
        return {"epoch": self.epoch, "start_batch": done, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler uses {self.seed}: the "
                             f"batches would differ from the interrupted run")
        self.set_epoch(int(state["epoch"]), int(state.get("start_batch", 0)))


class LengthBatchSampler(_Resumable):
    """Batches holding at most ``max_residues`` residues in total (see the module docstring).

    Args:
        lengths: residues per dataset item (``dataset.lengths``).
        max_residues: residue budget per batch.
        shuffle: random order per epoch (seeded by ``seed + epoch``), else dataset order.
        seed: base seed.
        drop_last: drop the epoch's last batch when it holds fewer than ``max_residues // 2`` residues
            (a small remainder batch), as ``drop_last`` drops an incomplete fixed-size batch.
        max_batch_size: optional cap on proteins per batch.
    """

    def __init__(self, lengths, max_residues: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 max_batch_size: Optional[int] = None):
        self.lengths = _as_lengths(lengths)
        if int(max_residues) < 1:
            raise ValueError(f"max_residues must be >= 1, got {max_residues}")
        if max_batch_size is not None and int(max_batch_size) < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        super().__init__(len(self.lengths), shuffle, seed)
        self.max_residues = int(max_residues)
        self.max_batch_size = None if max_batch_size is None else int(max_batch_size)
        self.drop_last = bool(drop_last)
        self._drop_small_last = self.drop_last
        self.num_oversized = int((self.lengths > self.max_residues).sum())
        if self.num_oversized:
            warnings.warn(f"{self.num_oversized} of {len(self.lengths)} proteins are longer than max_residues="
                          f"{self.max_residues} (longest {int(self.lengths.max())}); each forms a batch of its own",
                          stacklevel=2)

    def _global_batches(self, epoch: int) -> List[List[int]]:
        batches = length_batches(self.lengths, self._order(epoch), self.max_residues, self.max_batch_size)
        if self._drop_small_last and batches and int(self.lengths[batches[-1]].sum()) < self.max_residues // 2:
            batches.pop()
        return batches

    _epoch_batches = _global_batches


class FixedBatchSampler(_Resumable):
    """``batch_size`` items per batch (the last one smaller unless ``drop_last``), resumable."""

    def __init__(self, num_items: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(num_items, shuffle, seed)
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)

    def _global_batches(self, epoch: int) -> List[List[int]]:
        order = self._order(epoch).tolist()
        bs = self.batch_size
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches

    _epoch_batches = _global_batches


def _dist_defaults(num_replicas, rank):
    if num_replicas is None or rank is None:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialized else 1
        if rank is None:
            rank = dist.get_rank() if initialized else 0
    num_replicas, rank = int(num_replicas), int(rank)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
    return num_replicas, rank


def _deal(batches: List[List[int]], num_replicas: int, rank: int, drop_last: bool, even_batches: bool):
    n = len(batches)
    if drop_last:
        n = (n // num_replicas) * num_replicas
        batches = batches[:n]
    elif even_batches and n % num_replicas and n:
        pad = num_replicas - n % num_replicas
        batches = batches + [batches[i % n] for i in range(pad)]
    return batches[rank::num_replicas]


class DistributedLengthBatchSampler(LengthBatchSampler):
    """:class:`LengthBatchSampler` for DDP: disjoint batches per rank, equal counts (module docstring).

    ``drop_last`` drops the incomplete last round of batches (not a small last batch).
    """

    def __init__(self, lengths, max_residues: int, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, even_batches: bool = True,
                 max_batch_size: Optional[int] = None):
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank)
        super().__init__(lengths, max_residues, shuffle=shuffle, seed=seed, drop_last=False,
                         max_batch_size=max_batch_size)
        self.drop_last = bool(drop_last)
        self.even_batches = bool(even_batches)

    def _epoch_batches(self, epoch: int) -> List[List[int]]:
        return _deal(self._global_batches(epoch), self.num_replicas, self.rank, self.drop_last, self.even_batches)


class DistributedBatchSampler(FixedBatchSampler):
    """:class:`FixedBatchSampler` for DDP: disjoint batches per rank, equal counts (module docstring).

    ``drop_last`` drops the incomplete last batch and then the incomplete last round of batches.
    """

    def __init__(self, num_items: int, batch_size: int, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, even_batches: bool = True):
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank)
        super().__init__(num_items, batch_size, shuffle=shuffle, seed=seed, drop_last=False)
        self.drop_last = bool(drop_last)
        self.even_batches = bool(even_batches)

    def _epoch_batches(self, epoch: int) -> List[List[int]]:
        return _deal(self._global_batches(epoch), self.num_replicas, self.rank, self.drop_last, self.even_batches)
