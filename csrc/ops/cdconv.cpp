// Schemas of the fused CDConv aggregation ops. CPU kernels: csrc/cpu/cdconv.cpp; fake kernels,
// autograd and the Python API: esmgear_fast/ops/cdconv.py (reference: esmgear_fast/reference/cdconv.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(esmgear_fast, m) {
  // Edges sorted by target: the edges into target i are rowptr[i] .. rowptr[i+1]-1, with source
  // node source[e] and (already smoothed) kernel weights kernel_weight[e] ([E, K], float32/float64,
  // the compute dtype). agg[i, k*C + c] = sum_e kernel_weight[e, k] * x[source[e], c];
  // returns agg @ weight ([N, C_out]) or agg ([N, K*C]) when weight is None, in x's dtype.
  // Nothing of size [E, K*C] is materialised.
  m.def("cdconv_aggregate(Tensor x, Tensor kernel_weight, Tensor rowptr, Tensor source, Tensor? weight) -> Tensor");
  // Gradients (grad_x [N, C], grad_kernel_weight [E, K], grad_weight [K*C, C_out]); an output that is
  // not asked for is returned empty.
  m.def("cdconv_aggregate_backward(Tensor grad_out, Tensor x, Tensor kernel_weight, Tensor rowptr, Tensor source, Tensor? weight, bool need_grad_x, bool need_grad_kernel_weight, bool need_grad_weight) -> (Tensor, Tensor, Tensor)");
}
