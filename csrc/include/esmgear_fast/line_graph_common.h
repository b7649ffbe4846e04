// Shared by the CPU and CUDA kernels of esmgear_fast::spatial_line_graph: input validation (ATen
// ops on the op's device, so both backends raise the same errors) and the angle -> bin rule.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace esmgear_fast {

// Validates pos [N, 3] (float32/float64, finite), edge_index [2, E] (int64, in [0, N)) and
// num_angle_bin >= 1. Costs one reduction + sync per check on non-empty inputs.
inline void check_line_graph_inputs(const char* op, const at::Tensor& pos, const at::Tensor& edge_index,
                                    int64_t num_angle_bin) {
  TORCH_CHECK_VALUE(pos.dim() == 2 && pos.size(1) == 3, op, ": pos must have shape [N, 3], got ",
                    pos.sizes());
  TORCH_CHECK_TYPE(pos.scalar_type() == at::kFloat || pos.scalar_type() == at::kDouble, op,
                   ": pos must be float32 or float64, got ", pos.scalar_type());
  TORCH_CHECK_VALUE(edge_index.dim() == 2 && edge_index.size(0) == 2, op,
                    ": edge_index must have shape [2, E], got ", edge_index.sizes());
  TORCH_CHECK_TYPE(edge_index.scalar_type() == at::kLong, op, ": edge_index must be int64, got ",
                   edge_index.scalar_type());
  TORCH_CHECK_VALUE(edge_index.device() == pos.device(), op, ": edge_index is on ", edge_index.device(),
                    " but pos is on ", pos.device());
  TORCH_CHECK_VALUE(num_angle_bin >= 1, op, ": num_angle_bin must be >= 1, got ", num_angle_bin);
  const int64_t n = pos.size(0);
  if (edge_index.size(1) > 0) {
    const int64_t lo = edge_index.min().item<int64_t>();
    const int64_t hi = edge_index.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < n, op, ": edge_index has node indices in [", lo, ", ", hi,
                      "], outside [0, N) with N = ", n);
  }
  if (n > 0) {
    // A NaN coordinate would make atan2 NaN, whose integer conversion is undefined.
    const auto finite = at::isfinite(pos).all(1);
    if (!finite.all().item<bool>()) {
      const int64_t row = (~finite).nonzero().select(1, 0)[0].item<int64_t>();
      TORCH_CHECK_VALUE(false, op, ": pos has a non-finite (NaN or Inf) coordinate at row ", row,
                        " (of ", n, ")");
    }
  }
}

#if defined(__CUDA_ARCH__)
C10_DEVICE inline double lg_sub(double a, double b) { return __dsub_rn(a, b); }
C10_DEVICE inline double lg_mul(double a, double b) { return __dmul_rn(a, b); }
C10_DEVICE inline double lg_add(double a, double b) { return __dadd_rn(a, b); }
C10_DEVICE inline float lg_sub(float a, float b) { return __fsub_rn(a, b); }
C10_DEVICE inline float lg_div(float a, float b) { return __fdiv_rn(a, b); }
C10_DEVICE inline float lg_mul(float a, float b) { return __fmul_rn(a, b); }
C10_DEVICE inline double lg_div(double a, double b) { return __ddiv_rn(a, b); }
#else
// The CPU build uses -ffp-contract=off, so these are single rounded operations.
inline double lg_sub(double a, double b) { return a - b; }
inline double lg_mul(double a, double b) { return a * b; }
inline double lg_add(double a, double b) { return a + b; }
inline float lg_sub(float a, float b) { return a - b; }
inline float lg_div(float a, float b) { return a / b; }
inline float lg_mul(float a, float b) { return a * b; }
inline double lg_div(double a, double b) { return a / b; }
#endif

// Edge vector pos[to] - pos[from], rounded in the input dtype exactly as the reference does
// (`pos[i] - pos[j]`), then widened to double.
template <typename scalar_t>
C10_HOST_DEVICE inline void edge_vector(const scalar_t* pos, int64_t to, int64_t from, double v[3]) {
  for (int a = 0; a < 3; ++a) v[a] = static_cast<double>(lg_sub(pos[3 * to + a], pos[3 * from + a]));
}

// Angle bin of the vectors v1 = p_i - p_j and v2 = p_k - p_j.
//
// The reference computes theta = atan2(|v1 x v2|, v1 . v2) with float32 torch kernels whose
// roundings depend on the machine (FMA in cross, SLEEF atan2); this kernel computes theta in
// double from the same rounded vectors (products of float32 numbers are exact in double) and then
// rounds theta to the input dtype, so it is the correctly rounded value the reference approximates,
// and applies the reference's binning in the input dtype: floor(theta / pi * bins), at most
// bins - 1. Bins can only differ where the reference's own rounding error straddles a bin edge
// (none in 6.1M line edges of 64 real proteins). Sums start from +0 as torch's reductions do, so
// a zero-length vector gives atan2(+0, +0) = 0, bin 0 (never atan2(0, -0) = pi).
template <typename scalar_t>
C10_HOST_DEVICE inline int64_t angle_bin(const double v1[3], const double v2[3], int64_t num_angle_bin) {
  const double c0 = lg_sub(lg_mul(v1[1], v2[2]), lg_mul(v1[2], v2[1]));
  const double c1 = lg_sub(lg_mul(v1[2], v2[0]), lg_mul(v1[0], v2[2]));
  const double c2 = lg_sub(lg_mul(v1[0], v2[1]), lg_mul(v1[1], v2[0]));
  const double y = sqrt(lg_add(lg_add(lg_add(0.0, lg_mul(c0, c0)), lg_mul(c1, c1)), lg_mul(c2, c2)));
  const double x = lg_add(lg_add(lg_add(0.0, lg_mul(v1[0], v2[0])), lg_mul(v1[1], v2[1])), lg_mul(v1[2], v2[2]));
  const scalar_t theta = static_cast<scalar_t>(atan2(y, x));
  const scalar_t pi = static_cast<scalar_t>(3.14159265358979323846);
  const scalar_t scaled = lg_mul(lg_div(theta, pi), static_cast<scalar_t>(num_angle_bin));
  const int64_t bin = static_cast<int64_t>(scaled);  // theta >= 0: truncation is floor
  return bin < num_angle_bin - 1 ? bin : num_angle_bin - 1;
}

}  // namespace esmgear_fast
