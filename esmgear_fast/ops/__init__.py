"""Public functional ops. Each op: documented wrapper, fake kernel, autograd, backend choice."""
from .knn_graph import knn_graph
from .radius_graph import radius_graph
from .radius_knn_graph import radius_knn_graph
from .relational_aggregate import relational_aggregate
from .spatial_line_graph import spatial_line_graph

__all__ = ["knn_graph", "radius_graph", "radius_knn_graph", "relational_aggregate", "spatial_line_graph"]
