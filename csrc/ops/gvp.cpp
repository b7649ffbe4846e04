// esmgear_fast::gvp_conv_message: GVPConv message passing (gvp-pytorch GVPConv, aggr="mean") with
// the first message GVP decomposed over its concatenated input.
//
// The first GVP is linear in [s_j, e_s, s_i] (and in [V_j, e_V, V_i]), so its products are split:
//   W_s [s_j, e_s, s_i, |V_h|] = (W_j s)[j] + (W_i s)[i] + [W_e | W_n] [e_s, |V_h|]
//   W_h [V_j, e_V, V_i]        = (W_hj V)[j] + (W_hi V)[i] + W_he e_V
// The node-side products run on N rows instead of E (E / N is 17-30 on protein radius graphs), which
// removes most of the first GVP's FLOPs and never builds the [E, 2 si + se] concatenation. Vector
// channels are kept xyz-major ([rows, 3, channels]) so each channel mix is one GEMM.
//
// The op is written with ATen ops and registered as CompositeImplicitAutograd: it runs on every
// device (CPU here, CUDA with cuBLAS), autograd differentiates it through the ATen ops and
// torch.compile traces through it. The Python wrapper (esmgear_fast/ops/gvp.py) validates inputs;
// the reference is esmgear_fast/reference/gvp.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

