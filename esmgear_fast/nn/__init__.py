"""Drop-in layers, one per file."""
from .gearnet_graph import GearNetGraph, gearnet_graph

__all__ = ["GearNetGraph", "gearnet_graph"]
