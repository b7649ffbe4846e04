// CUDA kernels of esmgear_fast::relational_aggregate and its backward.
//
// Deterministic, no atomics, as on CPU: the edges are bucketed by destination row with a stable
// sort (ATen ops on the current stream), then one block per destination row walks its edges in
// input order while its threads cover the feature columns; float16/bfloat16 accumulate in float32.
//   forward:      rows i*R + r of the [N*R, D] view of the output gather x[j]
//   grad_x:       rows j gather grad_out[i*R + r] (the same kernel, roles swapped)
//   grad_weight:  one warp per edge, dot(grad_out[i*R + r], x[j]) by a fixed shuffle tree
// Index and relation ranges are validated on the device before any kernel reads them (one sync).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "esmgear_fast/relational_common.h"

namespace esmgear_fast {
namespace {

constexpr int kWarpSize = 32;
constexpr int kThreads = 128;

void check_inputs_cuda(const char* op, const at::Tensor& x, const at::Tensor& edge_index,
                       const at::Tensor& edge_type, int64_t num_relation,
                       const c10::optional<at::Tensor>& edge_weight) {
  TORCH_CHECK(x.is_cuda(), op, ": CUDA kernel called with x on ", x.device());
  check_relational_inputs(op, x, edge_index, edge_type, num_relation, edge_weight);
  const int64_t num_edges = edge_index.size(1);
  if (num_edges > 0) {
    const int64_t n = x.size(0);
    const bool bad_index = (edge_index.min().item<int64_t>() < 0) || (edge_index.max().item<int64_t>() >= n);
    TORCH_CHECK_VALUE(!bad_index, op, ": edge_index has entries out of range for ", n, " nodes");
    const bool bad_type = (edge_type.min().item<int64_t>() < 0) || (edge_type.max().item<int64_t>() >= num_relation);
    TORCH_CHECK_VALUE(!bad_type, op, ": edge_type has entries outside [0, ", num_relation, ")");
  }
}

// Bucketing of edges by destination row: (order [E] int64, start [num_rows + 1] int64).
std::tuple<at::Tensor, at::Tensor> bucket(const at::Tensor& dst, int64_t num_rows) {
  const at::Tensor order = std::get<1>(at::sort(dst, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor start = at::zeros({num_rows + 1}, dst.options());
  if (dst.numel() > 0) start.narrow(0, 1, num_rows).copy_(at::cumsum(at::bincount(dst, {}, num_rows), 0));
  return {order, start};
}

template <typename scalar_t>
__global__ void gather_sum_kernel(const scalar_t* __restrict__ in, const int64_t* __restrict__ src,
                                  const int64_t* __restrict__ order, const int64_t* __restrict__ start,
                                  const scalar_t* __restrict__ w, int64_t dim, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = blockIdx.x;
  const int64_t begin = start[row], end = start[row + 1];
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    acc_t acc = 0;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t e = order[k];
      const acc_t v = static_cast<acc_t>(in[src[e] * dim + d]);
      acc += w == nullptr ? v : static_cast<acc_t>(w[e]) * v;
    }
    out[row * dim + d] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void edge_dot_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                const int64_t* __restrict__ grow, const int64_t* __restrict__ xrow,
                                int64_t num_edges, int64_t dim, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t e = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (e >= num_edges) return;
  const scalar_t* a = g + grow[e] * dim;
  const scalar_t* b = x + xrow[e] * dim;
  acc_t s = 0;
  for (int64_t d = lane; d < dim; d += kWarpSize) s += static_cast<acc_t>(a[d]) * static_cast<acc_t>(b[d]);
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
  if (lane == 0) out[e] = static_cast<scalar_t>(s);
}

int block_threads(int64_t dim) {
  int t = kWarpSize;
  while (t < dim && t < 256) t *= 2;
  return t;
}

template <typename scalar_t>
void launch_gather_sum(const at::Tensor& in, const at::Tensor& src, const at::Tensor& dst, const at::Tensor& w,
                       int64_t num_rows, int64_t dim, at::Tensor& out) {
  if (num_rows == 0) return;
  if (dim == 0) return;
  at::Tensor order, start;
  std::tie(order, start) = bucket(dst, num_rows);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  gather_sum_kernel<scalar_t><<<static_cast<unsigned int>(num_rows), block_threads(dim), 0, stream>>>(
      in.data_ptr<scalar_t>(), src.data_ptr<int64_t>(), order.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
      w.defined() ? w.data_ptr<scalar_t>() : nullptr, dim, out.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor relational_aggregate_cuda(const at::Tensor& x_in, const at::Tensor& edge_index,
                                     const at::Tensor& edge_type, int64_t num_relation,
                                     const c10::optional<at::Tensor>& edge_weight) {
  check_inputs_cuda("relational_aggregate", x_in, edge_index, edge_type, num_relation, edge_weight);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  const at::Tensor src = edge_index.select(0, 0).contiguous();
  const at::Tensor dst = (edge_index.select(0, 1) * num_relation + edge_type).contiguous();
  const at::Tensor w = edge_weight.has_value() ? edge_weight->contiguous() : at::Tensor();
  at::Tensor out = at::empty({n, num_relation * dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relational_aggregate_cuda", [&] {
    launch_gather_sum<scalar_t>(x, src, dst, w, n * num_relation, dim, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> relational_aggregate_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& edge_index,
    const at::Tensor& edge_type, int64_t num_relation, const c10::optional<at::Tensor>& edge_weight,
    bool need_grad_x, bool need_grad_weight) {
  const char* op = "relational_aggregate_backward";
  check_inputs_cuda(op, x_in, edge_index, edge_type, num_relation, edge_weight);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1), num_edges = edge_index.size(1);
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == n && grad_in.size(1) == num_relation * dim, op,
                    ": grad_out must have shape [", n, ", ", num_relation * dim, "], got ", grad_in.sizes());
  TORCH_CHECK_TYPE(grad_in.scalar_type() == x.scalar_type(), op, ": grad_out dtype ", grad_in.scalar_type(),
                   " differs from x dtype ", x.scalar_type());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor src = edge_index.select(0, 0).contiguous();
  const at::Tensor dst = (edge_index.select(0, 1) * num_relation + edge_type).contiguous();
  const at::Tensor w = edge_weight.has_value() ? edge_weight->contiguous() : at::Tensor();
  at::Tensor grad_x = need_grad_x ? at::zeros({n, dim}, x.options()) : at::empty({0, dim}, x.options());
  at::Tensor grad_w = need_grad_weight ? at::zeros({num_edges}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relational_aggregate_backward_cuda", [&] {
    if (need_grad_x) launch_gather_sum<scalar_t>(grad, dst, src, w, n, dim, grad_x);
    if (need_grad_weight && num_edges > 0 && dim > 0) {
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
      const int64_t blocks = (num_edges * kWarpSize + kThreads - 1) / kThreads;
      edge_dot_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
          grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dst.data_ptr<int64_t>(), src.data_ptr<int64_t>(),
          num_edges, dim, grad_w.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CUDA, m) {
  m.impl("relational_aggregate", &relational_aggregate_cuda);
  m.impl("relational_aggregate_backward", &relational_aggregate_backward_cuda);
}

}  // namespace esmgear_fast
