"""Plain-PyTorch reference implementations: the definition of correct for every op.

Written to be read, not to be fast. Every compiled or Triton kernel is tested against these.
"""
from .cdconv import cdconv, cdconv_kernel_weights
from .gvp import GVPWeights, gvp, gvp_conv_message
from .knn_graph import knn_graph
from .radius_graph import radius_graph
from .radius_knn_graph import radius_knn_graph
from .relational_aggregate import relational_aggregate
from .relational_linear import relational_linear
from .spatial_line_graph import spatial_line_graph

__all__ = [
    "GVPWeights",
    "cdconv",
    "cdconv_kernel_weights",
    "gvp",
    "gvp_conv_message",
    "knn_graph",
    "radius_graph",
    "radius_knn_graph",
    "relational_aggregate",
    "relational_linear",
    "spatial_line_graph",
]
