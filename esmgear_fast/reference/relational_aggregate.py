from typing import Optional

import torch


def relational_aggregate(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    edge_type: torch.Tensor,
    num_relation: int,
    edge_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference relational aggregation: ``out[i, r*D + d] = sum_{e=(j->i), type r} w_e * x[j, d]``.

    Messages ``w_e * x[j]`` are scatter-added into a [N, R, D] buffer at (target, relation), which
    is then flattened to [N, R*D]. Half-precision inputs accumulate in float32. Differentiable by
    plain autograd. See :func:`esmgear_fast.ops.relational_aggregate`.
    """
    n, dim = x.shape
    source, target = edge_index[0], edge_index[1]
    acc_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    message = x.index_select(0, source).to(acc_dtype)
    if edge_weight is not None:
        message = message * edge_weight.to(acc_dtype).unsqueeze(-1)
    out = torch.zeros(n, num_relation, dim, dtype=acc_dtype, device=x.device)
    out.view(n * num_relation, dim).index_add_(0, target * num_relation + edge_type, message)
    return out.view(n, num_relation * dim).to(x.dtype)
