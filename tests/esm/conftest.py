"""Shared fixtures: a tiny fair-esm ESM2 with random weights and the same weights in our model."""
import pytest
import torch

from esmgear_fast.esm import EsmConfig, load_esm, state_dict_from_fair_esm
from esmgear_fast.esm.loading import _load_into

from esm_parity_helpers import DIM, HEADS, LAYERS


@pytest.fixture(scope="session")
def fair_esm_model():
    esm = pytest.importorskip("esm")
    torch.manual_seed(1234)
    model = esm.model.esm2.ESM2(num_layers=LAYERS, embed_dim=DIM, attention_heads=HEADS).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.1 if p.ndim == 1 else 0.2)
    return model


@pytest.fixture(scope="session")
def ours(fair_esm_model):
    model = load_esm(EsmConfig(LAYERS, DIM, HEADS))
    _load_into(model, state_dict_from_fair_esm(fair_esm_model.state_dict(), LAYERS), "fixture")
    return model.eval()

