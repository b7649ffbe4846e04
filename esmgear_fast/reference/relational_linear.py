from typing import Optional

import torch
from torch.nn import functional as F

from .relational_aggregate import relational_aggregate


def relational_linear(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    edge_type: torch.Tensor,
    num_relation: int,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    edge_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference GearNet layer product: ``linear(relational_aggregate(x), weight, bias)``, i.e.
    ``out[i] = sum_r sum_{e=(j->i), type r} w_e * weight[:, r*D:(r+1)*D] @ x[j] + bias`` with weight
    [D', R*D]. The unfused computation: the [N, R*D] aggregate is materialised, then multiplied.
    See :func:`esmgear_fast.ops.relational_linear`.
    """
    return F.linear(relational_aggregate(x, edge_index, edge_type, num_relation, edge_weight), weight, bias)
