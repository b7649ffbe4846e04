// CPU kernels of esmgear_fast::cdconv_aggregate and its backward (the fused CDConv aggregation).
//
// Forward, per tile of consecutive targets (tile chosen so the [tile, K*C] buffer stays ~16 MB):
//   acc_i [K, C] = kernel_weight[edges into i]^T [K, deg] @ x[sources of i] [deg, C]   (parallel over i)
//   out[tile] = acc[tile] [tile, K*C] @ weight [K*C, C_out]                            (one GEMM)
// so the per-edge [E, K*C] messages of the reference never exist; peak extra memory is the tile
// buffer plus one gathered [deg, C] block per thread.
// Backward, per tile (nothing of size [N, K*C] is stored; acc is recomputed):
//   G[tile] = grad_out[tile] @ weight^T                       ([tile, K*C]; grad_out itself without weight)
//   grad_weight += acc[tile]^T @ grad_out[tile]
//   grad_kernel_weight[edges into i] = x[sources of i] @ G_i^T   ([deg, K], parallel over targets)
//   grad_x[j] += sum over edges j -> i, i in tile, of kernel_weight[e] @ G_i   (parallel over sources j)
// The grad_x pass walks a source-sorted copy of the edge list (counting sort, stable, so each
// source's edges stay in increasing target order) with a per-source cursor: every grad_x row is
// written by one thread and summed in a fixed order, so the result does not depend on the number
// of threads (no atomics). Half precision: the Python wrapper passes float32 kernel weights and this
// file computes in float32 (float64 for float64 inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace esmgear_fast {
namespace {

constexpr int64_t kTileElements = int64_t(1) << 22;

at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& kernel_weight,
                  const at::Tensor& rowptr, const at::Tensor& source,
                  const c10::optional<at::Tensor>& weight) {
  TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel called with x on ", x.device());
  TORCH_CHECK(x.dim() == 2 && at::isFloatingType(x.scalar_type()), op,
              ": x must be a floating point [N, C] tensor, got ", x.sizes(), " ", x.scalar_type());
  const int64_t n = x.size(0);
  TORCH_CHECK(kernel_weight.dim() == 2, op, ": kernel_weight must be [E, K], got ", kernel_weight.sizes());
  TORCH_CHECK(kernel_weight.scalar_type() == compute_type(x.scalar_type()), op,
              ": kernel_weight must be ", compute_type(x.scalar_type()), " (the compute dtype of x ",
              x.scalar_type(), "), got ", kernel_weight.scalar_type());
  const int64_t e = kernel_weight.size(0);
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.numel() == n + 1 && rowptr.scalar_type() == at::kLong, op,
              ": rowptr must be an int64 [N + 1] = [", n + 1, "] tensor, got ", rowptr.sizes(), " ",
              rowptr.scalar_type());
  TORCH_CHECK(source.dim() == 1 && source.numel() == e && source.scalar_type() == at::kLong, op,
              ": source must be an int64 [E] = [", e, "] tensor, got ", source.sizes(), " ",
              source.scalar_type());
  TORCH_CHECK(kernel_weight.device() == x.device() && rowptr.device() == x.device() &&
                  source.device() == x.device(), op, ": all inputs must be on ", x.device());
  if (weight.has_value()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK(w.device() == x.device(), op, ": weight is on ", w.device(), " but x is on ", x.device());
    TORCH_CHECK(w.dim() == 2 && w.size(0) == kernel_weight.size(1) * x.size(1) &&
                    at::isFloatingType(w.scalar_type()), op,
                ": weight must be a floating point [K*C, C_out] = [", kernel_weight.size(1) * x.size(1),
                ", C_out] tensor, got ", w.sizes());
  }
  const at::Tensor rp = rowptr.contiguous();
  const int64_t* r = rp.data_ptr<int64_t>();
  TORCH_CHECK(r[0] == 0 && r[n] == e, op, ": rowptr must start at 0 and end at E = ", e);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(r[i] <= r[i + 1], op, ": rowptr must be non-decreasing (row ", i, ")");
  }
  const at::Tensor src = source.contiguous();
  const int64_t* s = src.data_ptr<int64_t>();
  for (int64_t k = 0; k < e; ++k) {
    TORCH_CHECK(s[k] >= 0 && s[k] < n, op, ": source[", k, "] = ", s[k], " is outside [0, ", n, ")");
  }
}

int64_t tile_rows(int64_t n, int64_t kc) {
  return std::max<int64_t>(1, std::min<int64_t>(n, kTileElements / std::max<int64_t>(1, kc)));
}

