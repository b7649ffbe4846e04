"""Drop-in layers, one per file."""
from .gearnet_graph import GearNetGraph, gearnet_graph
from .geometric_relational_graph_conv import GeometricRelationalGraphConv

__all__ = ["GearNetGraph", "GeometricRelationalGraphConv", "gearnet_graph"]
from .gvp import GVP
from .gvp_conv import GVPConv
from .gvp_conv_layer import GVPConvLayer
from .gvp_dropout import GVPDropout
from .gvp_layer_norm import GVPLayerNorm
from .gvp_vector_dropout import GVPVectorDropout

__all__ += ["GVP", "GVPConv", "GVPConvLayer", "GVPDropout", "GVPLayerNorm", "GVPVectorDropout"]
