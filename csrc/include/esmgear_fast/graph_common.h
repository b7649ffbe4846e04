// Shared by the CPU and CUDA graph kernels: input validation and the batch -> ptr conversion.
// Both run on the op's device with ATen ops, so they behave the same on every backend.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace esmgear_fast {

// Validates pos [N, 3] (float32/float64, finite) and batch [N] (int64, sorted, >= 0) and returns
// ptr [B + 1] with ptr[b]..ptr[b + 1] the rows of protein b.
inline at::Tensor check_graph_inputs(const char* op, const at::Tensor& pos,
                                     const c10::optional<at::Tensor>& batch) {
  TORCH_CHECK_VALUE(pos.dim() == 2 && pos.size(1) == 3, op, ": pos must have shape [N, 3], got ",
              pos.sizes());
  TORCH_CHECK_TYPE(pos.scalar_type() == at::kFloat || pos.scalar_type() == at::kDouble, op,
              ": pos must be float32 or float64, got ", pos.scalar_type());
  const int64_t n = pos.size(0);
  if (n > 0) {
    // One reduction + sync: a NaN would otherwise silently drop or invent edges.
    const auto finite = at::isfinite(pos).all(1);
    if (!finite.all().item<bool>()) {
      const int64_t row = (~finite).nonzero().select(1, 0)[0].item<int64_t>();
      TORCH_CHECK_VALUE(false, op, ": pos has a non-finite (NaN or Inf) coordinate at row ", row,
                  " (of ", n, "); remove or impute missing coordinates before building a graph");
    }
  }
  auto opts = pos.options().dtype(at::kLong);
  if (!batch.has_value()) {
    return at::tensor({int64_t(0), n}, opts.device(at::kCPU)).to(pos.device());
  }
  const auto& b = *batch;
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == n, op, ": batch must have shape [N] = [", n,
              "], got ", b.sizes());
  TORCH_CHECK_TYPE(b.scalar_type() == at::kLong, op, ": batch must be int64, got ", b.scalar_type());
  TORCH_CHECK_VALUE(b.device() == pos.device(), op, ": batch is on ", b.device(), " but pos is on ",
              pos.device());
  if (n == 0) return at::zeros({1}, opts);
  TORCH_CHECK_VALUE(b.min().item<int64_t>() >= 0, op, ": batch has negative protein indices");
  if (n > 1) {
    TORCH_CHECK_VALUE((b.narrow(0, 1, n - 1) >= b.narrow(0, 0, n - 1)).all().item<bool>(), op,
                ": batch must be sorted (nodes of each protein contiguous, proteins in order)");
  }
  const int64_t num_graphs = b[n - 1].item<int64_t>() + 1;
  return at::_convert_indices_from_coo_to_csr(b.contiguous(), num_graphs, /*out_int32=*/false);
}

inline void check_graph_params(const char* op, double r, c10::optional<int64_t> cap) {
  TORCH_CHECK_VALUE(!(r < 0) && r == r, op, ": r must be a non-negative number, got ", r);
  TORCH_CHECK_VALUE(!cap.has_value() || *cap >= 0, op, ": max_num_neighbors must be >= 0 or None, got ",
              cap.has_value() ? *cap : 0);
}

}  // namespace esmgear_fast
