"""Loading ESM-2 weights: fair-esm names/checkpoints, Hugging Face directories, random shapes.

:func:`load_esm` accepts

* a fair-esm model name (``"esm2_t33_650M_UR50D"``): the checkpoint is taken from fair-esm's cache
  (``torch.hub.get_dir()/checkpoints/<name>.pt``, the file ``esm.pretrained`` downloads), downloaded
  from fair-esm's URL into that cache first when absent (needs network access);
* a local fair-esm ``.pt`` checkpoint, plus its ``<stem>-contact-regression.pt`` sibling when present.
  Read with ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allow-listed (fair-esm
  stores its config in one); never unsafe unpickling;
* a Hugging Face ``EsmModel`` / ``EsmForMaskedLM`` directory (``config.json`` plus ``model.safetensors``
  (needs the ``safetensors`` package), a sharded ``*.safetensors.index.json`` or ``pytorch_model.bin``);
* ``"random:<name>"`` (e.g. ``"random:esm2_t6_8M_UR50D"``, ``"random:tiny"``) or an :class:`EsmConfig`:
  randomly initialised weights of that shape, for tests, demos and speed measurements.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from .config import ESM2_CONFIGS, EsmConfig
from .model import ESM2

__all__ = ["load_esm", "random_esm", "state_dict_from_fair_esm", "state_dict_from_hf", "FAIR_ESM_URL"]

FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm"
RANDOM_CONFIGS: Dict[str, EsmConfig] = {"tiny": EsmConfig(2, 64, 4), **ESM2_CONFIGS}


def load_esm(name_or_path: Union[str, os.PathLike, EsmConfig], *, attn_impl: str = "auto",
             device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None,
             seed: int = 0, **model_kwargs) -> ESM2:
    """An :class:`ESM2` from a name, a checkpoint or a shape (see the module doc). ``eval()`` mode."""
    if isinstance(name_or_path, EsmConfig):
        model = random_esm(name_or_path, seed=seed, attn_impl=attn_impl, **model_kwargs)
    else:
        text = str(name_or_path)
        path = Path(os.path.expanduser(text))
        if text.startswith("random:"):
            key = text[len("random:"):]
            if key not in RANDOM_CONFIGS:
                raise ValueError(f"unknown random configuration {key!r}; choose one of {', '.join(RANDOM_CONFIGS)}")
            model = random_esm(RANDOM_CONFIGS[key], seed=seed, attn_impl=attn_impl, **model_kwargs)
        elif path.is_dir():
            model = _load_hf(path, attn_impl, model_kwargs)
        elif path.is_file():
            model = _load_fair_esm_file(path, attn_impl, model_kwargs)
        elif text in ESM2_CONFIGS:
            model = _load_fair_esm_file(_fair_esm_cached(text), attn_impl, model_kwargs)
        else:
            raise FileNotFoundError(
                f"{text!r} is neither a file, a directory, a fair-esm ESM-2 name ({', '.join(ESM2_CONFIGS)}) "
                f"nor 'random:<name>' ({', '.join(RANDOM_CONFIGS)})")
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def random_esm(config: EsmConfig, seed: int = 0, **model_kwargs) -> ESM2:
    """Randomly initialised ESM-2 of shape ``config`` (deterministic for a given ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    model = ESM2(config, **model_kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight") or name.endswith("emb_layer_norm_after.weight"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.normal_(0.0, 0.02, generator=g)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
    return model


# ---------------------------------------------------------------------------------------- fair-esm
def _safe_load(path: Path) -> dict:
    """``torch.load(weights_only=True)`` with ``argparse.Namespace`` allow-listed."""
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context, never retried unsafely
        raise RuntimeError(
            f"could not read {path} with torch.load(weights_only=True) (only argparse.Namespace is "
            f"allow-listed; unsafe unpickling is never used): {e}") from e


def _fair_esm_cached(name: str) -> Path:
    """The path of fair-esm's cached checkpoint for ``name``, downloading it (and its regression) if absent."""
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = ckpt_dir / f"{name}.pt"
    regression = ckpt_dir / f"{name}-contact-regression.pt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for url, target in ((f"{FAIR_ESM_URL}/models/{name}.pt", path),
                        (f"{FAIR_ESM_URL}/regression/{name}-contact-regression.pt", regression)):
        if not target.exists():
            try:
                torch.hub.download_url_to_file(url, str(target), progress=True)
            except Exception as e:  # noqa: BLE001
                if target is regression:
                    warnings.warn(f"could not download contact-regression weights for {name}: {e}")
                    continue
                raise RuntimeError(f"could not download {url} (are you online?): {e}") from e
    return path


def _cfg_get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _load_fair_esm_file(path: Path, attn_impl: str, model_kwargs) -> ESM2:
    data = _safe_load(path)
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{path} is not a fair-esm checkpoint (no 'model' entry)")
    if "cfg" not in data:
        raise ValueError(f"{path} has no 'cfg' entry: only ESM-2 (fair-esm v2) checkpoints are supported")
    cfg = data["cfg"]["model"]
    config = EsmConfig(
        num_layers=int(_cfg_get(cfg, "encoder_layers")),
        embed_dim=int(_cfg_get(cfg, "encoder_embed_dim")),
        attention_heads=int(_cfg_get(cfg, "encoder_attention_heads")),
        ffn_dim=int(_cfg_get(cfg, "encoder_ffn_embed_dim", 0) or 0),
        token_dropout=bool(_cfg_get(cfg, "token_dropout", True)),
    )
    state = dict(data["model"])
    regression = Path(str(path.with_suffix("")) + "-contact-regression.pt")
    if regression.is_file():
        state.update(_safe_load(regression)["model"])
    model = ESM2(config, attn_impl=attn_impl, **model_kwargs)
    _load_into(model, state_dict_from_fair_esm(state, config.num_layers), str(path))
    return model


def state_dict_from_fair_esm(state: Dict[str, torch.Tensor], num_layers: int) -> Dict[str, torch.Tensor]:
    """Translate fair-esm ``ESM2`` parameter names (with or without ``encoder.sentence_encoder.``) to ours."""
    prefix = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
    src = {prefix.sub("", k): v for k, v in state.items()}
    out: Dict[str, torch.Tensor] = {}
    for k, v in src.items():
        m = re.match(r"layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m or k.endswith("rot_emb.inv_freq"):
            continue
        if k == "lm_head.weight":
            if "embed_tokens.weight" in src and not torch.equal(v, src["embed_tokens.weight"]):
                raise ValueError("lm_head.weight differs from embed_tokens.weight; ESM-2 ties them")
            continue
        if k.startswith("contact_head.regression."):
            out["contact_regression." + k.rsplit(".", 1)[1]] = v
            continue
        out[k] = v
    for i in range(num_layers):
        for kind in ("weight", "bias"):
            names = [f"layers.{i}.self_attn.{c}_proj.{kind}" for c in "qkv"]
            if all(n in src for n in names):
                out[f"layers.{i}.self_attn.qkv_proj.{kind}"] = torch.cat([src[n] for n in names])
    return out


# ---------------------------------------------------------------------------------------- Hugging Face
_HF_LAYER = {
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "self_attn.out_proj",
    "attention.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "LayerNorm": "final_layer_norm",
}


def _read_hf_weights(path: Path) -> Dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    index = sorted(path.glob("*.safetensors.index.json"))
    if files or index:
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(f"{path} holds safetensors weights: pip install safetensors") from e
        if index:
            names = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
            files = [path / n for n in names]
        state: Dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f), device="cpu"))
        return state
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        state = {}
        for f in bins:
            if f.name.endswith(".index.json"):
                continue
            state.update(torch.load(str(f), map_location="cpu", weights_only=True))
        return state
    raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")


