import math

import numpy as np
import pytest
import torch

from esmgear_fast.data import ProteinBatch, collate
from esmgear_fast.io import Protein
from esmgear_fast.testing import real_complexes, real_proteins


@pytest.fixture(scope="module")
def proteins():
    ps = real_proteins(6)
    # one protein with pLDDT, to exercise the mixed case
    p = ps[2]
    ps[2] = Protein.from_arrays(p.sequence, p.pos, backbone=p.backbone, plddt=np.linspace(30, 90, len(p)),
                                name=p.name, chain_names=p.chain_names, residue_number=p.residue_number,
                                insertion_code=p.insertion_code)
    return ps


def test_ptr_batch_consistency(proteins):
    b = collate(proteins)
    lengths = [len(p) for p in proteins]
    assert isinstance(b, ProteinBatch)
    assert len(b) == b.num_proteins == len(proteins)
    assert b.num_nodes == sum(lengths) and b.max_num_residues == max(lengths)
    assert b.ptr.dtype == torch.long and b.batch.dtype == torch.long
    assert b.ptr.tolist() == [0] + list(np.cumsum(lengths))
    assert b.num_residues.tolist() == lengths
    assert torch.equal(b.batch, torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)))
    assert torch.equal(torch.bincount(b.batch), b.num_residues)
    assert b.pos.shape == (b.num_nodes, 3) and b.backbone.shape == (b.num_nodes, 4, 3)
    assert b.names == [p.name for p in proteins] and b.sequences == [p.sequence for p in proteins]


def test_values_round_trip(proteins):
    b = collate(proteins)
    for i, p in enumerate(proteins):
        s, e = b.ptr[i].item(), b.ptr[i + 1].item()
        assert torch.equal(b.pos[s:e], p.pos)
        assert torch.equal(b.residue_type[s:e], p.residue_type)
        assert torch.equal(b.chain_id[s:e], p.chain_id)
        assert torch.equal(b.residue_number[s:e], p.residue_number)
        assert torch.equal(b.backbone[s:e].nan_to_num(7.0), p.backbone.nan_to_num(7.0))
        assert b[i] == p
    assert b.unbatch() == proteins
    assert b[-1] == proteins[-1]
    with pytest.raises(IndexError):
        b[len(proteins)]


def test_plddt_none_mixed_and_all(proteins):
    without = [p for p in proteins if p.plddt is None]
    assert collate(without).plddt is None
    b = collate(proteins)
    assert b.plddt is not None and b.plddt.shape == (b.num_nodes,)
    for i, p in enumerate(proteins):
        seg = b.plddt[b.ptr[i]:b.ptr[i + 1]]
        if p.plddt is None:
            assert seg.isnan().all()
        else:
            assert torch.equal(seg, p.plddt)


def test_to_and_pin_memory(proteins):
    b = collate(proteins)
    c = b.to("cpu")
    assert c.unbatch() == proteins and c.device.type == "cpu"
    m = b.to("meta")
    assert m.pos.device.type == "meta" and m.ptr.device.type == "meta" and m.names == b.names
    if not torch.cuda.is_available():
        assert b.pin_memory() is b  # documented no-op without CUDA
    else:  # pragma: no cover - only on GPU machines
        pinned = b.pin_memory()
        assert pinned.is_pinned() and pinned.unbatch() == proteins
        gpu = pinned.to("cuda", non_blocking=True)
        assert gpu.pos.is_cuda and gpu.to("cpu").unbatch() == proteins


def test_collate_errors(proteins):
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(TypeError, match="item 1"):
        collate([proteins[0], "not a protein"])
    with pytest.raises(ValueError, match="meta"):
        collate([proteins[0], proteins[1].to("meta")])


def test_collate_real_chains_and_complexes():
    chains = real_proteins(50)
    b = collate(chains)
    assert b.num_proteins == 50 and b.unbatch() == chains
    big = real_complexes(2)
    b = collate(big)
    assert b.chain_names == [p.chain_names for p in big]
    assert b[1] == big[1]


def test_dataloader_uses_collate(proteins):
    loader = torch.utils.data.DataLoader(proteins, batch_size=4, collate_fn=collate)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2]
    assert batches[0].unbatch() + batches[1].unbatch() == proteins
    assert math.isnan(batches[0].plddt[0].item())
