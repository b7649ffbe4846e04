"""Building fusion models from a config, saving/loading our model files, and reading ESM-GearNet's
published checkpoints.

* :class:`ModelConfig` + :func:`build_model` — the ``model:`` section of a training config.
* :func:`save_model` / :func:`load_model` — a bare :class:`FusionNetwork` file that carries its config
  (``load_model(path)`` needs nothing else).
* :func:`load_esm_gearnet` — ESM-GearNet / TorchDrug files: a ``FusionNetwork.state_dict()``
  (the published Zenodo 10034578 ``*_esm_gearnet.pth``), a TorchDrug task checkpoint
  ``{"model": task.state_dict(), ...}``, or an ESM-only / GearNet-only TorchDrug model. Shapes are read
  from the tensors; every key must be used (strict). :func:`to_esm_gearnet_state_dict` writes the
  published layout back.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..esm import alphabet as A
from ..esm.config import ESM2_CONFIGS, EsmConfig
from ..esm.loading import RANDOM_CONFIGS, load_esm, state_dict_from_fair_esm
from ..esm.model import ESM2
from ..io.residues import RESIDUE_SYMBOLS
from .cdconv import CDConv
from .fusion import FusionNetwork, canonical_fusion
from .gearnet import GearNet
from .gvp_gnn import GVPGNN

__all__ = ["ModelConfig", "build_model", "build_structure_model", "esm_config_of", "save_model", "load_model",
           "load_esm_gearnet", "split_state_dict", "to_esm_gearnet_state_dict", "torchdrug_esm_mapping",
           "STRUCTURE_ENCODERS", "MODEL_FILE_FORMAT"]

STRUCTURE_ENCODERS = ("gearnet", "gearnet_edge", "gvp", "cdconv")
MODEL_FILE_FORMAT = "esmgear_fast.model"
_CDCONV_CUTOFFS = (8.0, 12.0, 16.0, 20.0)


@dataclass
class ModelConfig:
    """The ``model:`` section of a config (see :func:`build_model`).

    Attributes:
        esm: anything :func:`esmgear_fast.esm.load_esm` accepts (fair-esm name, file, HF directory,
            ``"random:<shape>"``); ``None`` = structure-only baseline.
        structure: ``"gearnet"``, ``"gearnet_edge"``, ``"gvp"``, ``"cdconv"`` or ``None`` (ESM-only).
        fusion: ``"serial"`` (``"series"``), ``"parallel"`` or ``"cross"``.
        cross_dim: cross-fusion width (paper: 512).
        hidden_dims: structure encoder widths; ``None`` = the paper's (GearNet ``[512] * 6``, CDConv
            ``[256, 512, 1024, 2048]``, GVP ``[256] * 5`` = node scalar width per layer).
        structure_options: further keyword arguments of the encoder class.
        long_sequences: ESM beyond 1022 residues: ``"window"``, ``"truncate"`` (paper) or ``"error"``.
        gradient_checkpointing: recompute ESM layers in backward.
    """

    esm: Optional[str] = "esm2_t33_650M_UR50D"
    structure: Optional[str] = "gearnet"
    fusion: str = "serial"
    cross_dim: Optional[int] = None
    hidden_dims: Optional[List[int]] = None
    structure_options: Dict = field(default_factory=dict)
    long_sequences: str = "window"
    gradient_checkpointing: bool = False

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(d))


def esm_config_of(name: str) -> EsmConfig:
    """The shape of an ESM name without reading weights when the name says it (fair-esm names,
    ``random:<name>``); files and directories are loaded to learn it."""
    text = str(name)
    key = text[len("random:"):] if text.startswith("random:") else text
    if key in RANDOM_CONFIGS and (text.startswith("random:") or key in ESM2_CONFIGS) and not Path(text).exists():
        return RANDOM_CONFIGS[key]
    return load_esm(text).config


def build_structure_model(structure: str, input_dim: int, hidden_dims: Optional[List[int]] = None,
                          **options) -> nn.Module:
    """A structure encoder by name with the paper's defaults (see :class:`ModelConfig`)."""
    if structure not in STRUCTURE_ENCODERS:
        raise ValueError(f"unknown structure encoder {structure!r}: choose one of {', '.join(STRUCTURE_ENCODERS)} "
                         f"or None")
    if structure in ("gearnet", "gearnet_edge"):
        dims = list(hidden_dims) if hidden_dims is not None else [512] * 6
        if structure == "gearnet_edge":
            options = {"num_angle_bin": 8, "edge_input_dim": 59, **options}
        return GearNet(input_dim, dims, **options)
    if structure == "gvp":
        if hidden_dims is not None:
            dims = list(hidden_dims)
            if len(set(dims)) != 1:
                raise ValueError(f"GVP layers all have one width: hidden_dims must repeat one value, got {dims}")
            node_h = tuple(options.pop("node_h_dim", (dims[0], 16)))
            options = {"node_h_dim": (dims[0], node_h[1]), "num_layers": len(dims), **options}
        return GVPGNN(input_dim, **options)
    dims = list(hidden_dims) if hidden_dims is not None else [256, 512, 1024, 2048]
    if "cutoffs" not in options:
        if len(dims) != len(_CDCONV_CUTOFFS):
            raise ValueError(f"CDConv with {len(dims)} stages needs structure_options.cutoffs (one radius per stage)")
        options = {"cutoffs": _CDCONV_CUTOFFS, **options}
    return CDConv(input_dim, hidden_dims=dims, **options)


