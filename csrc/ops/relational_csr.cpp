// Schemas of the CSR-based relational message-passing primitives (GearNet). The CSR structure is
// built once per graph by esmgear_fast.ops.relational_csr; CPU kernels: csrc/cpu/relational_csr.cpp,
// Triton kernels: kernels/relational_csr_spmm.py + kernels/relational_linear.py; fake kernels,
// autograd and the Python API: esmgear_fast/ops/relational_csr.py and relational_linear.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(esmgear_fast, m) {
  // out[row, :] = sum over k in [rowptr[row], rowptr[row+1]) of weight[k] * x[col[k], :]
  // rowptr [rows + 1] int64 (non-decreasing, rowptr[0] == 0), col [nnz] int64 in [0, x.size(0)),
  // weight [nnz] of x's dtype or None (all ones). Output [rows, D]. Half types accumulate in float32.
  m.def("relational_csr_spmm(Tensor x, Tensor rowptr, Tensor col, Tensor? weight) -> Tensor");
  // out[k] = sum_d a[row[k], d] * b[col[k], d] (the per-edge gradient of spmm's weights), [nnz].
  m.def("relational_csr_sddmm(Tensor a, Tensor b, Tensor row, Tensor col) -> Tensor");
  // Fused aggregate-then-linear: out [N, D'] = A @ w_t where A [N, R*D] is spmm(x, rowptr, col,
  // weight) viewed [N, R*D] (rowptr over the N*R (target, relation) rows) and w_t [R*D, D'].
  // A is never materialised whole: it is built and consumed tile by tile of target rows.
  m.def("relational_linear(Tensor x, Tensor rowptr, Tensor col, Tensor? weight, int num_relation, Tensor w_t) -> Tensor");
  // A^T @ grad_out [R*D, D'] with A recomputed tile by tile (the gradient of relational_linear's w_t).
  m.def("relational_linear_grad_weight(Tensor x, Tensor rowptr, Tensor col, Tensor? weight, int num_relation, Tensor grad_out) -> Tensor");
}
