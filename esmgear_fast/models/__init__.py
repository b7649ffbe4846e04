"""Encoders built from the esmgear_fast layers, and their fusion with ESM-2."""
from .cdconv import CDConv, CDConvBlock, cdconv_pool, cdconv_state_dict, residue_frames
from .gearnet import (GearNet, gearnet_edge_feature, graph_readout, residue_one_hot, spatial_line_graph,
                      structure_state_dict)
from .gvp_gnn import GVPGNN, gvp_edge_features, gvp_radius_graph, gvp_rbf, gvp_state_dict
from .fusion import FUSIONS, CrossAttentionBlock, FusionNetwork, canonical_fusion, esm_tokens_from_batch
from .factory import (STRUCTURE_ENCODERS, ModelConfig, build_model, build_structure_model, esm_config_of,
                      load_esm_gearnet, load_model, save_model, split_state_dict, to_esm_gearnet_state_dict,
                      torchdrug_esm_mapping)

__all__ = [
    "CDConv",
    "CDConvBlock",
    "CrossAttentionBlock",
    "FUSIONS",
    "FusionNetwork",
    "GVPGNN",
    "GearNet",
    "ModelConfig",
    "STRUCTURE_ENCODERS",
    "build_model",
    "build_structure_model",
    "canonical_fusion",
    "cdconv_pool",
    "cdconv_state_dict",
    "esm_config_of",
    "esm_tokens_from_batch",
    "gearnet_edge_feature",
    "graph_readout",
    "gvp_edge_features",
    "gvp_radius_graph",
    "gvp_rbf",
    "gvp_state_dict",
    "load_esm_gearnet",
    "load_model",
    "residue_frames",
    "residue_one_hot",
    "save_model",
    "spatial_line_graph",
    "split_state_dict",
    "structure_state_dict",
    "to_esm_gearnet_state_dict",
    "torchdrug_esm_mapping",
]
