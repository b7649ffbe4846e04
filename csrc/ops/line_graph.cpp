// Schema of esmgear_fast::spatial_line_graph (GearNet-Edge's line graph). CPU kernel:
// csrc/cpu/line_graph.cpp; CUDA: csrc/cuda/line_graph.cu; fake kernel and the Python API:
// esmgear_fast/ops/spatial_line_graph.py; reference: esmgear_fast/reference/spatial_line_graph.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(esmgear_fast, m) {
  // For every residue j, every edge a = (k -> j) and every edge b = (j -> i): a line-graph edge
  // a -> b whose type is the angle between pos_i - pos_j and pos_k - pos_j, in [0, pi], cut into
  // num_angle_bin equal bins (pi itself in the last). pos [N, 3], edge_index [2, E] int64.
  // Returns (line_edge_index [2, L], line_edge_type [L]), grouped by j ascending, then a, then b
  // in ascending edge id; L = sum_j in_degree(j) * out_degree(j) is data-dependent.
  m.def("spatial_line_graph(Tensor pos, Tensor edge_index, int num_angle_bin) -> (Tensor, Tensor)");
}