def build_model(cfg: Union[ModelConfig, Mapping], pretrained: bool = True,
                esm_config: Optional[EsmConfig] = None) -> FusionNetwork:
    """The :class:`FusionNetwork` a :class:`ModelConfig` (or its dict) describes.

    ``pretrained=False`` builds ESM with uninitialised weights of the right shape without reading a
    checkpoint (for loading a saved model; ``esm_config`` gives the shape, else :func:`esm_config_of`).
    The config is kept as ``model.model_config``.
    """
    if isinstance(cfg, Mapping):
        cfg = ModelConfig.from_dict(cfg)
    fusion = canonical_fusion(cfg.fusion)
    if cfg.structure is not None and cfg.structure not in STRUCTURE_ENCODERS:
        raise ValueError(f"unknown structure encoder {cfg.structure!r}: choose one of "
                         f"{', '.join(STRUCTURE_ENCODERS)} or None")
    if cfg.esm is None and cfg.structure is None:
        raise ValueError("model config needs esm, structure or both; both are None")
    if fusion == "cross" and cfg.structure == "cdconv":
        raise ValueError("cross fusion is not defined for CDConv (no per-residue output); use serial or parallel")
    if fusion == "cross" and (cfg.esm is None or cfg.structure is None):
        raise ValueError("cross fusion needs both esm and structure")
    esm = None
    if cfg.esm is not None:
        if pretrained:
            esm = load_esm(cfg.esm)
            # contact regression is unused by the fusion; dropping it keeps the state dict independent of
            # whether fair-esm's regression file was present (build_model(pretrained=False) cannot know)
            esm.contact_regression = None
        else:
            shape = esm_config or esm_config_of(cfg.esm)
            with torch.device("meta"):
                esm = ESM2(shape)
            esm = esm.to_empty(device="cpu")
        esm.gradient_checkpointing = bool(cfg.gradient_checkpointing)
    structure = None
    if cfg.structure is not None:
        input_dim = esm.embed_dim if (esm is not None and fusion == "serial") else 21
        structure = build_structure_model(cfg.structure, input_dim, cfg.hidden_dims, **dict(cfg.structure_options))
    esm_options = {"long_sequences": cfg.long_sequences} if esm is not None else {}
    model = FusionNetwork(esm, structure, fusion=fusion, cross_dim=cfg.cross_dim, **esm_options)
    model.model_config = cfg
    return model


# ---------------------------------------------------------------------------------------- our files
def _atomic_save(obj, path: Union[str, os.PathLike]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model_cfg: Union[ModelConfig, Mapping], model: FusionNetwork, path: Union[str, os.PathLike]) -> None:
    """Write ``{"format": "esmgear_fast.model", "version": 1, "config", "esm_config", "state_dict"}``
    atomically (temporary file + fsync + rename); read back with :func:`load_model`."""
    cfg = ModelConfig.from_dict(model_cfg) if isinstance(model_cfg, Mapping) else model_cfg
    esm = model.sequence_model
    _atomic_save({
        "format": MODEL_FILE_FORMAT, "version": 1, "config": asdict(cfg),
        "esm_config": esm.config.to_dict() if esm is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }, path)


