// CPU kernels of esmgear_fast::relational_aggregate and its backward.
//
// Deterministic and free of atomics: the edges are bucketed by destination row with a stable
// counting sort (O(E + rows)), then each thread owns a contiguous range of destination rows and
// sums its edges in their original order. The forward's destination rows are the (target,
// relation) pairs i*R + r of the [N*R, D] view of the output; the backward w.r.t. x is the same
// gather-sum with the roles swapped (rows of grad_out gathered, sources j as destinations).
// Half-precision inputs accumulate in float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "esmgear_fast/relational_common.h"

namespace esmgear_fast {
namespace {

constexpr int64_t kGrainRows = 64;

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& edge_index,
                  const at::Tensor& edge_type, int64_t num_relation,
                  const c10::optional<at::Tensor>& edge_weight) {
  TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel called with x on ", x.device());
  check_relational_inputs(op, x, edge_index, edge_type, num_relation, edge_weight);
}

// Checks every edge's endpoints and relation; returns (source, destination row) per edge, where
// the destination row is i * R + r.
void edge_rows(const char* op, const at::Tensor& edge_index, const at::Tensor& edge_type,
               int64_t num_nodes, int64_t num_relation, std::vector<int64_t>& src,
               std::vector<int64_t>& dst) {
  const at::Tensor ei = edge_index.contiguous();
  const at::Tensor et = edge_type.contiguous();
  const int64_t num_edges = ei.size(1);
  const int64_t* s = ei.data_ptr<int64_t>();
  const int64_t* t = s + num_edges;
  const int64_t* r = et.data_ptr<int64_t>();
  src.resize(num_edges);
  dst.resize(num_edges);
  for (int64_t e = 0; e < num_edges; ++e) {
    TORCH_CHECK_VALUE(s[e] >= 0 && s[e] < num_nodes && t[e] >= 0 && t[e] < num_nodes, op, ": edge ", e,
                      " (", s[e], " -> ", t[e], ") is out of range for ", num_nodes, " nodes");
    TORCH_CHECK_VALUE(r[e] >= 0 && r[e] < num_relation, op, ": edge ", e, " has edge_type ", r[e],
                      ", outside [0, ", num_relation, ")");
    src[e] = s[e];
    dst[e] = t[e] * num_relation + r[e];
  }
}

// Stable counting sort of the edges by destination row: start [num_rows + 1], order [E].
void bucket(const std::vector<int64_t>& dst, int64_t num_rows, std::vector<int64_t>& start,
            std::vector<int64_t>& order) {
  start.assign(num_rows + 1, 0);
  for (int64_t d : dst) ++start[d + 1];
  for (int64_t k = 0; k < num_rows; ++k) start[k + 1] += start[k];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  order.resize(dst.size());
  for (size_t e = 0; e < dst.size(); ++e) order[fill[dst[e]]++] = static_cast<int64_t>(e);
}

// out[row] = sum over edges e with dst[e] == row (in edge order) of w[e] * in[src[e]]; rows of
// length D; out is written entirely (rows without edges become zero).
template <typename scalar_t>
void gather_sum(const scalar_t* in, const std::vector<int64_t>& src, const std::vector<int64_t>& dst,
                const scalar_t* w, int64_t num_rows, int64_t dim, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<int64_t> start, order;
  bucket(dst, num_rows, start, order);
  // float/double sum straight into the output row; half types through a float32 row buffer.
  constexpr bool kDirect = std::is_same<acc_t, scalar_t>::value;
  at::parallel_for(0, num_rows, kGrainRows, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(kDirect ? 0 : dim);
    for (int64_t row = begin; row < end; ++row) {
      scalar_t* o = out + row * dim;
      acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(o) : buffer.data();
      std::fill(acc, acc + dim, acc_t(0));
      for (int64_t k = start[row]; k < start[row + 1]; ++k) {
        const int64_t e = order[k];
        const scalar_t* __restrict__ v = in + src[e] * dim;
        if (w == nullptr) {
          for (int64_t d = 0; d < dim; ++d) acc[d] += static_cast<acc_t>(v[d]);
        } else {
          const acc_t we = static_cast<acc_t>(w[e]);
          for (int64_t d = 0; d < dim; ++d) acc[d] += we * static_cast<acc_t>(v[d]);
        }
      }
      if (!kDirect)
        for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

at::Tensor relational_aggregate_cpu(const at::Tensor& x_in, const at::Tensor& edge_index,
                                    const at::Tensor& edge_type, int64_t num_relation,
                                    const c10::optional<at::Tensor>& edge_weight) {
  const char* op = "relational_aggregate";
  check_inputs(op, x_in, edge_index, edge_type, num_relation, edge_weight);
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  std::vector<int64_t> src, dst;
  edge_rows(op, edge_index, edge_type, n, num_relation, src, dst);
  at::Tensor out = at::empty({n, num_relation * dim}, x.options());
  const at::Tensor w = edge_weight.has_value() ? edge_weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relational_aggregate_cpu", [&] {
    gather_sum<scalar_t>(x.data_ptr<scalar_t>(), src, dst, w.defined() ? w.data_ptr<scalar_t>() : nullptr,
                         n * num_relation, dim, out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> relational_aggregate_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& edge_index,
    const at::Tensor& edge_type, int64_t num_relation, const c10::optional<at::Tensor>& edge_weight,
    bool need_grad_x, bool need_grad_weight) {
  const char* op = "relational_aggregate_backward";
  check_inputs(op, x_in, edge_index, edge_type, num_relation, edge_weight);
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1), num_edges = edge_index.size(1);
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == n && grad_in.size(1) == num_relation * dim, op,
                    ": grad_out must have shape [", n, ", ", num_relation * dim, "], got ", grad_in.sizes());
  TORCH_CHECK_TYPE(grad_in.scalar_type() == x.scalar_type(), op, ": grad_out dtype ", grad_in.scalar_type(),
                   " differs from x dtype ", x.scalar_type());
  const at::Tensor grad = grad_in.contiguous();
  std::vector<int64_t> src, dst;
  edge_rows(op, edge_index, edge_type, n, num_relation, src, dst);
  const at::Tensor w = edge_weight.has_value() ? edge_weight->contiguous() : at::Tensor();
  at::Tensor grad_x = at::empty({need_grad_x ? n : 0, dim}, x.options());
  at::Tensor grad_w = at::empty({need_grad_weight ? num_edges : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relational_aggregate_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    if (need_grad_x) {
      // grad_x[j] = sum over edges (j -> i, r) of w * grad_out[i*R + r]: gather rows of grad_out.
      gather_sum<scalar_t>(g, dst, src, w.defined() ? w.data_ptr<scalar_t>() : nullptr, n, dim,
                           grad_x.data_ptr<scalar_t>());
    }
    if (need_grad_weight) {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* gw = grad_w.data_ptr<scalar_t>();
      at::parallel_for(0, num_edges, 256, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const scalar_t* a = g + dst[e] * dim;
          const scalar_t* b = xp + src[e] * dim;
          acc_t s = 0;
          for (int64_t d = 0; d < dim; ++d) s += static_cast<acc_t>(a[d]) * static_cast<acc_t>(b[d]);
          gw[e] = static_cast<scalar_t>(s);
        }
      });
    }
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CPU, m) {
  m.impl("relational_aggregate", &relational_aggregate_cpu);
  m.impl("relational_aggregate_backward", &relational_aggregate_backward_cpu);
}

}  // namespace esmgear_fast
