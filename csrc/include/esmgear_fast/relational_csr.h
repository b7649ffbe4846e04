// Input validation of the CSR relational primitives, shared by their CPU kernels (and any future
// CUDA kernels): shapes, dtypes and devices; the O(nnz) range checks of col are done by the kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace esmgear_fast {

inline void check_csr(const char* op, const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                      const c10::optional<at::Tensor>& weight) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must have shape [N, D], got ", x.sizes());
  TORCH_CHECK_TYPE(x.is_floating_point(), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.size(0) >= 1, op, ": rowptr must have shape [rows + 1], got ",
                    rowptr.sizes());
  TORCH_CHECK_VALUE(col.dim() == 1, op, ": col must have shape [nnz], got ", col.sizes());
  TORCH_CHECK_TYPE(rowptr.scalar_type() == at::kLong && col.scalar_type() == at::kLong, op,
                   ": rowptr and col must be int64, got ", rowptr.scalar_type(), " and ", col.scalar_type());
  TORCH_CHECK(rowptr.device() == x.device() && col.device() == x.device(), op,
              ": x, rowptr and col must be on one device, got ", x.device(), ", ", rowptr.device(), ", ",
              col.device());
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == col.size(0), op, ": weight must have shape [nnz] = [",
                      col.size(0), "], got ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": weight dtype ", w.scalar_type(),
                     " differs from x dtype ", x.scalar_type());
    TORCH_CHECK(w.device() == x.device(), op, ": weight is on ", w.device(), " but x on ", x.device());
  }
}

}  // namespace esmgear_fast