def load_model(path: Union[str, os.PathLike], map_location="cpu") -> FusionNetwork:
    """A :class:`FusionNetwork` from :func:`save_model`'s file (``weights_only=True``, strict), in eval mode,
    with its config as ``model.model_config``."""
    data = torch.load(str(path), map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{path} is not an {MODEL_FILE_FORMAT} file (use load_esm_gearnet for ESM-GearNet/TorchDrug "
                         f"files, esmgear_fast.engine.checkpoint.load_task for training checkpoints)")
    if data.get("version") != 1:
        raise ValueError(f"{path}: unsupported {MODEL_FILE_FORMAT} version {data.get('version')!r}")
    cfg = ModelConfig.from_dict(data["config"])
    esm_cfg = EsmConfig(**data["esm_config"]) if data.get("esm_config") else None
    model = build_model(cfg, pretrained=False, esm_config=esm_cfg)
    state = data["state_dict"]
    _add_contact_regression(model.sequence_model, state, "sequence_model.")
    _load_strict(model, state, str(path))
    return model.eval()


def _add_contact_regression(esm: Optional[ESM2], state: Mapping, prefix: str) -> None:
    key = prefix + "contact_regression.weight"
    if esm is not None and key in state and esm.contact_regression is None:
        w = state[key]
        esm.contact_regression = nn.Linear(w.shape[1], w.shape[0], bias=(prefix + "contact_regression.bias") in state)


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        lines = [f"{source}: the weights do not match the model built from their shapes"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {missing[:10]}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {unexpected[:10]}")
        if wrong:
            lines.append("  shape differs: " + ", ".join(
                f"{k} file {tuple(state[k].shape)} model {tuple(expected[k].shape)}" for k in wrong[:10]))
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------- published files
def torchdrug_esm_mapping() -> torch.Tensor:
    """TorchDrug ``EvolutionaryScaleModeling.mapping`` for ESM-2: ``int64 [33]``, entry ``i < 20`` = ESM token
    of residue type ``i``, the rest -1."""
    out = torch.full((A.VOCAB_SIZE,), -1, dtype=torch.long)
    out[:20] = torch.tensor([A.TOKENS.index(s) for s in RESIDUE_SYMBOLS])
    return out


def split_state_dict(state: Mapping[str, torch.Tensor], prefix: str) -> Tuple[Dict[str, torch.Tensor],
                                                                              Dict[str, torch.Tensor]]:
    """``(inside, rest)``: the keys starting with ``prefix`` (prefix stripped) and all others unchanged.
    E.g. ``split_state_dict(task_state, "model.")`` -> (FusionNetwork state, head state ``mlp.*``)."""
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return inside, rest


def _read(path_or_state) -> Mapping[str, object]:
    if isinstance(path_or_state, Mapping):
        return path_or_state
    path = Path(os.path.expanduser(str(path_or_state)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context, never retried unsafely
        raise ValueError(f"could not read {path} with torch.load(weights_only=True): {e}") from e


def _layer_count(state: Mapping, prefix: str) -> int:
    idx = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)(?:\.|$)", k)] if m}
    return max(idx) + 1 if idx else 0


def _esm_from_fair_esm_state(state: Mapping[str, torch.Tensor], source: str) -> Tuple[ESM2, Dict[str, torch.Tensor]]:
    """An ESM2 whose shape is read from fair-esm keys (no prefix), plus our state dict for it."""
    if "embed_tokens.weight" not in state:
        raise ValueError(f"{source}: no ESM embed_tokens.weight among the sequence model keys")
    num_layers = _layer_count(state, "layers.")
    embed_dim = int(state["embed_tokens.weight"].shape[1])
    inv = state.get("layers.0.self_attn.rot_emb.inv_freq")
    if inv is not None:
        heads = embed_dim // (2 * inv.numel())
    else:
        known = [c for c in ESM2_CONFIGS.values() if c.num_layers == num_layers and c.embed_dim == embed_dim]
        if not known:
            raise ValueError(f"{source}: cannot tell the number of attention heads of an ESM-2 with {num_layers} "
                             f"layers x {embed_dim} (no rot_emb.inv_freq and not a published shape)")
        heads = known[0].attention_heads
    ffn = int(state["layers.0.fc1.weight"].shape[0]) if "layers.0.fc1.weight" in state else 4 * embed_dim
    config = EsmConfig(num_layers=num_layers, embed_dim=embed_dim, attention_heads=heads, ffn_dim=ffn)
    ours = state_dict_from_fair_esm(dict(state), num_layers)
    for i in range(num_layers):  # inv_freq is fixed by the shape; check it rather than drop it blindly
        k = f"layers.{i}.self_attn.rot_emb.inv_freq"
        if k in state:
            expect = 1.0 / (10000 ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
            if state[k].shape != expect.shape or not torch.allclose(state[k].float(), expect, rtol=1e-5, atol=0):
                raise ValueError(f"{source}: {k} is not the rotary frequency table of head width {config.head_dim}")
    with torch.device("meta"):
        esm = ESM2(config)
    esm = esm.to_empty(device="cpu")
    _add_contact_regression(esm, ours, "")
    return esm, ours


def _gearnet_from_state(state: Mapping[str, torch.Tensor], **overrides) -> GearNet:
    n = _layer_count(state, "layers.")
    hidden = [int(state[f"layers.{i}.self_loop.weight"].shape[0]) for i in range(n)]
    input_dim = int(state["layers.0.self_loop.weight"].shape[1])
    num_relation = int(state["layers.0.linear.weight"].shape[1]) // input_dim
    kwargs = dict(num_relation=num_relation, batch_norm="batch_norms.0.weight" in state)
    if "edge_layers.0.self_loop.weight" in state:
        edge_in = int(state["edge_layers.0.self_loop.weight"].shape[1])
        kwargs.update(edge_input_dim=edge_in,
                      num_angle_bin=int(state["edge_layers.0.linear.weight"].shape[1]) // edge_in)
    kwargs.update(overrides)
    return GearNet(input_dim, hidden, **kwargs)


def _gvp_from_state(state: Mapping[str, torch.Tensor], **overrides) -> GVPGNN:
    emb = state.get("residue_embedding.weight", state.get("residue_embdding.weight"))
    kwargs = dict(
        node_h_dim=(int(state["W_v.1.ws.weight"].shape[0]), int(state["layers.0.conv.message_func.0.wv.weight"].shape[0])),
        edge_h_dim=(int(state["W_e.1.ws.weight"].shape[0]), int(state["W_e.1.wv.weight"].shape[0])),
        num_rbf=int(state["W_e.0.scalar_norm.weight"].shape[0]), num_layers=_layer_count(state, "layers."))
    kwargs.update(overrides)
    return GVPGNN(int(emb.shape[0]), **kwargs)


def _cdconv_from_state(state: Mapping[str, torch.Tensor], **overrides) -> CDConv:
    stages = _layer_count(state, "layers.") // 2
    hidden = [int(state[f"layers.{2 * s}.output.module.3.weight"].shape[0]) for s in range(stages)]
    ws = [state[f"layers.0.conv.WeightNet.Ws.{i}"] for i in range(_layer_count(state, "layers.0.conv.WeightNet.Ws."))]
    width = int(state["layers.0.conv.W"].shape[1])
    kwargs = dict(embedding_dim=int(state["embedding.weight"].shape[0]), hidden_dims=hidden,
                  seq_cutoff=int(ws[0].shape[0]), kernel_dims=[int(w.shape[2]) for w in ws],
                  base_width=width * 64.0 / hidden[0])
    if "cutoffs" not in overrides:
        if stages != len(_CDCONV_CUTOFFS):
            raise ValueError(f"CDConv checkpoint with {stages} stages: pass cutoffs=... (one radius per stage)")
        kwargs["cutoffs"] = _CDCONV_CUTOFFS
    kwargs.update(overrides)
    return CDConv(int(state["embedding.weight"].shape[1]), **kwargs)


def _structure_from_state(state: Mapping[str, torch.Tensor], source: str, **overrides) -> Tuple[nn.Module, Dict]:
    state = dict(state)
    if "layers.0.self_loop.weight" in state:
        return _gearnet_from_state(state, **overrides), state
    if "W_v.1.ws.weight" in state:
        state = {("residue_embedding." + k[len("residue_embdding."):] if k.startswith("residue_embdding.") else k): v
                 for k, v in state.items()}
        return _gvp_from_state(state, **overrides), state
    if "embedding.weight" in state and "layers.0.conv.W" in state:
        return _cdconv_from_state(state, **overrides), state
    raise ValueError(f"{source}: the structure model keys match no known encoder (GearNet layers.*.self_loop, "
                     f"GVP W_v/W_e/W_out, CDConv embedding + layers.*.conv.W); first keys: {sorted(state)[:8]}")


def load_esm_gearnet(path_or_state_dict, fusion: Optional[str] = "serial", cross_dim: Optional[int] = None,
                     return_extra: bool = False, structure_options: Optional[Dict] = None, **esm_options):
    """A :class:`FusionNetwork` from an ESM-GearNet / TorchDrug file or state dict (eval mode).

    Accepted layouts (read with ``weights_only=True``; shapes inferred from the tensors, any ESM-2 size):

    * ``FusionNetwork.state_dict()`` (the published ``*_esm_gearnet.pth``): ``sequence_model.model.*``
      (fair-esm ESM-2 keys incl. ``rot_emb.inv_freq``, ``contact_head.regression.*``, ``lm_head.*``),
      ``sequence_model.mapping`` (TorchDrug's residue->token table, checked), ``structure_model.*``
      (GearNet / GearNet-Edge, GVP-GNN, CDConv), and for cross fusion ``seq_linear``, ``struct_linear``,
      ``attn.*``;
    * a TorchDrug task checkpoint ``{"model": task.state_dict(), ...}``: the ``model.*`` keys as above;
      the head's keys (``mlp.*``) are returned when ``return_extra`` (else a warning says they were left);
    * an ESM-only (``model.*`` + ``mapping``) or structure-only TorchDrug model.

    ``fusion``: what the caller expects (``"serial"`` default; ``None`` = infer). Serial and parallel
    differ only in the structure encoder's input width (ESM width vs 21); a mismatch raises
    :class:`ValueError`. Every key must be used and every parameter filled, else :class:`ValueError`
    lists the differing keys. ``structure_options`` override encoder settings that have no weights
    (e.g. ``readout``, ``concat_hidden``, CDConv ``cutoffs``); ``esm_options`` go to :class:`FusionNetwork`.

    Returns the model, or ``(model, extra_state)`` with ``return_extra=True``.
    """
    data = _read(path_or_state_dict)
    source = "state dict" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
    extra: Dict[str, torch.Tensor] = {}
    state = data
    if isinstance(data, Mapping) and "model" in data and isinstance(data["model"], Mapping):
        state = data["model"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{source}: not a state dict (or a checkpoint holding one under 'model')")
    state = dict(state)
    if not any(k.startswith(("sequence_model.", "structure_model.", "mapping")) for k in state) and \
            any(k.startswith("model.") for k in state):
        state, extra = split_state_dict(state, "model.")  # task.state_dict(): model.* + head
    opts = dict(structure_options or {})

    seq_state, rest = split_state_dict(state, "sequence_model.")
    struct_state, rest = split_state_dict(rest, "structure_model.")
    if not seq_state and not struct_state:
        if "mapping" in rest:  # TorchDrug ESM model on its own
            seq_state, rest = rest, {}
        elif "layers.0.self_loop.weight" in rest or "W_v.1.ws.weight" in rest or "embedding.weight" in rest:
            struct_state, rest = rest, {}
        else:
            raise ValueError(f"{source}: the keys match no known layout (expected sequence_model.* / "
                             f"structure_model.*, an ESM model.* + mapping, or a structure encoder); first keys: "
                             f"{sorted(state)[:10]}")
    cross_keys = {k: v for k, v in rest.items() if k.startswith(("seq_linear.", "struct_linear.", "attn."))}
    leftover = sorted(set(rest) - set(cross_keys))
    if leftover:
        raise ValueError(f"{source}: unexpected keys outside sequence_model/structure_model/cross fusion: {leftover[:10]}")

    esm, esm_state = None, {}
    if seq_state:
        mapping = seq_state.pop("mapping", None)
        if mapping is not None and not torch.equal(mapping.long().cpu(), torch_mapping := torchdrug_esm_mapping()):
            raise ValueError(f"{source}: sequence_model.mapping {mapping.tolist()} differs from TorchDrug's ESM-2 "
                             f"residue->token table {torch_mapping.tolist()}")
        fair, other = split_state_dict(seq_state, "model.")
        if other:
            raise ValueError(f"{source}: sequence model keys outside model.*/mapping: {sorted(other)[:10]}")
        try:
            esm, esm_state = _esm_from_fair_esm_state(fair, source)
        except KeyError as e:
            raise ValueError(f"{source}: the ESM model lacks {e.args[0]!r}, needed to read its shape") from None
    structure, st_state = (None, {})
    if struct_state:
        try:
            structure, st_state = _structure_from_state(struct_state, source, **opts)
        except KeyError as e:
            raise ValueError(f"{source}: the structure model lacks {e.args[0]!r}, needed to read its shape") from None

    inferred = None
    if esm is not None and structure is not None:
        if cross_keys:
            inferred = "cross"
        elif structure.input_dim == esm.embed_dim:
            inferred = "serial"
        elif structure.input_dim == 21:
            inferred = "parallel"
        else:
            raise ValueError(f"{source}: structure encoder input width {structure.input_dim} is neither ESM's "
                             f"{esm.embed_dim} (serial) nor 21 (parallel)")
        if fusion is not None and canonical_fusion(fusion) != inferred:
            raise ValueError(f"{source}: the weights are a {inferred}-fusion model (structure input width "
                             f"{structure.input_dim}{', cross-attention keys' if cross_keys else ''}) but "
                             f"fusion={fusion!r} was asked; pass fusion={inferred!r} or None")
        if inferred == "cross":
            cross_dim_file = int(cross_keys["seq_linear.weight"].shape[0])
            if cross_dim is not None and int(cross_dim) != cross_dim_file:
                raise ValueError(f"{source}: cross_dim {cross_dim} asked, the weights have {cross_dim_file}")
            cross_dim = cross_dim_file
    elif cross_keys:
        raise ValueError(f"{source}: cross-attention keys without both a sequence and a structure model")
    model = FusionNetwork(esm, structure, fusion=inferred or "serial", cross_dim=cross_dim, **esm_options)
    full = {**{"sequence_model." + k: v for k, v in esm_state.items()},
            **{"structure_model." + k: v for k, v in st_state.items()}, **cross_keys}
    _load_strict(model, full, source)
    if extra and not return_extra:
        warnings.warn(f"{source}: {len(extra)} task-head keys ({sorted(extra)[:3]}...) are not part of the "
                      f"FusionNetwork and were left out; pass return_extra=True to get them")
    model.eval()
    return (model, extra) if return_extra else model


def to_esm_gearnet_state_dict(model: FusionNetwork) -> Dict[str, torch.Tensor]:
    """The published ESM-GearNet layout of ``model`` (inverse of :func:`load_esm_gearnet`): fair-esm keys under
    ``sequence_model.model.`` (separate q/k/v, ``rot_emb.inv_freq``, tied ``lm_head.weight``,
    ``contact_head.regression.*`` when present), ``sequence_model.mapping``, ``structure_model.*`` (GVP:
    ``residue_embdding``), cross-fusion keys unchanged."""
    out: Dict[str, torch.Tensor] = {}
    esm = model.sequence_model
    prefix = "sequence_model.model." if model.structure_model is not None else "model."
    if esm is not None:
        D, hd = esm.embed_dim, esm.config.head_dim
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        for k, v in esm.state_dict().items():
            m = re.match(r"layers\.(\d+)\.self_attn\.qkv_proj\.(weight|bias)$", k)
            if m:
                for c, part in zip("qkv", v.split(D)):
                    out[f"{prefix}layers.{m.group(1)}.self_attn.{c}_proj.{m.group(2)}"] = part.clone()
                out[f"{prefix}layers.{m.group(1)}.self_attn.rot_emb.inv_freq"] = inv.clone()
            elif k.startswith("contact_regression."):
                out[prefix + "contact_head.regression." + k.split(".", 1)[1]] = v
            else:
                out[prefix + k] = v
        out[prefix + "lm_head.weight"] = esm.embed_tokens.weight
        out["sequence_model.mapping" if model.structure_model is not None else "mapping"] = torchdrug_esm_mapping()
    if model.structure_model is not None:
        sp = "structure_model." if esm is not None else ""
        for k, v in model.structure_model.state_dict().items():
            if model.structure_kind == "gvp" and k.startswith("residue_embedding."):
                k = "residue_embdding." + k[len("residue_embedding."):]
            out[sp + k] = v
    for k, v in model.state_dict().items():
        if k.startswith(("seq_linear.", "struct_linear.", "attn.")):
            out[k] = v
    return out