namespace esmgear_fast {
namespace {

// activation codes shared with esmgear_fast/ops/gvp.py
constexpr int64_t kNone = 0, kRelu = 1, kSigmoid = 2, kSilu = 3;
constexpr double kNormEps = 1e-8;  // gvp-pytorch clamps the squared norm at 1e-8
constexpr int64_t kParamsPerGvp = 6;  // wh, ws_weight, ws_bias, wv, wsv_weight, wsv_bias

// Channel sizes come from the weights and are static; guarding them keeps the row counts (N, E)
// symbolic under torch.compile(dynamic=True).
int64_t dim(const at::Tensor& t, int64_t d) { return t.sym_size(d).guard_int(__FILE__, __LINE__); }

at::Tensor activation(const at::Tensor& x, int64_t code) {
  switch (code) {
    case kNone: return x;
    case kRelu: return at::relu(x);
    case kSigmoid: return at::sigmoid(x);
    case kSilu: return at::silu(x);
  }
  TORCH_CHECK(false, "gvp_conv_message: unknown activation code ", code);
}

// Half inputs (on GPU; the CPU path upcasts everything): squares overflow float16 from |x| > 255 and
// 1e-8 is below its range, so norms are taken in float32 and cast back.
at::Tensor clamped_norm(const at::Tensor& v, int64_t dim, bool keepdim) {
  const bool half = v.scalar_type() == at::kHalf || v.scalar_type() == at::kBFloat16;
  const at::Tensor x = half ? v.to(at::kFloat) : v;
  const at::Tensor n = at::sqrt(at::clamp_min(at::sum(x * x, {dim}, keepdim), kNormEps));
  return half ? n.to(v.scalar_type()) : n;
}

struct Gvp {
  c10::optional<at::Tensor> wh, ws_weight, ws_bias, wv, wsv_weight, wsv_bias;
  int64_t scalar_act, vector_act;
  bool vector_gate;
};

// Everything of one GVP after s_pre = W_s [s, |V_h|] + b; vh [rows, 3, h] or undefined (vi == 0).
std::pair<at::Tensor, at::Tensor> finish(const at::Tensor& vh, const at::Tensor& s_pre, const Gvp& w) {
  at::Tensor v_out;
  if (!vh.defined()) {
    if (w.wv.has_value() && dim(*w.wv, 0) > 0) v_out = at::zeros_symint({s_pre.sym_size(0), 3, w.wv->sym_size(0)}, s_pre.options());
  } else if (w.wv.has_value()) {
    v_out = at::matmul(vh, w.wv->t());  // [rows, 3, vo]
    if (w.vector_gate) {
      at::Tensor gate = at::linear(activation(s_pre, w.vector_act), *w.wsv_weight, *w.wsv_bias);
      v_out = v_out * at::sigmoid(gate).unsqueeze(1);
    } else if (w.vector_act != kNone) {
      v_out = v_out * activation(clamped_norm(v_out, 1, true), w.vector_act);
    }
  }
  return {activation(s_pre, w.scalar_act), v_out};
}

std::pair<at::Tensor, at::Tensor> gvp_xyz(const at::Tensor& s, const at::Tensor& v, const Gvp& w) {
  if (!w.wh.has_value()) return finish(at::Tensor(), at::linear(s, *w.ws_weight, *w.ws_bias), w);
  at::Tensor vh = at::matmul(v, w.wh->t());  // [rows, 3, h]
  at::Tensor s_pre = at::linear(at::cat({s, clamped_norm(vh, 1, false)}, 1), *w.ws_weight, *w.ws_bias);
  return finish(vh, s_pre, w);
}

c10::optional<at::Tensor> to_float(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return t->to(at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> gvp_conv_message(
    const at::Tensor& s_in, const c10::optional<at::Tensor>& v_in, const at::Tensor& edge_s_in,
    const c10::optional<at::Tensor>& edge_v_in, const at::Tensor& edge_index,
    const c10::List<c10::optional<at::Tensor>>& params, at::IntArrayRef activations,
    at::IntArrayRef vector_gates, c10::SymInt num_nodes) {
  const int64_t num_gvps = static_cast<int64_t>(vector_gates.size());
  TORCH_CHECK(num_gvps >= 1 && static_cast<int64_t>(params.size()) == kParamsPerGvp * num_gvps &&
                  static_cast<int64_t>(activations.size()) == 2 * num_gvps,
              "gvp_conv_message: expected 6 params and 2 activations per GVP");
  const auto out_dtype = s_in.scalar_type();
  // CPU half GEMMs are slow and round per product: compute in float32 like the reference.
  const bool upcast = s_in.device().is_cpu() && (out_dtype == at::kHalf || out_dtype == at::kBFloat16);
  auto cast = [&](const c10::optional<at::Tensor>& t) { return upcast ? to_float(t) : t; };
  at::Tensor s = upcast ? s_in.to(at::kFloat) : s_in;
  at::Tensor edge_s = upcast ? edge_s_in.to(at::kFloat) : edge_s_in;
  c10::optional<at::Tensor> v = cast(v_in), edge_v = cast(edge_v_in);
  std::vector<Gvp> gvps;
  for (int64_t k = 0; k < num_gvps; ++k) {
    auto p = [&](int64_t field) { return cast(params.get(kParamsPerGvp * k + field)); };
    gvps.push_back(Gvp{p(0), p(1), p(2), p(3), p(4), p(5), activations[2 * k], activations[2 * k + 1],
                       vector_gates[k] != 0});
  }
  const at::Tensor source = edge_index.select(0, 0), target = edge_index.select(0, 1);
  const int64_t si = dim(s, 1), se = dim(edge_s, 1);
  const int64_t vi = v.has_value() ? dim(*v, 1) : 0, ve = edge_v.has_value() ? dim(*edge_v, 1) : 0;
  const Gvp& first = gvps[0];

  // first GVP: node-side products on N rows, gathered per edge
  at::Tensor vh, s_pre, ws_j, ws_i;
  if (first.wh.has_value()) {
    const int64_t h = dim(*first.wh, 0);
    auto wh = first.wh->split_with_sizes({vi, ve, vi}, 1);
    auto ws = first.ws_weight->split_with_sizes({si, se, si, h}, 1);
    ws_j = ws[0];
    ws_i = ws[2];
    if (vi) {
      at::Tensor v_xyz = v->transpose(1, 2);  // [N, 3, vi]
      vh = at::matmul(v_xyz, wh[0].t()).index_select(0, source) + at::matmul(v_xyz, wh[2].t()).index_select(0, target);
    }
    if (ve) {
      at::Tensor edge_vh = at::matmul(edge_v->transpose(1, 2), wh[1].t());  // [E, 3, h]
      vh = vh.defined() ? vh + edge_vh : edge_vh;
    }
    s_pre = at::addmm(*first.ws_bias, at::cat({edge_s, clamped_norm(vh, 1, false)}, 1), at::cat({ws[1], ws[3]}, 1).t());
  } else {
    auto ws = first.ws_weight->split_with_sizes({si, se, si}, 1);
    ws_j = ws[0];
    ws_i = ws[2];
    s_pre = at::linear(edge_s, ws[1], *first.ws_bias);
  }
  s_pre = s_pre + at::linear(s, ws_j).index_select(0, source) + at::linear(s, ws_i).index_select(0, target);
  auto message = finish(vh, s_pre, first);
  for (int64_t k = 1; k < num_gvps; ++k) message = gvp_xyz(message.first, message.second, gvps[k]);
  // the mean is accumulated in float32 for half inputs
  const bool half = message.first.scalar_type() == at::kHalf || message.first.scalar_type() == at::kBFloat16;
  const at::Tensor ms = half ? message.first.to(at::kFloat) : message.first;
  const at::Tensor mv = (half && message.second.defined()) ? message.second.to(at::kFloat) : message.second;

  // mean at the targets; nodes without incoming edges keep zeros
  at::Tensor count = at::zeros_symint({num_nodes}, ms.options())
                         .index_add_(0, target, at::ones_symint({target.sym_numel()}, ms.options()))
                         .clamp_min_(1);
  at::Tensor inv = count.reciprocal().unsqueeze(1);
  at::Tensor out_s = at::zeros_symint({num_nodes, ms.sym_size(1)}, ms.options()).index_add(0, target, ms) * inv;
  at::Tensor out_v;
  if (mv.defined()) {
    const int64_t vo = dim(mv, 2);
    out_v = (at::zeros_symint({num_nodes, 3 * vo}, mv.options()).index_add(0, target, mv.reshape({-1, 3 * vo})) * inv)
                .view_symint({num_nodes, 3, vo})
                .transpose(1, 2)
                .contiguous();
  } else {
    out_v = at::zeros_symint({num_nodes, 0, 3}, ms.options());
  }
  return {out_s.to(out_dtype), out_v.to(out_dtype)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(esmgear_fast, m) {
  // GVPConv mean-aggregated messages. s [N, si], v [N, vi, 3] or None, edge_s [E, se], edge_v [E, ve, 3]
  // or None, edge_index [2, E] int64 (row 0 source j, row 1 target i). params: 6 per GVP (wh,
  // ws_weight, ws_bias, wv, wsv_weight, wsv_bias; see esmgear_fast.reference.gvp.GVPWeights),
  // activations: 2 per GVP (scalar, vector; 0 none, 1 relu, 2 sigmoid, 3 silu), vector_gates: 0/1 per GVP. Returns
  // (s_out [N, so], v_out [N, vo, 3], [N, 0, 3] when vo == 0).
  m.def("gvp_conv_message(Tensor s, Tensor? v, Tensor edge_s, Tensor? edge_v, Tensor edge_index, "
        "Tensor?[] params, int[] activations, int[] vector_gates, SymInt num_nodes) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(esmgear_fast, CompositeImplicitAutograd, m) {
  m.impl("gvp_conv_message", &gvp_conv_message);
}

}  // namespace esmgear_fast
