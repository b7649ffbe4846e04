"""Public functional ops. Each op: documented wrapper, fake kernel, autograd, backend choice."""
from .cdconv import cdconv
from .gvp import GVPWeights, gvp, gvp_conv_message
from .knn_graph import knn_graph
from .radius_graph import radius_graph
from .radius_knn_graph import radius_knn_graph
from .relational_aggregate import relational_aggregate
from .relational_csr import RelationalCSR, relational_csr
from .relational_linear import relational_linear
from .spatial_line_graph import spatial_line_graph

__all__ = [
    "GVPWeights",
    "RelationalCSR",
    "cdconv",
    "gvp",
    "gvp_conv_message",
    "knn_graph",
    "radius_graph",
    "radius_knn_graph",
    "relational_aggregate",
    "relational_csr",
    "relational_linear",
    "spatial_line_graph",
]
