// CUDA kernels of esmgear_fast::radius_graph and esmgear_fast::knn_graph.
//
// One warp per target node scans the sources of the target's own protein, 32 at a time (lane l
// takes source base + l). Two launches:
//   count: how many sources qualify (d2 < r2 for radius; every other node for kNN, known without
//          a scan), hence how many edges the target keeps. An exclusive scan of these counts gives
//          every target its slice of the output, so no atomics decide edge order.
//   fill:  writes the kept sources in ascending index order. When more sources qualify than the
//          cap allows, a radix select over the bit patterns of d2 first finds the cap-th smallest
//          d2 (the cutoff) and how many sources at exactly that distance still fit; those are the
//          lowest-indexed ones, which is the reference's (d2, source) order.
// Squared distances use round-to-nearest intrinsics, so nvcc cannot fuse them into FMAs: they are
// (dx*dx + dy*dy) + dz*dz with d = pos[source] - pos[target], bit for bit as in the reference.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "esmgear_fast/graph_common.h"

namespace esmgear_fast {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarpSize * kWarpsPerBlock;
// Grid-stride loops cover any node count; this only bounds the launch.
constexpr int64_t kMaxBlocks = int64_t(1) << 22;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kBinsPerLane = kRadixBins / kWarpSize;

__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// d2 is a sum of squares, so it is +0 or positive (never -0 or NaN for finite inputs; +inf on
// overflow), and such floats order exactly like their bit patterns read as unsigned integers.
__device__ __forceinline__ uint32_t radix_key(float d2) { return __float_as_uint(d2); }
__device__ __forceinline__ unsigned long long radix_key(double d2) {
  return static_cast<unsigned long long>(__double_as_longlong(d2));
}
template <typename scalar_t>
using RadixKey = decltype(radix_key(scalar_t{}));

__device__ __forceinline__ int lane_id() { return threadIdx.x % kWarpSize; }
// Bits of the lanes below this one: a lane's rank among the set lanes of a ballot.
__device__ __forceinline__ unsigned lanes_below() { return (1u << lane_id()) - 1u; }

// Which sources qualify for a target, besides the self pair (governed by `loop`).
template <typename scalar_t>
struct WithinRadius {
  static constexpr bool kEverySource = false;
  scalar_t r2;
  __device__ bool operator()(scalar_t d2) const { return d2 < r2; }
};
template <typename scalar_t>
struct AnySource {
  static constexpr bool kEverySource = true;
  __device__ bool operator()(scalar_t) const { return true; }
};

// A target node and the node range [start, end) of its protein.
struct Target {
  int64_t i, start, end;
};

__device__ __forceinline__ Target target_of(int64_t i, const int64_t* batch, const int64_t* ptr) {
  const int64_t b = batch != nullptr ? batch[i] : 0;
  return {i, ptr[b], ptr[b + 1]};
}

// Calls body(j, ok, d2) for every source j of the target's protein, lane l taking j = base + l; ok
// says whether j qualifies. All 32 lanes make every call (lanes past the protein end with
// ok = false), so body may use full-mask warp collectives. body returns true, identically on all
// lanes, to stop early. The only scan of sources; count, radix select and fill all go through it.
template <typename scalar_t, typename Pred, typename Body>
__device__ __forceinline__ void scan_sources(const scalar_t* __restrict__ pos, const Target& t,
                                             bool loop, const Pred& pred, Body&& body) {
  const scalar_t xi = pos[3 * t.i], yi = pos[3 * t.i + 1], zi = pos[3 * t.i + 2];
  for (int64_t base = t.start; base < t.end; base += kWarpSize) {
    const int64_t j = base + lane_id();
    bool ok = false;
    scalar_t d2 = 0;
    if (j < t.end) {
      const scalar_t dx = sub_rn(pos[3 * j], xi);
      const scalar_t dy = sub_rn(pos[3 * j + 1], yi);
      const scalar_t dz = sub_rn(pos[3 * j + 2], zi);
      d2 = add_rn(add_rn(mul_rn(dx, dx), mul_rn(dy, dy)), mul_rn(dz, dz));
      ok = (j != t.i || loop) && pred(d2);
    }
    if (body(j, ok, d2)) break;
  }
}

#define FOR_EACH_TARGET_OF_THIS_WARP(i, num_nodes)                                              \
  for (int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; i < (num_nodes); \
       i += int64_t(gridDim.x) * kWarpsPerBlock)

// seen[i]: qualifying sources of target i, except that the count may stop anywhere past `cap`
// (only "more than cap" matters then). keep[i] = min(seen[i], cap): edges target i gets.
template <typename scalar_t, typename Pred>
__global__ void __launch_bounds__(kThreadsPerBlock)
    count_kernel(const scalar_t* __restrict__ pos, const int64_t* __restrict__ batch,
                 const int64_t* __restrict__ ptr, int64_t num_nodes, Pred pred, int64_t cap, bool loop,
                 int64_t* __restrict__ seen, int64_t* __restrict__ keep) {
  FOR_EACH_TARGET_OF_THIS_WARP(i, num_nodes) {
    const Target t = target_of(i, batch, ptr);
    int64_t n = 0;
    if constexpr (Pred::kEverySource) {
      n = (t.end - t.start) - (loop ? 0 : 1);
    } else {
      scan_sources(pos, t, loop, pred, [&](int64_t, bool ok, scalar_t) {
        n += __popc(__ballot_sync(kFullMask, ok));
        return n > cap;
      });
    }
    if (lane_id() == 0) {
      seen[i] = n;
      keep[i] = n < cap ? n : cap;
    }
  }
}

// Which qualifying sources to keep: all with a key below `key`, plus the first `ties` (by source
// index) with exactly `key`.
template <typename K>
struct Cutoff {
  K key;
  int64_t ties;
};

// Radix select, 8 bits per pass from the most significant: the key of the rank-th smallest
// (1-based) qualifying source and how many of the sources with that exact key are within the
// first `rank`. Every pass rescans the protein and recomputes d2 (no per-target buffers, so any
// protein size and any cap work). hist: this warp's kRadixBins counters in shared memory.
template <typename scalar_t, typename Pred>
__device__ Cutoff<RadixKey<scalar_t>> select_cutoff(const scalar_t* __restrict__ pos, const Target& t,
                                                  bool loop, const Pred& pred, int64_t rank,
                                                  unsigned* hist) {
  using K = RadixKey<scalar_t>;
  const int lane = lane_id();
  K prefix = 0, prefix_mask = 0;  // digits fixed so far
  for (int shift = 8 * int(sizeof(K)) - kRadixBits; shift >= 0; shift -= kRadixBits) {
    // Lane l clears, and below reads, only bins [l * kBinsPerLane, (l + 1) * kBinsPerLane).
    for (int b = 0; b < kBinsPerLane; ++b) hist[lane * kBinsPerLane + b] = 0;
    __syncwarp();
    scan_sources(pos, t, loop, pred, [&](int64_t, bool ok, scalar_t d2) {
      const K key = radix_key(d2);
      if (ok && (key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & (kRadixBins - 1)], 1u);
      return false;
    });
    __syncwarp();

    // Invariant: at least `rank` candidates match the prefix, so the warp-wide inclusive prefix
    // sum over the bins reaches `rank`; the first lane where it does owns the digit's bin.
    unsigned count[kBinsPerLane];
    int64_t lane_total = 0;
    for (int b = 0; b < kBinsPerLane; ++b) {
      count[b] = hist[lane * kBinsPerLane + b];
      lane_total += count[b];
    }
    int64_t inclusive = lane_total;
    for (int d = 1; d < kWarpSize; d *= 2) {
      const int64_t v = __shfl_up_sync(kFullMask, inclusive, d);
      if (lane >= d) inclusive += v;
    }
    const int owner = __ffs(__ballot_sync(kFullMask, inclusive >= rank)) - 1;
    int64_t below = inclusive - lane_total;  // candidates in bins before this lane's current bin
    int bin = lane * kBinsPerLane;
    for (int b = 0; b < kBinsPerLane; ++b, ++bin) {
      if (below + count[b] >= rank) break;
      below += count[b];
    }
    bin = __shfl_sync(kFullMask, bin, owner);
    below = __shfl_sync(kFullMask, below, owner);
    prefix |= K(bin) << shift;
    prefix_mask |= K(kRadixBins - 1) << shift;
    rank -= below;  // now 1 <= rank <= hist[bin]
    __syncwarp();   // every lane has read hist before the next pass clears it
  }
  return {prefix, rank};
}

// Writes the kept sources of target t in ascending index order to src/dst[out, out + keep).
template <typename scalar_t, typename Pred>
__device__ void write_edges(const scalar_t* __restrict__ pos, const Target& t, bool loop,
                            const Pred& pred, Cutoff<RadixKey<scalar_t>> cut, int64_t out, int64_t keep,
                            int64_t* __restrict__ src, int64_t* __restrict__ dst) {
  using K = RadixKey<scalar_t>;
  int64_t written = 0, ties_seen = 0;
  scan_sources(pos, t, loop, pred, [&](int64_t j, bool ok, scalar_t d2) {
    const K key = radix_key(d2);
    const bool tie = ok && key == cut.key;
    const unsigned tie_mask = __ballot_sync(kFullMask, tie);
    const bool take = ok && (key < cut.key || (tie && ties_seen + __popc(tie_mask & lanes_below()) < cut.ties));
    const unsigned take_mask = __ballot_sync(kFullMask, take);
    const int64_t slot = written + __popc(take_mask & lanes_below());
    if (take && slot < keep) {  // slot < keep always holds; the check only guards the buffer
      src[out + slot] = j;
      dst[out + slot] = t.i;
    }
    written += __popc(take_mask);
    ties_seen += __popc(tie_mask);
    return written >= keep;
  });
}

// end_offset: inclusive prefix sum of keep, so target i owns edges [end_offset[i] - keep[i], end_offset[i]).
template <typename scalar_t, typename Pred>
__global__ void __launch_bounds__(kThreadsPerBlock)
    fill_kernel(const scalar_t* __restrict__ pos, const int64_t* __restrict__ batch,
                const int64_t* __restrict__ ptr, int64_t num_nodes, Pred pred, int64_t cap, bool loop,
                const int64_t* __restrict__ seen, const int64_t* __restrict__ keep,
                const int64_t* __restrict__ end_offset, int64_t* __restrict__ src,
                int64_t* __restrict__ dst) {
  using K = RadixKey<scalar_t>;
  __shared__ unsigned hist[kWarpsPerBlock][kRadixBins];
  FOR_EACH_TARGET_OF_THIS_WARP(i, num_nodes) {
    const int64_t n_keep = keep[i];
    if (n_keep == 0) continue;
    const Target t = target_of(i, batch, ptr);
    // Without truncation every qualifying source is kept: no key reaches all-ones (d2 is never NaN).
    Cutoff<K> cut{std::numeric_limits<K>::max(), 0};
    if (seen[i] > cap) cut = select_cutoff(pos, t, loop, pred, cap, hist[threadIdx.x / kWarpSize]);
    write_edges(pos, t, loop, pred, cut, end_offset[i] - n_keep, n_keep, src, dst);
  }
}

#undef FOR_EACH_TARGET_OF_THIS_WARP

template <typename scalar_t, typename Pred>
at::Tensor build_edges(const at::Tensor& pos_in, const c10::optional<at::Tensor>& batch_in,
                       const at::Tensor& ptr_in, Pred pred, int64_t cap, bool loop) {
  const auto long_opts = pos_in.options().dtype(at::kLong);
  const int64_t num_nodes = pos_in.size(0);
  if (num_nodes == 0 || cap == 0) return at::empty({2, 0}, long_opts);

  const at::Tensor pos = pos_in.contiguous();
  const at::Tensor ptr = ptr_in.contiguous();
  const at::Tensor batch = batch_in.has_value() ? batch_in->contiguous() : at::Tensor();
  const scalar_t* pos_data = pos.data_ptr<scalar_t>();
  const int64_t* batch_data = batch.defined() ? batch.data_ptr<int64_t>() : nullptr;
  const int64_t* ptr_data = ptr.data_ptr<int64_t>();

  const int64_t blocks64 = std::min((num_nodes + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks);
  const dim3 blocks(static_cast<unsigned>(blocks64));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor seen = at::empty({num_nodes}, long_opts);
  at::Tensor keep = at::empty({num_nodes}, long_opts);
  count_kernel<scalar_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
      pos_data, batch_data, ptr_data, num_nodes, pred, cap, loop, seen.data_ptr<int64_t>(),
      keep.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor end_offset = at::cumsum(keep, 0);
  // The output size depends on the data, so one device-to-host sync is unavoidable.
  const int64_t num_edges = end_offset[num_nodes - 1].item<int64_t>();
  at::Tensor edge_index = at::empty({2, num_edges}, long_opts);
  if (num_edges == 0) return edge_index;
  int64_t* src = edge_index.data_ptr<int64_t>();
  fill_kernel<scalar_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
      pos_data, batch_data, ptr_data, num_nodes, pred, cap, loop, seen.data_ptr<int64_t>(),
      keep.data_ptr<int64_t>(), end_offset.data_ptr<int64_t>(), src, src + num_edges);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return edge_index;
}

at::Tensor radius_graph_cuda(const at::Tensor& pos, const c10::optional<at::Tensor>& batch, double r,
                             c10::optional<int64_t> max_num_neighbors, bool loop) {
  check_graph_params("radius_graph", r, max_num_neighbors);
  TORCH_CHECK(pos.is_cuda(), "radius_graph: CUDA kernel called with pos on ", pos.device());
  const c10::cuda::CUDAGuard guard(pos.device());
  const at::Tensor ptr = check_graph_inputs("radius_graph", pos, batch);
  const int64_t cap = max_num_neighbors.value_or(std::numeric_limits<int64_t>::max());
  return AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "radius_graph_cuda", [&] {
    const WithinRadius<scalar_t> pred{static_cast<scalar_t>(r * r)};
    return build_edges<scalar_t>(pos, batch, ptr, pred, cap, loop);
  });
}

