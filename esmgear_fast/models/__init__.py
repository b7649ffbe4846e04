"""Encoders built from the esmgear_fast layers."""
from .cdconv import CDConv, CDConvBlock, cdconv_pool, cdconv_state_dict, residue_frames
from .gearnet import (GearNet, gearnet_edge_feature, graph_readout, residue_one_hot, spatial_line_graph,
                      structure_state_dict)
from .gvp_gnn import GVPGNN, gvp_edge_features, gvp_radius_graph, gvp_rbf, gvp_state_dict

__all__ = [
    "CDConv",
    "CDConvBlock",
    "GVPGNN",
    "GearNet",
    "cdconv_pool",
    "cdconv_state_dict",
    "gearnet_edge_feature",
    "graph_readout",
    "gvp_edge_features",
    "gvp_radius_graph",
    "gvp_rbf",
    "gvp_state_dict",
    "residue_frames",
    "residue_one_hot",
    "spatial_line_graph",
    "structure_state_dict",
]
