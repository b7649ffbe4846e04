"""load_esm from every supported source; tiny random checkpoints are written in each real format."""
import argparse
import json
import shutil

import pytest
import torch

from esmgear_fast.esm import ESM2_CONFIGS, load_esm

from esm_parity_helpers import DIM, HEADS, LAYERS, SEQUENCES, fair_esm_residues

TOL = 2e-5


def _fair_esm_checkpoint(fair_esm_model, path, with_regression=True):
    """Write ``fair_esm_model`` as fair-esm's released ESM-2 ``.pt`` files (prefixed names, Namespace cfg)."""
    state = {}
    for k, v in fair_esm_model.state_dict().items():
        if k.startswith("contact_head."):
            continue
        prefix = "encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder."
        state[prefix + k] = v.clone()
    cfg = argparse.Namespace(encoder_layers=LAYERS, encoder_embed_dim=DIM, encoder_ffn_embed_dim=4 * DIM,
                             encoder_attention_heads=HEADS, token_dropout=True, arch="ESM-2")
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    if with_regression:
        reg = {k: v.clone() for k, v in fair_esm_model.state_dict().items() if k.startswith("contact_head.")}
        torch.save({"model": reg}, str(path)[:-3] + "-contact-regression.pt")


def _check_matches(model, fair_esm_model):
    expected, expected_logits = fair_esm_residues(fair_esm_model, SEQUENCES)
    with torch.no_grad():
        out = model(SEQUENCES, return_logits=True)
    torch.testing.assert_close(out.representations, expected[LAYERS], atol=TOL, rtol=0)
    torch.testing.assert_close(out.logits, expected_logits, atol=TOL, rtol=0)


@pytest.mark.parametrize("with_regression", [True, False])
def test_fair_esm_pt_checkpoint(tmp_path, fair_esm_model, with_regression):
    path = tmp_path / "esm2_t3_tiny.pt"
    _fair_esm_checkpoint(fair_esm_model, path, with_regression)
    model = load_esm(path)
    assert not model.training
    _check_matches(model, fair_esm_model)
    if with_regression:
        torch.testing.assert_close(model.contact_regression.weight, fair_esm_model.contact_head.regression.weight)
    else:
        assert model.contact_regression is None


