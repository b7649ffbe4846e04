// CPU kernels of the CSR relational primitives (esmgear_fast::relational_csr_spmm, _sddmm,
// relational_linear and relational_linear_grad_weight; schemas in csrc/ops/relational_csr.cpp).
//
// The CSR structure (rows = (target, relation) pairs, edges sorted stably by row) is built once
// per graph in Python (esmgear_fast.ops.relational_csr), so unlike relational_aggregate these
// kernels do no bucketing. Every output row is owned by one thread (no atomics, deterministic:
// edges are summed in their CSR order). Half-precision inputs accumulate in float32.
//
// relational_linear is the fused GearNet layer product aggregate(x) @ w_t: target rows are
// processed in tiles; each tile's [tile, R*D] aggregate is gathered into a thread-local buffer
// small enough to stay in cache and multiplied into the output at once, so the [N, R*D]
// aggregate is never held in memory. Its weight gradient recomputes the tiles the same way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "esmgear_fast/relational_csr.h"

namespace esmgear_fast {
namespace {

constexpr int64_t kGrainRows = 64;

// rowptr must start at 0, end at nnz and never decrease; every col must index a row of x.
void check_structure(const char* op, const at::Tensor& rowptr, const at::Tensor& col, int64_t num_src) {
  const int64_t rows = rowptr.size(0) - 1, nnz = col.size(0);
  const int64_t* rp = rowptr.data_ptr<int64_t>();
  const int64_t* c = col.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(rp[0] == 0 && rp[rows] == nnz, op, ": rowptr must start at 0 and end at nnz = ", nnz,
                    ", got ", rp[0], " and ", rp[rows]);
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_VALUE(rp[r] <= rp[r + 1], op, ": rowptr decreases at row ", r);
  for (int64_t k = 0; k < nnz; ++k)
    TORCH_CHECK_VALUE(c[k] >= 0 && c[k] < num_src, op, ": col[", k, "] = ", c[k], " is outside [0, ", num_src, ")");
}

// acc[0:dim] = sum over k in row's segment of w[k] * x[col[k], 0:dim], summed in segment order.
template <typename scalar_t, typename acc_t>
inline void gather_row(const scalar_t* x, int64_t dim, const int64_t* rp, const int64_t* col, const scalar_t* w,
                       int64_t row, acc_t* acc) {
  std::fill(acc, acc + dim, acc_t(0));
  for (int64_t k = rp[row]; k < rp[row + 1]; ++k) {
    const scalar_t* __restrict__ v = x + col[k] * dim;
    if (w == nullptr) {
      for (int64_t d = 0; d < dim; ++d) acc[d] += static_cast<acc_t>(v[d]);
    } else {
      const acc_t we = static_cast<acc_t>(w[k]);
      for (int64_t d = 0; d < dim; ++d) acc[d] += we * static_cast<acc_t>(v[d]);
    }
  }
}

at::Tensor spmm_cpu(const at::Tensor& x_in, const at::Tensor& rowptr_in, const at::Tensor& col_in,
                    const c10::optional<at::Tensor>& weight) {
  const char* op = "relational_csr_spmm";
  TORCH_CHECK(x_in.device().is_cpu(), op, ": CPU kernel called with x on ", x_in.device());
  check_csr(op, x_in, rowptr_in, col_in, weight);
  const at::Tensor x = x_in.contiguous(), rowptr = rowptr_in.contiguous(), col = col_in.contiguous();
  check_structure(op, rowptr, col, x.size(0));
  const int64_t rows = rowptr.size(0) - 1, dim = x.size(1);
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  at::Tensor out = at::empty({rows, dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relational_csr_spmm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool kDirect = std::is_same<acc_t, scalar_t>::value;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const int64_t* rp = rowptr.data_ptr<int64_t>();
    const int64_t* cp = col.data_ptr<int64_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kGrainRows, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buffer(kDirect ? 0 : dim);
      for (int64_t row = begin; row < end; ++row) {
        scalar_t* o = op_ + row * dim;
        acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(o) : buffer.data();
        gather_row<scalar_t, acc_t>(xp, dim, rp, cp, wp, row, acc);
        if (!kDirect)
          for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<scalar_t>(acc[d]);
      }
    });
  });
  return out;
}

