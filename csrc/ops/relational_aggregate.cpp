// Schemas of the relational aggregation ops (GearNet message passing). CPU kernels:
// csrc/cpu/relational_aggregate.cpp; fake kernels, autograd and the Python API:
// esmgear_fast/ops/relational_aggregate.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(esmgear_fast, m) {
  // out[i, r*D + d] = sum over edges e = (j -> i) with edge_type[e] == r of w[e] * x[j, d];
  // edge_index [2, E] (row 0 source j, row 1 target i), edge_type [E] in [0, num_relation),
  // edge_weight [E] or None (all ones). Output [N, num_relation * D]; no normalisation.
  m.def("relational_aggregate(Tensor x, Tensor edge_index, Tensor edge_type, int num_relation, Tensor? edge_weight) -> Tensor");
  // Gradients of relational_aggregate: (grad_x [N, D] or [0], grad_edge_weight [E] or [0]); an output
  // that is not asked for is returned empty.
  m.def("relational_aggregate_backward(Tensor grad_out, Tensor x, Tensor edge_index, Tensor edge_type, int num_relation, Tensor? edge_weight, bool need_grad_x, bool need_grad_weight) -> (Tensor, Tensor)");
}
