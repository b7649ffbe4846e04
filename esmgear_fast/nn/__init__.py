"""Drop-in layers, one per file."""
from .cdconv import CDConv
from .gearnet_graph import GearNetGraph, gearnet_graph
from .geometric_relational_graph_conv import GeometricRelationalGraphConv
from .gvp import GVP
from .gvp_conv import GVPConv
from .gvp_conv_layer import GVPConvLayer
from .gvp_dropout import GVPDropout
from .gvp_layer_norm import GVPLayerNorm
from .gvp_vector_dropout import GVPVectorDropout

__all__ = [
    "CDConv",
    "GVP",
    "GVPConv",
    "GVPConvLayer",
    "GVPDropout",
    "GVPLayerNorm",
    "GVPVectorDropout",
    "GearNetGraph",
    "GeometricRelationalGraphConv",
    "gearnet_graph",
]
