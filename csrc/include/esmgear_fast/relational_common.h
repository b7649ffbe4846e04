// Input validation shared by the CPU and CUDA kernels of relational_aggregate (shapes, dtypes,
// devices); each kernel adds its own device check and the per-edge range checks.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace esmgear_fast {

inline void check_relational_inputs(const char* op, const at::Tensor& x, const at::Tensor& edge_index,
                  const at::Tensor& edge_type, int64_t num_relation,
                  const c10::optional<at::Tensor>& edge_weight) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must have shape [N, D], got ", x.sizes());
  TORCH_CHECK_TYPE(x.is_floating_point(), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK_VALUE(edge_index.dim() == 2 && edge_index.size(0) == 2, op,
                    ": edge_index must have shape [2, E], got ", edge_index.sizes());
  TORCH_CHECK_TYPE(edge_index.scalar_type() == at::kLong, op, ": edge_index must be int64, got ",
                   edge_index.scalar_type());
  const int64_t num_edges = edge_index.size(1);
  TORCH_CHECK_VALUE(edge_type.dim() == 1 && edge_type.size(0) == num_edges, op,
                    ": edge_type must have shape [E] = [", num_edges, "], got ", edge_type.sizes());
  TORCH_CHECK_TYPE(edge_type.scalar_type() == at::kLong, op, ": edge_type must be int64, got ",
                   edge_type.scalar_type());
  TORCH_CHECK_VALUE(num_relation >= 1, op, ": num_relation must be >= 1, got ", num_relation);
  TORCH_CHECK(edge_index.device() == x.device() && edge_type.device() == x.device(), op,
              ": x, edge_index and edge_type must be on one device, got ", x.device(), ", ",
              edge_index.device(), ", ", edge_type.device());
  if (edge_weight.has_value()) {
    const at::Tensor& w = *edge_weight;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == num_edges, op,
                      ": edge_weight must have shape [E] = [", num_edges, "], got ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": edge_weight dtype ", w.scalar_type(),
                     " differs from x dtype ", x.scalar_type());
    TORCH_CHECK(w.device() == x.device(), op, ": edge_weight is on ", w.device(), " but x on ", x.device());
  }
}

}  // namespace esmgear_fast