at::Tensor knn_graph_cuda(const at::Tensor& pos, const c10::optional<at::Tensor>& batch, int64_t k, bool loop) {
  TORCH_CHECK_VALUE(k >= 0, "knn_graph: k must be >= 0, got ", k);
  TORCH_CHECK(pos.is_cuda(), "knn_graph: CUDA kernel called with pos on ", pos.device());
  const c10::cuda::CUDAGuard guard(pos.device());
  const at::Tensor ptr = check_graph_inputs("knn_graph", pos, batch);
  return AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "knn_graph_cuda", [&] {
    return build_edges<scalar_t>(pos, batch, ptr, AnySource<scalar_t>{}, k, loop);
  });
}

// On the GPU both scans are already one warp per target over the protein, so the two graphs are
// simply built one after the other (the fusion pays on the CPU, where it saves a grid search).
std::tuple<at::Tensor, at::Tensor> radius_knn_graph_cuda(const at::Tensor& pos, const c10::optional<at::Tensor>& batch,
                                                         double r, c10::optional<int64_t> max_num_neighbors,
                                                         int64_t k, bool loop) {
  TORCH_CHECK_VALUE(k >= 0, "radius_knn_graph: k must be >= 0, got ", k);
  return std::make_tuple(radius_graph_cuda(pos, batch, r, max_num_neighbors, loop), knn_graph_cuda(pos, batch, k, loop));
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CUDA, m) {
  m.impl("radius_graph", &radius_graph_cuda);
  m.impl("knn_graph", &knn_graph_cuda);
  m.impl("radius_knn_graph", &radius_knn_graph_cuda);
}

}  // namespace esmgear_fast
