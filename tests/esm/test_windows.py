"""Sequences longer than the model window: overlapping windows, truncation, errors."""
import pytest
import torch

from esmgear_fast.esm import assign_windows, load_esm, window_starts

from esm_parity_helpers import LAYERS, fair_esm_residues

LETTERS = "ACDEFGHIKLMNPQRSTVWY"


def _random_sequence(n, seed):
    g = torch.Generator().manual_seed(seed)
    return "".join(LETTERS[i] for i in torch.randint(0, 20, (n,), generator=g).tolist())


def test_window_rule():
    assert window_starts(10, 10, 4) == [0]
    assert window_starts(25, 10, 4) == [0, 6, 12, 15]
    win, off = assign_windows(25, 10, [0, 6, 12, 15])
    # every residue is in its window, and no other window holds it more centrally
    starts = torch.tensor([0, 6, 12, 15])
    i = torch.arange(25)
    assert ((off >= 0) & (off < 10)).all() and torch.equal(starts[win] + off, i)
    cent = torch.minimum(off, 9 - off)
    for r in range(25):
        for s in [0, 6, 12, 15]:
            if s <= r < s + 10:
                assert min(r - s, s + 9 - r) <= cent[r]
    assert win.tolist()[:5] == [0] * 5 and win.tolist()[-3:] == [3] * 3
    with pytest.raises(ValueError):
        window_starts(20, 10, 10)


def test_long_sequence_windows_match_the_window_encoded_alone(ours, fair_esm_model):
    """A residue gets exactly the output of the window it is assigned to, encoded on its own (fair-esm too)."""
    L, W, overlap = 150, 40, 16
    long = _random_sequence(L, 0)
    short = _random_sequence(30, 1)
    starts = window_starts(L, W, overlap)
    win, off = assign_windows(L, W, starts)
    with torch.no_grad():
        out = ours([short, long], max_residues=W, window_overlap=overlap, return_logits=True)
    assert out.representations.shape[0] == 30 + L and out.ptr.tolist() == [0, 30, 30 + L]
    reps = out.representations[30:]
    pieces = [long[s:s + W] for s in starts]
    expected, expected_logits = fair_esm_residues(fair_esm_model, pieces, padded=False)
    for r in (0, 39, 75, 100, 149):  # the ends and residues deep inside
        w = int(win[r])
        row = w * W + int(off[r])
        torch.testing.assert_close(reps[r], expected[LAYERS][row], atol=2e-5, rtol=0)
        torch.testing.assert_close(out.logits[30 + r], expected_logits[row], atol=2e-5, rtol=0)
    # the short sequence in the same batch is untouched by the windowing
    exp_short, _ = fair_esm_residues(fair_esm_model, [short])
    torch.testing.assert_close(out.representations[:30], exp_short[LAYERS], atol=2e-5, rtol=0)


def test_truncate_and_error_modes(ours):
    seq = _random_sequence(60, 3)
    with torch.no_grad():
        trunc = ours([seq, "MKV"], max_residues=40, long_sequences="truncate", return_logits=True)
        head = ours([seq[:40], "MKV"])
    assert trunc.representations.shape[0] == 63
    torch.testing.assert_close(trunc.representations[:40], head.representations[:40], atol=1e-6, rtol=0)
    assert (trunc.representations[40:60] == 0).all() and (trunc.logits[40:60] == 0).all()
    torch.testing.assert_close(trunc.representations[60:], head.representations[40:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="more than the model window"):
        ours([seq], max_residues=40, long_sequences="error")
    with pytest.raises(ValueError, match="long_sequences"):
        ours([seq], long_sequences="drop")


def test_default_window_is_1022(ours):
    assert ours.config.max_residues == 1022
    assert window_starts(1022, 1022, 512) == [0]
    assert window_starts(1500, 1022, 512) == [0, 478]
