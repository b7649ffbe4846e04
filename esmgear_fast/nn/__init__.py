"""Drop-in layers, one per file."""
from .gearnet_graph import GearNetGraph, gearnet_graph
from .geometric_relational_graph_conv import GeometricRelationalGraphConv

__all__ = ["GearNetGraph", "GeometricRelationalGraphConv", "gearnet_graph"]
from .cdconv import CDConv
__all__ += ["CDConv"]