def test_fair_esm_loader_reads_the_same_test_checkpoint(tmp_path, fair_esm_model):
    """Our test checkpoint really is in fair-esm's format: fair-esm's own loader accepts it."""
    esm = pytest.importorskip("esm")
    path = tmp_path / "esm2_t3_tiny.pt"
    _fair_esm_checkpoint(fair_esm_model, path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        ref, _ = esm.pretrained.load_model_and_alphabet_local(str(path))
    _check_matches(load_esm(path), ref.eval())


def test_fair_esm_name_downloads_into_torch_hub_cache(tmp_path, fair_esm_model, monkeypatch):
    """By name: the checkpoint and its regression file are fetched from fair-esm's URLs into
    torch.hub's checkpoint folder (where esm.pretrained caches them) once, then reused. The download
    itself is replaced by a local copy (no network in tests); offline it fails clearly."""
    source = tmp_path / "released.pt"
    _fair_esm_checkpoint(fair_esm_model, source)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    fetched = []

    def fake_download(url, dst, progress=True):
        fetched.append(url)
        name = "released-contact-regression.pt" if url.endswith("-contact-regression.pt") else "released.pt"
        shutil.copy(tmp_path / name, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    _check_matches(load_esm("esm2_t6_8M_UR50D"), fair_esm_model)
    assert [u.rsplit("/", 2)[-2:] for u in fetched] == [
        ["models", "esm2_t6_8M_UR50D.pt"], ["regression", "esm2_t6_8M_UR50D-contact-regression.pt"]]
    assert (tmp_path / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt").is_file()
    load_esm("esm2_t6_8M_UR50D")
    assert len(fetched) == 2, "a cached checkpoint must not be downloaded again"

    def offline(url, dst, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="are you online"):
        load_esm("esm2_t12_35M_UR50D")


def _hf_state(fair_esm_model, masked_lm=True):
    """fair-esm names -> Hugging Face EsmForMaskedLM names (written from the HF key layout)."""
    sd = fair_esm_model.state_dict()
    pre = "esm." if masked_lm else ""
    out = {f"{pre}embeddings.word_embeddings.weight": sd["embed_tokens.weight"]}
    names = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
             "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
             "self_attn_layer_norm": "attention.LayerNorm", "fc1": "intermediate.dense", "fc2": "output.dense",
             "final_layer_norm": "LayerNorm"}
    for i in range(LAYERS):
        for ours_name, hf in names.items():
            for kind in ("weight", "bias"):
                out[f"{pre}encoder.layer.{i}.{hf}.{kind}"] = sd[f"layers.{i}.{ours_name}.{kind}"]
        out[f"{pre}encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = sd[f"layers.{i}.self_attn.rot_emb.inv_freq"]
    for kind in ("weight", "bias"):
        out[f"{pre}encoder.emb_layer_norm_after.{kind}"] = sd[f"emb_layer_norm_after.{kind}"]
        out[f"{pre}contact_head.regression.{kind}"] = sd[f"contact_head.regression.{kind}"]
    if masked_lm:
        for k in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
            out[f"lm_head.{k}"] = sd[f"lm_head.{k}"]
        out["lm_head.decoder.weight"] = sd["embed_tokens.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}


def _hf_config(path, masked_lm=True):
    cfg = {"model_type": "esm", "architectures": ["EsmForMaskedLM" if masked_lm else "EsmModel"],
           "hidden_size": DIM, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "intermediate_size": 4 * DIM, "vocab_size": 33, "position_embedding_type": "rotary",
           "token_dropout": True, "emb_layer_norm_before": False, "layer_norm_eps": 1e-5,
           "mask_token_id": 32, "pad_token_id": 1, "max_position_embeddings": 1026}
    (path / "config.json").write_text(json.dumps(cfg))


def test_hf_directory_bin(tmp_path, fair_esm_model):
    _hf_config(tmp_path)
    torch.save(_hf_state(fair_esm_model), tmp_path / "pytorch_model.bin")
    _check_matches(load_esm(tmp_path), fair_esm_model)


def test_hf_directory_safetensors(tmp_path, fair_esm_model):
    st = pytest.importorskip("safetensors.torch")
    _hf_config(tmp_path)
    state = _hf_state(fair_esm_model)
    del state["lm_head.decoder.weight"]  # HF omits tied weights in safetensors files
    st.save_file(state, str(tmp_path / "model.safetensors"))
    _check_matches(load_esm(tmp_path), fair_esm_model)


def test_hf_esm_model_without_lm_head_warns(tmp_path, fair_esm_model):
    _hf_config(tmp_path, masked_lm=False)
    torch.save(_hf_state(fair_esm_model, masked_lm=False), tmp_path / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="no masked-LM head"):
        model = load_esm(tmp_path)
    expected, _ = fair_esm_residues(fair_esm_model, SEQUENCES)
    with torch.no_grad():
        torch.testing.assert_close(model(SEQUENCES).representations, expected[LAYERS], atol=TOL, rtol=0)


def test_hf_mapping_against_transformers(tmp_path, fair_esm_model):
    """Optional: the key mapping agrees with transformers' own EsmForMaskedLM on the same weights."""
    transformers = pytest.importorskip("transformers")
    _hf_config(tmp_path)
    hf = transformers.EsmForMaskedLM(transformers.EsmConfig.from_pretrained(str(tmp_path))).eval()
    missing, unexpected = hf.load_state_dict(_hf_state(fair_esm_model), strict=False)
    assert not [m for m in missing if "inv_freq" not in m and "position_ids" not in m], missing
    hf.save_pretrained(str(tmp_path / "saved"))
    model = load_esm(tmp_path / "saved")
    seqs = SEQUENCES[:3]
    with torch.no_grad():
        ours = model(seqs, return_logits=True)
        for i, s in enumerate(seqs):
            ids = torch.tensor([[0] + [int(t) for t in __import__("esmgear_fast.esm", fromlist=["x"]).encode_sequence(s)] + [2]])
            out = hf(input_ids=ids, output_hidden_states=True)
            a, b = ours.ptr[i].item(), ours.ptr[i + 1].item()
            torch.testing.assert_close(ours.logits[a:b], out.logits[0, 1:-1], atol=1e-4, rtol=0)
            torch.testing.assert_close(ours.representations[a:b], out.hidden_states[-1][0, 1:-1], atol=1e-4, rtol=0)


def test_random_configurations():
    model = load_esm("random:tiny", seed=3)
    again = load_esm("random:tiny", seed=3)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        out = model(["MKV", "GG"], return_logits=True)
    assert out.representations.shape == (5, 64) and out.logits.shape == (5, 33)
    assert torch.isfinite(out.representations).all()
    big = load_esm("random:esm2_t6_8M_UR50D")
    assert big.config == ESM2_CONFIGS["esm2_t6_8M_UR50D"]
    assert sum(p.numel() for p in big.parameters()) == pytest.approx(7.5e6, rel=0.05)


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        load_esm("not_a_model_name")
    with pytest.raises(ValueError, match="unknown random configuration"):
        load_esm("random:huge")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_esm(tmp_path)
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "cfg": {"model": argparse.Namespace(encoder_layers=1, encoder_embed_dim=8,
                                                                 encoder_attention_heads=2)}}, bad)
    with pytest.raises(ValueError, match="missing"):
        load_esm(bad)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"model": torch.nn.Identity()}}, evil)
    with pytest.raises(RuntimeError, match="weights_only"):
        load_esm(evil)
