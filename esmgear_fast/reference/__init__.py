"""Plain-PyTorch reference implementations: the definition of correct for every op.

Written to be read, not to be fast. Every compiled or Triton kernel is tested against these.
"""
from .cdconv import cdconv, cdconv_kernel_weights
from .knn_graph import knn_graph
from .radius_graph import radius_graph
from .radius_knn_graph import radius_knn_graph
from .relational_aggregate import relational_aggregate

__all__ = ["knn_graph", "radius_graph", "radius_knn_graph", "relational_aggregate"]
__all__ += ["cdconv", "cdconv_kernel_weights"]