def _load_hf(path: Path, attn_impl: str, model_kwargs) -> ESM2:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is a directory without config.json (expected a Hugging Face ESM model)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type", "esm") != "esm":
        raise ValueError(f"{path}: model_type {cfg.get('model_type')!r} is not 'esm'")
    if cfg.get("position_embedding_type", "rotary") != "rotary" or cfg.get("emb_layer_norm_before"):
        raise ValueError(f"{path}: only ESM-2 (rotary, no emb_layer_norm_before) models are supported")
    if cfg.get("vocab_size", 33) != 33:
        raise ValueError(f"{path}: vocab_size {cfg.get('vocab_size')} != 33 (ESM-2 alphabet)")
    config = EsmConfig(
        num_layers=cfg["num_hidden_layers"], embed_dim=cfg["hidden_size"], attention_heads=cfg["num_attention_heads"],
        ffn_dim=cfg.get("intermediate_size", 4 * cfg["hidden_size"]), token_dropout=bool(cfg.get("token_dropout", True)),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
    )
    model = ESM2(config, attn_impl=attn_impl, **model_kwargs)
    state = state_dict_from_hf(_read_hf_weights(path), config.num_layers)
    if not any(k.startswith("lm_head.") for k in state):
        warnings.warn(f"{path} has no masked-LM head (an EsmModel checkpoint); logits are random")
        fresh = model.lm_head.state_dict()
        state.update({f"lm_head.{k}": v for k, v in fresh.items()})
    _load_into(model, state, str(path))
    return model