// acc[t] (a [K*C] row) = kernel_weight[edges of target t0 + t]^T @ x[their sources]; also, when
// grad_rows is defined, grad_kernel_weight[edges of target] = x[sources] @ grad_rows[t]^T.
void per_target_gemms(const at::Tensor& xc, const at::Tensor& kw, const at::Tensor& source,
                      const int64_t* rowptr, int64_t t0, int64_t t1, int64_t K, int64_t C,
                      at::Tensor* acc, const at::Tensor* grad_rows, at::Tensor* grad_kw) {
  at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t beg = rowptr[i], stop = rowptr[i + 1];
      if (beg == stop) {
        if (acc != nullptr) acc->select(0, i - t0).zero_();
        continue;
      }
      const at::Tensor gathered = xc.index_select(0, source.slice(0, beg, stop));  // [deg, C]
      if (acc != nullptr) {
        at::Tensor acc_i = acc->select(0, i - t0).view({K, C});
        at::mm_out(acc_i, kw.slice(0, beg, stop).t(), gathered);
      }
      if (grad_kw != nullptr) {
        at::Tensor out = grad_kw->slice(0, beg, stop);
        at::mm_out(out, gathered, grad_rows->select(0, i - t0).view({K, C}).t());
      }
    }
  });
}

at::Tensor cdconv_aggregate_cpu(const at::Tensor& x, const at::Tensor& kernel_weight,
                                const at::Tensor& rowptr, const at::Tensor& source,
                                const c10::optional<at::Tensor>& weight) {
  check_inputs("cdconv_aggregate", x, kernel_weight, rowptr, source, weight);
  // Below autograd: the ATen calls here are the implementation, not something to differentiate
  // (inputs are detached too, because worker threads of parallel_for do not inherit the guard).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = kernel_weight.scalar_type();
  const int64_t N = x.size(0), C = x.size(1), K = kernel_weight.size(1), KC = K * C;
  const at::Tensor xc = x.detach().to(ct).contiguous();
  const at::Tensor kw = kernel_weight.detach().contiguous();
  const at::Tensor src = source.contiguous();
  const at::Tensor rp = rowptr.contiguous();
  const int64_t* r = rp.data_ptr<int64_t>();
  if (!weight.has_value()) {
    at::Tensor out = at::empty({N, KC}, x.options().dtype(ct));
    const int64_t tile = tile_rows(N, KC);
    for (int64_t t0 = 0; t0 < N; t0 += tile) {
      const int64_t t1 = std::min(N, t0 + tile);
      at::Tensor rows = out.slice(0, t0, t1);
      per_target_gemms(xc, kw, src, r, t0, t1, K, C, &rows, nullptr, nullptr);
    }
    return out.to(x.scalar_type());
  }
  const at::Tensor w = weight->detach().to(ct).contiguous();
  at::Tensor out = at::empty({N, w.size(1)}, x.options().dtype(ct));
  const int64_t tile = tile_rows(N, KC);
  at::Tensor acc = at::empty({tile, KC}, x.options().dtype(ct));
  for (int64_t t0 = 0; t0 < N; t0 += tile) {
    const int64_t t1 = std::min(N, t0 + tile);
    at::Tensor rows = acc.slice(0, 0, t1 - t0);
    per_target_gemms(xc, kw, src, r, t0, t1, K, C, &rows, nullptr, nullptr);
    at::Tensor out_rows = out.slice(0, t0, t1);
    at::mm_out(out_rows, rows, w);
  }
  return out.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cdconv_aggregate_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& kernel_weight,
    const at::Tensor& rowptr, const at::Tensor& source, const c10::optional<at::Tensor>& weight,
    bool need_grad_x, bool need_grad_kernel_weight, bool need_grad_weight) {
  const char* op = "cdconv_aggregate_backward";
  check_inputs(op, x, kernel_weight, rowptr, source, weight);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto ct = kernel_weight.scalar_type();
  const int64_t N = x.size(0), C = x.size(1), E = kernel_weight.size(0), K = kernel_weight.size(1);
  const int64_t KC = K * C;
  const bool has_w = weight.has_value();
  need_grad_weight = need_grad_weight && has_w;
  const int64_t out_dim = has_w ? weight->size(1) : KC;
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == N && grad_out.size(1) == out_dim, op,
              ": grad_out must be [", N, ", ", out_dim, "], got ", grad_out.sizes());
  const at::Tensor go = grad_out.detach().to(ct).contiguous();
  const at::Tensor xc = x.detach().to(ct).contiguous();
  const at::Tensor kw = kernel_weight.detach().contiguous();
  const at::Tensor src = source.contiguous();
  const at::Tensor rp = rowptr.contiguous();
  const int64_t* r = rp.data_ptr<int64_t>();
  const at::Tensor w = has_w ? weight->detach().to(ct).contiguous() : at::Tensor();
  const auto opts = x.options().dtype(ct);

  // Output dtypes: grad_x in x's dtype, grad_kernel_weight in the compute dtype, grad_weight in
  // weight's dtype (the compute dtype without weight), also when empty (the fake kernel agrees).
  const auto w_dtype = has_w ? weight->scalar_type() : ct;
  at::Tensor grad_x = need_grad_x ? at::zeros({N, C}, opts) : at::empty({0, C}, x.options());
  at::Tensor grad_kw = need_grad_kernel_weight ? at::empty({E, K}, opts) : at::empty({0, K}, opts);
  at::Tensor grad_w = need_grad_weight ? (N > 0 ? at::empty({KC, out_dim}, opts) : at::zeros({KC, out_dim}, opts))
                                       : at::empty({0, out_dim}, opts.dtype(w_dtype));

  // Source-sorted edge order for the grad_x pass (stable counting sort keeps targets ascending).
  std::vector<int64_t> src_ptr, src_order, edge_target, cursor;
  if (need_grad_x) {
    const int64_t* s = src.data_ptr<int64_t>();
    src_ptr.assign(N + 1, 0);
    for (int64_t e = 0; e < E; ++e) ++src_ptr[s[e] + 1];
    for (int64_t j = 0; j < N; ++j) src_ptr[j + 1] += src_ptr[j];
    cursor.assign(src_ptr.begin(), src_ptr.end() - 1);
    src_order.resize(E);
    std::vector<int64_t> fill(cursor);
    for (int64_t e = 0; e < E; ++e) src_order[fill[s[e]]++] = e;
    edge_target.resize(E);
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t e = r[i]; e < r[i + 1]; ++e) edge_target[e] = i;
    }
  }

  const int64_t tile = tile_rows(N, KC);
  at::Tensor acc = need_grad_weight ? at::empty({tile, KC}, opts) : at::Tensor();
  at::Tensor g_buf = has_w ? at::empty({tile, KC}, opts) : at::Tensor();
  for (int64_t t0 = 0; t0 < N; t0 += tile) {
    const int64_t t1 = std::min(N, t0 + tile);
    const at::Tensor go_rows = go.slice(0, t0, t1);
    at::Tensor g_rows;
    if (has_w) {
      g_rows = g_buf.slice(0, 0, t1 - t0);
      at::mm_out(g_rows, go_rows, w.t());
    } else {
      g_rows = go_rows;
    }
    if (need_grad_weight || need_grad_kernel_weight) {
      at::Tensor acc_rows = need_grad_weight ? acc.slice(0, 0, t1 - t0) : at::Tensor();
      per_target_gemms(xc, kw, src, r, t0, t1, K, C, need_grad_weight ? &acc_rows : nullptr, &g_rows,
                       need_grad_kernel_weight ? &grad_kw : nullptr);
      if (need_grad_weight) {
        // the first tile writes grad_weight directly (no zero fill, no beta = 1 pass over it)
        if (t0 == 0) {
          at::mm_out(grad_w, acc_rows.t(), go_rows);
        } else {
          grad_w.addmm_(acc_rows.t(), go_rows);
        }
      }
    }
    if (need_grad_x) {
      AT_DISPATCH_FLOATING_TYPES(ct, "cdconv_aggregate_backward_x", [&] {
        const scalar_t* g = g_rows.data_ptr<scalar_t>();
        const scalar_t* a = kw.data_ptr<scalar_t>();
        scalar_t* gx = grad_x.data_ptr<scalar_t>();
        at::parallel_for(0, N, 16, [&](int64_t j0, int64_t j1) {
          for (int64_t j = j0; j < j1; ++j) {
            int64_t p = cursor[j];
            const int64_t stop = src_ptr[j + 1];
            scalar_t* gx_j = gx + j * C;
            for (; p < stop; ++p) {
              const int64_t e = src_order[p];
              const int64_t i = edge_target[e];
              if (i >= t1) break;
              const scalar_t* g_i = g + (i - t0) * KC;
              const scalar_t* a_e = a + e * K;
              for (int64_t k = 0; k < K; ++k) {
                const scalar_t a_ek = a_e[k];
                const scalar_t* g_ik = g_i + k * C;
                for (int64_t c = 0; c < C; ++c) gx_j[c] += a_ek * g_ik[c];
              }
            }
            cursor[j] = p;
          }
        });
      });
    }
  }
  if (need_grad_x) grad_x = grad_x.to(x.scalar_type());
  if (need_grad_weight) grad_w = grad_w.to(weight->scalar_type());
  return {grad_x, grad_kw, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CPU, m) {
  m.impl("cdconv_aggregate", &cdconv_aggregate_cpu);
  m.impl("cdconv_aggregate_backward", &cdconv_aggregate_backward_cpu);
}

}  // namespace esmgear_fast
