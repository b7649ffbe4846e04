"""Encoders built from the esmgear_fast layers."""
from .gearnet import (GearNet, gearnet_edge_feature, graph_readout, residue_one_hot, spatial_line_graph,
                      structure_state_dict)

__all__ = ["GearNet", "gearnet_edge_feature", "graph_readout", "residue_one_hot", "spatial_line_graph",
           "structure_state_dict"]
from .cdconv import CDConv, CDConvBlock, cdconv_pool, cdconv_state_dict, residue_frames
__all__ += ["CDConv", "CDConvBlock", "cdconv_pool", "cdconv_state_dict", "residue_frames"]