def state_dict_from_hf(state: Dict[str, torch.Tensor], num_layers: int) -> Dict[str, torch.Tensor]:
    """Translate Hugging Face ``EsmModel`` / ``EsmForMaskedLM`` parameter names to ours.

    LayerNorm parameters may be named ``weight``/``bias`` or (older files, and what transformers 5
    writes) ``gamma``/``beta``.
    """
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[Tuple[int, str, str], torch.Tensor] = {}
    for k, v in state.items():
        k = k[len("esm."):] if k.startswith("esm.") else k
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))  # legacy LayerNorm names
        if k.startswith("pooler.") or k.endswith("inv_freq") or k == "embeddings.position_ids":
            continue
        if k == "embeddings.word_embeddings.weight":
            out["embed_tokens.weight"] = v
        elif k.startswith("encoder.emb_layer_norm_after."):
            out["emb_layer_norm_after." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("contact_head.regression."):
            out["contact_regression." + k.rsplit(".", 1)[1]] = v
        elif k == "lm_head.decoder.weight":
            continue  # tied to the word embeddings
        elif k.startswith("lm_head."):
            out[k] = v
        else:
            m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", k)
            if not m or m.group(2) not in _HF_LAYER:
                out["<unexpected>." + k] = v
                continue
            i, part, kind = int(m.group(1)), _HF_LAYER[m.group(2)], m.group(3)
            if part in ("q", "k", "v"):
                qkv[(i, part, kind)] = v
            else:
                out[f"layers.{i}.{part}.{kind}"] = v
    for i in range(num_layers):
        for kind in ("weight", "bias"):
            if all((i, c, kind) in qkv for c in "qkv"):
                out[f"layers.{i}.self_attn.qkv_proj.{kind}"] = torch.cat([qkv[(i, c, kind)] for c in "qkv"])
    return out


def _load_into(model: ESM2, state: Dict[str, torch.Tensor], source: str) -> None:
    if "contact_regression.weight" in state:
        w = state["contact_regression.weight"]
        model.contact_regression = nn.Linear(w.shape[1], w.shape[0], bias="contact_regression.bias" in state)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match an ESM-2 of this shape; missing {missing[:8]}, "
                         f"unexpected {[u.replace('<unexpected>.', '') for u in unexpected[:8]]}")
    model.load_state_dict(state, strict=True)