at::Tensor sddmm_cpu(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& row_in,
                     const at::Tensor& col_in) {
  const char* op = "relational_csr_sddmm";
  TORCH_CHECK(a_in.device().is_cpu() && b_in.device().is_cpu() && row_in.device().is_cpu() &&
                  col_in.device().is_cpu(), op, ": CPU kernel called with tensors not on the CPU");
  TORCH_CHECK_VALUE(a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(1) == b_in.size(1), op,
                    ": a and b must have shapes [Ra, D] and [Rb, D], got ", a_in.sizes(), " and ", b_in.sizes());
  TORCH_CHECK_TYPE(a_in.is_floating_point() && a_in.scalar_type() == b_in.scalar_type(), op,
                   ": a and b must share one floating dtype, got ", a_in.scalar_type(), " and ", b_in.scalar_type());
  TORCH_CHECK_VALUE(row_in.dim() == 1 && col_in.dim() == 1 && row_in.size(0) == col_in.size(0), op,
                    ": row and col must have shape [nnz], got ", row_in.sizes(), " and ", col_in.sizes());
  TORCH_CHECK_TYPE(row_in.scalar_type() == at::kLong && col_in.scalar_type() == at::kLong, op,
                   ": row and col must be int64");
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous(), row = row_in.contiguous(), col = col_in.contiguous();
  const int64_t nnz = row.size(0), dim = a.size(1), ra = a.size(0), rb = b.size(0);
  const int64_t* rp = row.data_ptr<int64_t>();
  const int64_t* cp = col.data_ptr<int64_t>();
  for (int64_t k = 0; k < nnz; ++k) {
    TORCH_CHECK_VALUE(rp[k] >= 0 && rp[k] < ra, op, ": row[", k, "] = ", rp[k], " is outside [0, ", ra, ")");
    TORCH_CHECK_VALUE(cp[k] >= 0 && cp[k] < rb, op, ": col[", k, "] = ", cp[k], " is outside [0, ", rb, ")");
  }
  at::Tensor out = at::empty({nnz}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "relational_csr_sddmm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, nnz, 256, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const scalar_t* u = ap + rp[k] * dim;
        const scalar_t* v = bp + cp[k] * dim;
        acc_t s = 0;
        for (int64_t d = 0; d < dim; ++d) s += static_cast<acc_t>(u[d]) * static_cast<acc_t>(v[d]);
        o[k] = static_cast<scalar_t>(s);
      }
    });
  });
  return out;
}

// Rows of target nodes per tile: the [tile, R*D] float buffer is kept near 4 MiB (L2/L3 resident),
// with at least 16 rows so that each tile's GEMM is not too thin.
int64_t tile_rows(int64_t width) {
  return std::max<int64_t>(16, std::min<int64_t>(256, (int64_t(1) << 20) / std::max<int64_t>(width, 1)));
}

void check_linear(const char* op, const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                  const c10::optional<at::Tensor>& weight, int64_t num_relation) {
  TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel called with x on ", x.device());
  check_csr(op, x, rowptr, col, weight);
  TORCH_CHECK_VALUE(num_relation >= 1, op, ": num_relation must be >= 1, got ", num_relation);
  TORCH_CHECK_VALUE(rowptr.size(0) - 1 == x.size(0) * num_relation, op, ": rowptr must have N * R + 1 = ",
                    x.size(0) * num_relation + 1, " entries, got ", rowptr.size(0));
}

// Gathers the aggregate of target rows [i0, i0 + t) into buf [t, R*D] (float accumulation type).
template <typename scalar_t, typename acc_t>
void gather_tile(const scalar_t* xp, int64_t dim, int64_t num_relation, const int64_t* rp, const int64_t* cp,
                 const scalar_t* wp, int64_t i0, int64_t t, acc_t* buf) {
  const int64_t width = num_relation * dim;
  for (int64_t i = 0; i < t; ++i)
    for (int64_t r = 0; r < num_relation; ++r)
      gather_row<scalar_t, acc_t>(xp, dim, rp, cp, wp, (i0 + i) * num_relation + r, buf + i * width + r * dim);
}

