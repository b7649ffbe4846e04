// CUDA kernel of esmgear_fast::spatial_line_graph.
//
// Counting pass with ATen ops on the device: in/out degrees (bincount), the edge ids grouped by
// target and by source (stable sorts, so ascending id within a residue) and the inclusive prefix
// sum of in_degree(j) * out_degree(j); its last entry (one sync) sizes the output. Fill pass: one
// thread per line-graph edge t finds its residue j by binary search in the prefix sums and
// decodes (a, b) from its rank inside j's slice, exactly the reference's order. No atomics; angles
// use round-to-nearest intrinsics (no FMA contraction) and the bin rule shared with the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "esmgear_fast/line_graph_common.h"

namespace esmgear_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loop covers the rest

template <typename scalar_t>
__global__ void line_graph_fill_kernel(const scalar_t* __restrict__ pos, const int64_t* __restrict__ source,
                                       const int64_t* __restrict__ target, const int64_t* __restrict__ in_ptr,
                                       const int64_t* __restrict__ in_ids, const int64_t* __restrict__ out_ptr,
                                       const int64_t* __restrict__ out_ids, const int64_t* __restrict__ pair_end,
                                       int64_t num_nodes, int64_t num_pairs, int64_t num_angle_bin,
                                       int64_t* __restrict__ first, int64_t* __restrict__ second,
                                       int64_t* __restrict__ type) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < num_pairs;
       t += int64_t(gridDim.x) * blockDim.x) {
    // j = the first residue whose inclusive pair count exceeds t.
    int64_t lo = 0, hi = num_nodes - 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (pair_end[mid] > t) hi = mid; else lo = mid + 1;
    }
    const int64_t j = lo;
    const int64_t local = t - (j > 0 ? pair_end[j - 1] : 0);
    const int64_t fan_out = out_ptr[j + 1] - out_ptr[j];
    const int64_t a = in_ids[in_ptr[j] + local / fan_out];
    const int64_t b = out_ids[out_ptr[j] + local % fan_out];
    double v1[3], v2[3];
    edge_vector(pos, target[b], j, v1);
    edge_vector(pos, source[a], j, v2);
    first[t] = a;
    second[t] = b;
    type[t] = angle_bin<scalar_t>(v1, v2, num_angle_bin);
  }
}

std::tuple<at::Tensor, at::Tensor> spatial_line_graph_cuda(const at::Tensor& pos_in, const at::Tensor& edge_index,
                                                           int64_t num_angle_bin) {
  const char* op = "spatial_line_graph";
  TORCH_CHECK(pos_in.is_cuda(), op, ": CUDA kernel called with pos on ", pos_in.device());
  check_line_graph_inputs(op, pos_in, edge_index, num_angle_bin);
  const c10::cuda::CUDAGuard guard(pos_in.device());
  const at::Tensor pos = pos_in.contiguous();
  const at::Tensor ei = edge_index.contiguous();
  const int64_t n = pos.size(0);
  const int64_t num_edges = ei.size(1);
  if (num_edges == 0 || n == 0) {
    return {at::empty({2, 0}, ei.options()), at::empty({0}, ei.options())};
  }
  const at::Tensor source = ei.select(0, 0);
  const at::Tensor target = ei.select(0, 1);
  auto csr = [&](const at::Tensor& key) {
    const at::Tensor counts = at::bincount(key, {}, n);
    at::Tensor ptr = at::zeros({n + 1}, ei.options());
    ptr.narrow(0, 1, n).copy_(counts.cumsum(0));
    const at::Tensor ids = std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
    return std::make_tuple(counts, ptr, ids.contiguous());
  };
  auto [in_deg, in_ptr, in_ids] = csr(target);
  auto [out_deg, out_ptr, out_ids] = csr(source);
  const at::Tensor pair_end = (in_deg * out_deg).cumsum(0).contiguous();
  const int64_t num_pairs = pair_end[n - 1].item<int64_t>();

  at::Tensor line_index = at::empty({2, num_pairs}, ei.options());
  at::Tensor line_type = at::empty({num_pairs}, ei.options());
  if (num_pairs == 0) return {line_index, line_type};
  const int64_t blocks = std::min<int64_t>((num_pairs + kThreads - 1) / kThreads, kMaxBlocks);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "spatial_line_graph_cuda", [&] {
    line_graph_fill_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        pos.data_ptr<scalar_t>(), source.data_ptr<int64_t>(), target.data_ptr<int64_t>(),
        in_ptr.data_ptr<int64_t>(), in_ids.data_ptr<int64_t>(), out_ptr.data_ptr<int64_t>(),
        out_ids.data_ptr<int64_t>(), pair_end.data_ptr<int64_t>(), n, num_pairs, num_angle_bin,
        line_index.data_ptr<int64_t>(), line_index.data_ptr<int64_t>() + num_pairs,
        line_type.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {line_index, line_type};
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CUDA, m) {
  m.impl("spatial_line_graph", &spatial_line_graph_cuda);
}

}  // namespace esmgear_fast
