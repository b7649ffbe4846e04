"""Same representations and logits as fair-esm's ESM2 with the same random weights (float32, CPU)."""
import pytest
import torch

from esmgear_fast.esm import MASK, encode_sequence

from esm_parity_helpers import LAYERS, SEQUENCES, fair_esm_residues

TOL = 2e-5  # observed max abs diff ~2e-7 on outputs of magnitude ~1


@pytest.mark.parametrize("impl", ["loop", "padded"])
@pytest.mark.parametrize("padded", [True, False])
def test_representations_and_logits_match_fair_esm(fair_esm_model, ours, impl, padded):
    expected, expected_logits = fair_esm_residues(fair_esm_model, SEQUENCES, layers=(0, 1, 2, LAYERS), padded=padded)
    ours.set_attention_impl(impl)
    try:
        with torch.no_grad():
            out = ours(SEQUENCES, repr_layers=(0, 1, 2), return_logits=True)
    finally:
        ours.set_attention_impl("auto")
    lengths = [len(s) for s in SEQUENCES]
    assert out.ptr.tolist() == [0] + torch.tensor(lengths).cumsum(0).tolist()
    assert out.representations.shape == (sum(lengths), ours.embed_dim)
    torch.testing.assert_close(out.representations, expected[LAYERS], atol=TOL, rtol=0)
    torch.testing.assert_close(out.logits, expected_logits, atol=TOL, rtol=0)
    for layer in (0, 1, 2):
        torch.testing.assert_close(out.hidden_states[layer], expected[layer], atol=TOL, rtol=0)


def test_selected_layer_and_order_independence(fair_esm_model, ours):
    expected, _ = fair_esm_residues(fair_esm_model, SEQUENCES, layers=(1,))
    with torch.no_grad():
        out = ours(SEQUENCES, layer=1)
        rev = ours(SEQUENCES[::-1], layer=1)
    torch.testing.assert_close(out.representations, expected[1], atol=TOL, rtol=0)
    first = out.representations[: len(SEQUENCES[0])]
    torch.testing.assert_close(rev.representations[-len(SEQUENCES[0]):], first, atol=TOL, rtol=0)
    assert out.hidden_states == {}


def test_masked_tokens_token_dropout_matches_fair_esm(fair_esm_model, ours):
    """Token input with <mask> tokens: token-dropout rescaling per sequence, as fair-esm at inference."""
    seqs = SEQUENCES[:3]
    toks = [encode_sequence(s) for s in seqs]
    toks[0][[2, 5, 7]] = MASK
    toks[2][0] = MASK
    cu = torch.tensor([0] + [len(t) for t in toks]).cumsum(0)
    with torch.no_grad():
        out = ours(tokens=torch.cat(toks), cu_seqlens=cu, return_logits=True)
        B, L = len(toks), max(len(t) for t in toks) + 2
        batch = torch.full((B, L), 1)
        for i, t in enumerate(toks):
            batch[i, 0], batch[i, 1:len(t) + 1], batch[i, len(t) + 1] = 0, t, 2
        ref = fair_esm_model(batch, repr_layers=[LAYERS])
    exp = torch.cat([ref["representations"][LAYERS][i, 1:len(t) + 1] for i, t in enumerate(toks)])
    exp_logits = torch.cat([ref["logits"][i, 1:len(t) + 1] for i, t in enumerate(toks)])
    torch.testing.assert_close(out.representations, exp, atol=TOL, rtol=0)
    torch.testing.assert_close(out.logits, exp_logits, atol=TOL, rtol=0)


def test_gradients_match_fair_esm(fair_esm_model, ours):
    """forward+backward: input-embedding gradients of a scalar loss agree."""
    import esm

    seqs = SEQUENCES[:3]
    convert = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    _, _, tokens = convert([(str(i), s) for i, s in enumerate(seqs)])
    weight = torch.randn(ours.embed_dim, generator=torch.Generator().manual_seed(0))
    fair_esm_model.zero_grad()
    ref = fair_esm_model(tokens, repr_layers=[LAYERS])["representations"][LAYERS]
    sum(((ref[i, 1:len(s) + 1] @ weight) ** 2).sum() for i, s in enumerate(seqs)).backward()
    ours.zero_grad()
    ((ours(seqs).representations @ weight) ** 2).sum().backward()
    torch.testing.assert_close(ours.embed_tokens.weight.grad, fair_esm_model.embed_tokens.weight.grad,
                               atol=1e-4, rtol=1e-4)
    g_ref = fair_esm_model.layers[1].fc1.weight.grad
    torch.testing.assert_close(ours.layers[1].fc1.weight.grad, g_ref, atol=1e-4, rtol=1e-4)
    fair_esm_model.zero_grad()
    ours.zero_grad()