at::Tensor linear_cpu(const at::Tensor& x_in, const at::Tensor& rowptr_in, const at::Tensor& col_in,
                      const c10::optional<at::Tensor>& weight, int64_t num_relation, const at::Tensor& w_t_in) {
  const char* op = "relational_linear";
  check_linear(op, x_in, rowptr_in, col_in, weight, num_relation);
  const int64_t n = x_in.size(0), dim = x_in.size(1), width = num_relation * dim;
  TORCH_CHECK_VALUE(w_t_in.dim() == 2 && w_t_in.size(0) == width, op, ": w_t must have shape [R*D = ", width,
                    ", D'], got ", w_t_in.sizes());
  TORCH_CHECK_TYPE(w_t_in.scalar_type() == x_in.scalar_type(), op, ": w_t dtype ", w_t_in.scalar_type(),
                   " differs from x dtype ", x_in.scalar_type());
  TORCH_CHECK(w_t_in.device().is_cpu(), op, ": w_t is on ", w_t_in.device());
  const at::Tensor x = x_in.contiguous(), rowptr = rowptr_in.contiguous(), col = col_in.contiguous();
  check_structure(op, rowptr, col, n);
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int64_t out_dim = w_t_in.size(1);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relational_linear_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor w_t = w_t_in.detach().to(acc_opts.dtype());  // strided (e.g. weight.t()) is fine for mm
    at::Tensor out_acc = at::empty({n, out_dim}, acc_opts);
    const int64_t tile = tile_rows(width), num_tiles = (n + tile - 1) / tile;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const int64_t* rp = rowptr.data_ptr<int64_t>();
    const int64_t* cp = col.data_ptr<int64_t>();
    // One tile per task; each thread's GEMM runs single-threaded inside the parallel region.
    at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
      // Worker threads do not inherit the caller's dispatch state: keep the GEMMs below autograd.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor buf = at::empty({tile, width}, acc_opts);
      for (int64_t tix = begin; tix < end; ++tix) {
        const int64_t i0 = tix * tile, t = std::min(tile, n - i0);
        gather_tile<scalar_t, acc_t>(xp, dim, num_relation, rp, cp, wp, i0, t, buf.data_ptr<acc_t>());
        at::Tensor dst = out_acc.narrow(0, i0, t);
        at::mm_out(dst, buf.narrow(0, 0, t), w_t);
      }
    });
    out = out_acc.to(x.scalar_type());
  });
  return out;
}

at::Tensor linear_grad_weight_cpu(const at::Tensor& x_in, const at::Tensor& rowptr_in, const at::Tensor& col_in,
                                  const c10::optional<at::Tensor>& weight, int64_t num_relation,
                                  const at::Tensor& grad_in) {
  const char* op = "relational_linear_grad_weight";
  check_linear(op, x_in, rowptr_in, col_in, weight, num_relation);
  const int64_t n = x_in.size(0), dim = x_in.size(1), width = num_relation * dim;
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == n, op, ": grad_out must have shape [N = ", n,
                    ", D'], got ", grad_in.sizes());
  TORCH_CHECK_TYPE(grad_in.scalar_type() == x_in.scalar_type(), op, ": grad_out dtype ", grad_in.scalar_type(),
                   " differs from x dtype ", x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), rowptr = rowptr_in.contiguous(), col = col_in.contiguous();
  check_structure(op, rowptr, col, n);
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int64_t out_dim = grad_in.size(1);
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relational_linear_grad_weight_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor grad = grad_in.detach().to(acc_opts.dtype()).contiguous();
    const int64_t tile = tile_rows(width), num_tiles = (n + tile - 1) / tile;
    // Contiguous runs of tiles, one partial [R*D, D'] sum per run, added up at the end: the
    // summation order depends only on the thread count, never on scheduling.
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(num_tiles, at::get_num_threads()));
    at::Tensor partial = at::zeros({chunks, width, out_dim}, acc_opts);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const int64_t* rp = rowptr.data_ptr<int64_t>();
    const int64_t* cp = col.data_ptr<int64_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor buf = at::empty({tile, width}, acc_opts);
      for (int64_t c = begin; c < end; ++c) {
        at::Tensor acc = partial.select(0, c);
        for (int64_t tix = c * num_tiles / chunks; tix < (c + 1) * num_tiles / chunks; ++tix) {
          const int64_t i0 = tix * tile, t = std::min(tile, n - i0);
          gather_tile<scalar_t, acc_t>(xp, dim, num_relation, rp, cp, wp, i0, t, buf.data_ptr<acc_t>());
          acc.addmm_(buf.narrow(0, 0, t).t(), grad.narrow(0, i0, t));
        }
      }
    });
    result = partial.sum(0).to(x.scalar_type());
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CPU, m) {
  m.impl("relational_csr_spmm", &spmm_cpu);
  m.impl("relational_csr_sddmm", &sddmm_cpu);
  m.impl("relational_linear", &linear_cpu);
  m.impl("relational_linear_grad_weight", &linear_grad_weight_cpu);
}

}  // namespace esmgear_fast
