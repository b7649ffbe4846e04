// CPU kernel of esmgear_fast::spatial_line_graph.
//
// Counting pass (serial, O(N + E)): in/out degrees, a stable counting sort of the edge ids by
// target and by source, and the exclusive prefix sum of in_degree(j) * out_degree(j), which gives
// every residue j its slice of the output. Fill pass (parallel over residues j, no atomics): each
// thread writes the pairs (a, b) of its residues into their slices, so the output is the same for
// any thread count and equals the reference's order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "esmgear_fast/line_graph_common.h"

namespace esmgear_fast {
namespace {

constexpr int64_t kGrainNodes = 32;

// Stable counting sort of the edge ids by `key` (values in [0, n)): returns the CSR row pointer
// [n + 1] and the ids grouped by key, ascending id within a key.
void bucket_edges(const int64_t* key, int64_t num_edges, int64_t n, std::vector<int64_t>& ptr,
                  std::vector<int64_t>& ids) {
  ptr.assign(n + 1, 0);
  for (int64_t e = 0; e < num_edges; ++e) ++ptr[key[e] + 1];
  for (int64_t v = 0; v < n; ++v) ptr[v + 1] += ptr[v];
  ids.resize(num_edges);
  std::vector<int64_t> fill(ptr.begin(), ptr.end() - 1);
  for (int64_t e = 0; e < num_edges; ++e) ids[fill[key[e]]++] = e;
}

std::tuple<at::Tensor, at::Tensor> spatial_line_graph_cpu(const at::Tensor& pos_in, const at::Tensor& edge_index,
                                                          int64_t num_angle_bin) {
  const char* op = "spatial_line_graph";
  TORCH_CHECK(pos_in.device().is_cpu(), op, ": CPU kernel called with pos on ", pos_in.device());
  check_line_graph_inputs(op, pos_in, edge_index, num_angle_bin);
  const at::Tensor pos = pos_in.contiguous();
  const at::Tensor ei = edge_index.contiguous();
  const int64_t n = pos.size(0);
  const int64_t num_edges = ei.size(1);
  const int64_t* source = ei.data_ptr<int64_t>();
  const int64_t* target = source + num_edges;

  std::vector<int64_t> in_ptr, in_ids, out_ptr, out_ids;
  bucket_edges(target, num_edges, n, in_ptr, in_ids);    // edges ending at j
  bucket_edges(source, num_edges, n, out_ptr, out_ids);  // edges starting at j
  std::vector<int64_t> pair_ptr(n + 1, 0);
  for (int64_t j = 0; j < n; ++j)
    pair_ptr[j + 1] = pair_ptr[j] + (in_ptr[j + 1] - in_ptr[j]) * (out_ptr[j + 1] - out_ptr[j]);
  const int64_t num_pairs = pair_ptr[n];

  at::Tensor line_index = at::empty({2, num_pairs}, ei.options());
  at::Tensor line_type = at::empty({num_pairs}, ei.options());
  int64_t* first = line_index.data_ptr<int64_t>();
  int64_t* second = first + num_pairs;
  int64_t* type = line_type.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "spatial_line_graph_cpu", [&] {
    const scalar_t* p = pos.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrainNodes, [&](int64_t begin, int64_t end) {
      std::vector<double> out_vec;  // v1 = p_i - p_j of every edge b = (j -> i), reused per a
      for (int64_t j = begin; j < end; ++j) {
        const int64_t out_begin = out_ptr[j], fan_out = out_ptr[j + 1] - out_begin;
        if (fan_out == 0 || in_ptr[j + 1] == in_ptr[j]) continue;
        out_vec.resize(3 * fan_out);
        for (int64_t q = 0; q < fan_out; ++q)
          edge_vector(p, target[out_ids[out_begin + q]], j, out_vec.data() + 3 * q);
        int64_t slot = pair_ptr[j];
        for (int64_t s = in_ptr[j]; s < in_ptr[j + 1]; ++s) {
          const int64_t a = in_ids[s];
          double v2[3];
          edge_vector(p, source[a], j, v2);
          for (int64_t q = 0; q < fan_out; ++q, ++slot) {
            first[slot] = a;
            second[slot] = out_ids[out_begin + q];
            type[slot] = angle_bin<scalar_t>(out_vec.data() + 3 * q, v2, num_angle_bin);
          }
        }
      }
    });
  });
  return {line_index, line_type};
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CPU, m) {
  m.impl("spatial_line_graph", &spatial_line_graph_cpu);
}

}  // namespace esmgear_fast
