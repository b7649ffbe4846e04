"""Input handling, attention implementations, autocast, checkpointing, parameter groups."""
import pytest
import torch

from esmgear_fast.esm import ESM2, EsmConfig, encode_sequence, load_esm, tokenize
from esmgear_fast.esm.alphabet import TOKENS

from esm_parity_helpers import SEQUENCES


def test_letter_mapping():
    assert [TOKENS[t] for t in encode_sequence("mkvXBUZO").tolist()] == list("MKVXBUZO")
    assert torch.equal(encode_sequence("J"), encode_sequence("X"))
    tokens, cu = tokenize(["MK", "G"])
    assert tokens.tolist() == [0, TOKENS.index("M"), TOKENS.index("K"), 2, 0, TOKENS.index("G"), 2]
    assert cu.tolist() == [0, 4, 7]


@pytest.mark.parametrize("bad, message", [("", "empty"), ("MK*", "'\\*' at index 2"), ("MK V", "' ' at index 2"),
                                          ("AC-D", "'-' at index 2"), ("A1", "'1' at index 1"), ("Aé", "index 1")])
def test_bad_sequences_raise(ours, bad, message):
    with pytest.raises(ValueError, match=message):
        encode_sequence(bad)
    with pytest.raises(ValueError, match="sequence 1: .*" + message):
        ours(["MKV", bad])


def test_bad_calls(ours):
    with pytest.raises(TypeError):
        ours("MKV")
    with pytest.raises(ValueError, match="no sequences"):
        ours([])
    with pytest.raises(ValueError, match="empty sequence"):
        ours(tokens=torch.tensor([5, 6]), cu_seqlens=torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match="token ids"):
        ours(tokens=torch.tensor([5, 99]), cu_seqlens=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="layers must be"):
        ours(["MKV"], layer=99)
    with pytest.raises(ValueError, match="unknown attention"):
        ours.set_attention_impl("magic")


def test_token_input_equals_string_input(ours):
    toks = [encode_sequence(s) for s in SEQUENCES]
    cu = torch.tensor([0] + [len(t) for t in toks]).cumsum(0)
    with torch.no_grad():
        a = ours(SEQUENCES).representations
        b = ours(tokens=torch.cat(toks), cu_seqlens=cu).representations
    assert torch.equal(a, b)


def test_attention_impls_agree_forward_and_backward():
    model = load_esm("random:tiny", seed=1)
    grads, outs = {}, {}
    for impl in ("loop", "padded"):
        model.set_attention_impl(impl)
        model.zero_grad()
        out = model(SEQUENCES).representations
        out.pow(2).sum().backward()
        outs[impl] = out.detach()
        grads[impl] = model.layers[0].self_attn.qkv_proj.weight.grad.clone()
    torch.testing.assert_close(outs["loop"], outs["padded"], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads["loop"], grads["padded"], atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_same_gradients():
    ref = load_esm("random:tiny", seed=2)
    ckpt = load_esm("random:tiny", seed=2, gradient_checkpointing=True)
    ckpt.train()
    ref.train()
    for m in (ref, ckpt):
        m(SEQUENCES).representations.pow(2).mean().backward()
    for (n, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(dtype):
    model = load_esm("random:tiny", seed=4)
    with torch.no_grad():
        full = model(SEQUENCES, return_logits=True)
        with torch.autocast("cpu", dtype=dtype):
            low = model(SEQUENCES, return_logits=True)
    assert torch.isfinite(low.representations).all()
    cos = torch.nn.functional.cosine_similarity(low.representations.float(), full.representations, dim=-1)
    assert cos.min() > 0.99


def test_half_precision_weights_cpu():
    model = load_esm("random:tiny", seed=4, dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(SEQUENCES[:2])
    assert out.representations.dtype == torch.bfloat16 and torch.isfinite(out.representations.float()).all()


def test_freeze_and_parameter_groups():
    model = load_esm("random:tiny")
    n = sum(1 for _ in model.parameters())
    groups = model.parameter_groups(lr=1e-4, weight_decay=0.01, layer_lr_decay=0.5)
    assert sum(len(g["params"]) for g in groups) == n
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["esm.depth3"] == pytest.approx(1e-4) and lrs["esm.depth0"] == pytest.approx(1e-4 * 0.5 ** 3)
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))
    torch.optim.AdamW(groups)
    model.freeze()
    assert not any(p.requires_grad for p in model.parameters()) and model.parameter_groups(1e-4) == []
    model.freeze(False)
    assert all(p.requires_grad for p in model.parameters())


def test_lm_head_is_tied():
    model = load_esm("random:tiny")
    assert model.lm_head.weight is model.embed_tokens.weight
    assert "lm_head.weight" not in model.state_dict()


def test_collate_order(ours):
    """Output rows follow esmgear_fast.data.collate's packing (concatenation in batch order)."""
    from esmgear_fast.data import collate
    from esmgear_fast.io import Protein

    seqs = ["MKTAYIAK", "GSHMXX"]
    proteins = [Protein.from_arrays(s, torch.randn(len(s), 3)) for s in seqs]
    batch = collate(proteins)
    with torch.no_grad():
        out = ours(batch.sequences)
    assert torch.equal(out.ptr, batch.ptr) and out.representations.shape[0] == batch.num_nodes
