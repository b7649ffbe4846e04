"""Public functional ops. Each op: documented wrapper, fake kernel, autograd, backend choice."""
from .cdconv import cdconv
from .knn_graph import knn_graph
from .radius_graph import radius_graph
from .radius_knn_graph import radius_knn_graph
from .relational_aggregate import relational_aggregate

__all__ = ["knn_graph", "radius_graph", "radius_knn_graph", "relational_aggregate"]
__all__ += ["cdconv"]
