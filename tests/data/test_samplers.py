"""Length-aware and fixed-size batch samplers, DDP sharding and mid-epoch resumption."""
import pytest
import torch

from esmgear_fast.data.samplers import (DistributedBatchSampler, DistributedLengthBatchSampler,
                                        FixedBatchSampler, LengthBatchSampler)


def test_length_batches_hand_computed():
    lengths = [5, 3, 4, 10, 2, 2, 1]
    s = LengthBatchSampler(lengths, max_residues=10, shuffle=False)
    assert list(s) == [[0, 1], [2], [3], [4, 5, 6]]
    assert s.num_oversized == 0
    with pytest.warns(UserWarning, match="1 of 7 proteins are longer than max_residues=9"):
        s = LengthBatchSampler(lengths, max_residues=9, shuffle=False)
    assert list(s) == [[0, 1], [2], [3], [4, 5, 6]]
    assert s.num_oversized == 1
    assert list(LengthBatchSampler(lengths, 10, shuffle=False, max_batch_size=2)) == [[0, 1], [2], [3], [4, 5], [6]]
    # drop_last drops a remainder batch smaller than max_residues // 2 = 5 residues: [6] (1 residue)
    assert list(LengthBatchSampler(lengths, 10, shuffle=False, max_batch_size=2, drop_last=True))[-1] == [4, 5]


def test_shuffle_deterministic_per_epoch_and_complete():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 400, (300,), generator=g)
    a = LengthBatchSampler(lengths, 2000, seed=3)
    b = LengthBatchSampler(lengths, 2000, seed=3)
    e0 = list(a)
    assert e0 == list(b)
    a.set_epoch(1)
    e1 = list(a)
    assert e1 != e0
    for batches in (e0, e1):
        flat = sorted(i for bt in batches for i in bt)
        assert flat == list(range(300))
        assert all(int(lengths[bt].sum()) <= 2000 for bt in batches)
    assert len(a) == len(e1)


def test_resume_mid_epoch():
    lengths = list(range(10, 110))
    s = LengthBatchSampler(lengths, 500, seed=1)
    s.set_epoch(2)
    full = list(s)
    state = s.state_dict(batches_done=3)
    assert state == {"epoch": 2, "start_batch": 3, "seed": 1}
    t = LengthBatchSampler(lengths, 500, seed=1)
    t.load_state_dict(state)
    assert len(t) == len(full) - 3
    assert list(t) == full[3:]
    assert list(t) == full  # the skip applies once
    with pytest.raises(ValueError, match="seed"):
        LengthBatchSampler(lengths, 500, seed=2).load_state_dict(state)
    f = FixedBatchSampler(10, 3, shuffle=False)
    assert list(f) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    f.set_epoch(0, start_batch=2)
    assert list(f) == [[6, 7, 8], [9]]
    assert list(FixedBatchSampler(10, 3, shuffle=False, drop_last=True)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_distributed_disjoint_equal_counts():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 400, (257,), generator=g)
    world = 3
    for epoch in (0, 5):
        per_rank = []
        for rank in range(world):
            s = DistributedLengthBatchSampler(lengths, 1500, num_replicas=world, rank=rank, seed=7,
                                              even_batches=False)
            s.set_epoch(epoch)
            per_rank.append(list(s))
        flat = [i for r in per_rank for b in r for i in b]
        assert sorted(flat) == list(range(257))  # disjoint and complete
        glob = LengthBatchSampler(lengths, 1500, seed=7)
        glob.set_epoch(epoch)
        gb = list(glob)
        assert per_rank[1] == gb[1::3]
        # even_batches pads with the first batches: all ranks equal
        counts = []
        for rank in range(world):
            s = DistributedLengthBatchSampler(lengths, 1500, num_replicas=world, rank=rank, seed=7)
            s.set_epoch(epoch)
            counts.append(len(list(s)))
        assert len(set(counts)) == 1 and counts[0] == -(-len(gb) // 3)
        counts = [len(list(DistributedLengthBatchSampler(lengths, 1500, num_replicas=world, rank=r, seed=7,
                                                         drop_last=True))) for r in range(world)]
        assert counts == [len(gb) // 3] * 3  # only the incomplete round is dropped
    ranks = [list(DistributedBatchSampler(10, 2, num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert ranks == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [0, 1]]]
    with pytest.raises(ValueError, match="rank"):
        DistributedBatchSampler(10, 2, num_replicas=2, rank=2)
