"""Encoders built from the esmgear_fast layers."""
from .gearnet import (GearNet, gearnet_edge_feature, graph_readout, residue_one_hot, spatial_line_graph,
                      structure_state_dict)

__all__ = ["GearNet", "gearnet_edge_feature", "graph_readout", "residue_one_hot", "spatial_line_graph",
           "structure_state_dict"]
from .gvp_gnn import GVPGNN, gvp_edge_features, gvp_radius_graph, gvp_rbf, gvp_state_dict

__all__ += ["GVPGNN", "gvp_edge_features", "gvp_radius_graph", "gvp_rbf", "gvp_state_dict"]
