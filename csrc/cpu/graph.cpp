// CPU kernels of esmgear_fast::radius_graph and esmgear_fast::knn_graph.
//
// Each protein gets a uniform grid (cell list); targets are processed in parallel chunks, each
// chunk writing its own edge buffer, then the buffers are concatenated in target order. Squared
// distances are computed exactly as the reference does, (dx*dx + dy*dy) + dz*dz in the input dtype
// (the build disables FMA contraction), so the edge sets are bit-for-bit the reference's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "esmgear_fast/graph_common.h"

namespace esmgear_fast {
namespace {

constexpr int64_t kTargetsPerChunk = 256;
// kNN cell edge relative to the size holding k points at the bounding-box mean density.
constexpr double kKnnCellScale = 0.6;

// Cell list of one protein. Points are stored in cell order as separate x/y/z arrays, so the cells
// of one grid row are contiguous and a query scans a few contiguous runs. Cell coordinates are
// computed in double from exact inputs, so a pair whose per-axis offset is below the cell size is
// never more than one cell apart.
template <typename scalar_t>
struct Grid {
  double origin[3] = {0, 0, 0};
  double cell = 1;
  int64_t dims[3] = {1, 1, 1};
  std::vector<int64_t> cell_start;  // [num_cells + 1]
  std::vector<int64_t> node;        // node index of each stored point, ascending within a cell
  std::vector<scalar_t> x, y, z;    // coordinates of each stored point

  int64_t coord(double v, int axis) const {
    const double c = std::floor((v - origin[axis]) / cell);
    return std::min<int64_t>(dims[axis] - 1, std::max<int64_t>(0, static_cast<int64_t>(c)));
  }
  int64_t index(int64_t cx, int64_t cy, int64_t cz) const { return (cz * dims[1] + cy) * dims[0] + cx; }
  // Stored points of the cells cx0..cx1 of row (cy, cz): a contiguous range.
  std::pair<int64_t, int64_t> run(int64_t cx0, int64_t cx1, int64_t cy, int64_t cz) const {
    return {cell_start[index(cx0, cy, cz)], cell_start[index(cx1, cy, cz) + 1]};
  }
};

// `cell` is the smallest acceptable cell size; it grows when the grid would exceed ~8 cells per
// point (far-apart outliers), which keeps memory linear in the protein size and stays correct:
// radius queries only need cell >= r, and kNN shell searches work for any cell size.
template <typename scalar_t>
Grid<scalar_t> build_grid(const scalar_t* pos, int64_t start, int64_t end, double cell) {
  Grid<scalar_t> g;
  const int64_t n = end - start;
  double hi[3];
  for (int a = 0; a < 3; ++a) {
    g.origin[a] = std::numeric_limits<double>::infinity();
    hi[a] = -std::numeric_limits<double>::infinity();
  }
  for (int64_t i = start; i < end; ++i)
    for (int a = 0; a < 3; ++a) {
      g.origin[a] = std::min(g.origin[a], static_cast<double>(pos[3 * i + a]));
      hi[a] = std::max(hi[a], static_cast<double>(pos[3 * i + a]));
    }
  double span_max = 0;
  for (int a = 0; a < 3; ++a) span_max = std::max(span_max, hi[a] - g.origin[a]);
  if (!(cell > 0) || !std::isfinite(cell)) cell = span_max > 0 ? span_max : 1.0;
  cell = std::max(cell, span_max * 1e-6);
  const double max_cells = 8.0 * static_cast<double>(n) + 27.0;
  for (;;) {
    double total = 1;
    for (int a = 0; a < 3; ++a) {
      g.dims[a] = static_cast<int64_t>(std::min(1e7, std::floor((hi[a] - g.origin[a]) / cell))) + 1;
      total *= static_cast<double>(g.dims[a]);
    }
    if (total <= max_cells) break;
    cell *= std::max(1.01, std::cbrt(total / max_cells));
  }
  g.cell = cell;
  const int64_t num_cells = g.dims[0] * g.dims[1] * g.dims[2];
  g.cell_start.assign(num_cells + 1, 0);
  std::vector<int64_t> cell_of(n);
  for (int64_t i = start; i < end; ++i) {
    const scalar_t* p = pos + 3 * i;
    const int64_t c = g.index(g.coord(p[0], 0), g.coord(p[1], 1), g.coord(p[2], 2));
    cell_of[i - start] = c;
    ++g.cell_start[c + 1];
  }
  for (int64_t c = 0; c < num_cells; ++c) g.cell_start[c + 1] += g.cell_start[c];
  g.node.resize(n);
  g.x.resize(n);
  g.y.resize(n);
  g.z.resize(n);
  std::vector<int64_t> fill(g.cell_start.begin(), g.cell_start.end() - 1);
  for (int64_t i = start; i < end; ++i) {
    const int64_t k = fill[cell_of[i - start]]++;
    g.node[k] = i;
    g.x[k] = pos[3 * i];
    g.y[k] = pos[3 * i + 1];
    g.z[k] = pos[3 * i + 2];
  }
  return g;
}

template <typename scalar_t>
using Candidate = std::pair<scalar_t, int64_t>;  // (squared distance, source index)

// Kept candidates of one target for one output: cand[0, count), in any order.
template <typename scalar_t>
struct Selection {
  std::vector<Candidate<scalar_t>> cand;
  int64_t count = 0;
};

// Shared driver: builds one grid per protein, runs `query(grid, target position, target, sel)`
// for every target in parallel chunks, filling one Selection per output, and assembles each
// output into an edge_index [2, E] ordered by (target, source).
template <int kOutputs, typename scalar_t, typename CellSize, typename Query>
std::array<at::Tensor, kOutputs> build_edges(const at::Tensor& pos_in, const at::Tensor& ptr_in,
                                             CellSize cell_size, Query query) {
  const at::Tensor pos = pos_in.contiguous();
  const at::Tensor ptr = ptr_in.contiguous();
  const scalar_t* p = pos.data_ptr<scalar_t>();
  const int64_t* ptr_data = ptr.data_ptr<int64_t>();
  const int64_t n = pos.size(0);
  const int64_t num_graphs = ptr.size(0) - 1;

  std::vector<Grid<scalar_t>> grids(num_graphs);
  std::vector<int64_t> graph_of(n);
  at::parallel_for(0, num_graphs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t s = ptr_data[b], e = ptr_data[b + 1];
      if (e > s) grids[b] = build_grid(p, s, e, cell_size(p, s, e));
      for (int64_t i = s; i < e; ++i) graph_of[i] = b;
    }
  });

  const int64_t num_chunks = (n + kTargetsPerChunk - 1) / kTargetsPerChunk;
  // Per output: the sources of each chunk in (target, source) order, and each target's degree.
  std::array<std::vector<std::vector<int64_t>>, kOutputs> chunk_sources;
  std::array<std::vector<int64_t>, kOutputs> degree;
  for (int o = 0; o < kOutputs; ++o) {
    chunk_sources[o].resize(num_chunks);
    degree[o].resize(n);
  }
  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    std::array<Selection<scalar_t>, kOutputs> sel;
    std::vector<uint64_t> bits;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t last = std::min(n, (chunk + 1) * kTargetsPerChunk);
      for (int64_t i = chunk * kTargetsPerChunk; i < last; ++i) {
        query(grids[graph_of[i]], p + 3 * i, i, sel);
        for (int o = 0; o < kOutputs; ++o) {
          const auto& cand = sel[o].cand;
          const int64_t kept = sel[o].count;
          degree[o][i] = kept;
          if (kept == 0) continue;
          // Emit in ascending source order through a bitmap over [lo, hi]: cheaper than sorting.
          int64_t lo = cand[0].second, hi = lo;
          for (int64_t t = 1; t < kept; ++t) {
            lo = std::min(lo, cand[t].second);
            hi = std::max(hi, cand[t].second);
          }
          bits.assign((hi - lo) / 64 + 1, 0);
          for (int64_t t = 0; t < kept; ++t) bits[(cand[t].second - lo) / 64] |= uint64_t(1) << ((cand[t].second - lo) % 64);
          auto& out = chunk_sources[o][chunk];
          for (size_t w = 0; w < bits.size(); ++w)
            for (uint64_t word = bits[w]; word != 0; word &= word - 1)
              out.push_back(lo + 64 * static_cast<int64_t>(w) + __builtin_ctzll(word));
        }
      }
    }
  });

  std::array<at::Tensor, kOutputs> result;
  for (int o = 0; o < kOutputs; ++o) {
    std::vector<int64_t> offset(num_chunks + 1, 0);
    for (int64_t c = 0; c < num_chunks; ++c) offset[c + 1] = offset[c] + chunk_sources[o][c].size();
    const int64_t num_edges = offset[num_chunks];
    result[o] = at::empty({2, num_edges}, pos.options().dtype(at::kLong));
    int64_t* src = result[o].template data_ptr<int64_t>();
    int64_t* dst = src + num_edges;
    at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        std::copy(chunk_sources[o][c].begin(), chunk_sources[o][c].end(), src + offset[c]);
        int64_t e = offset[c];
        for (int64_t i = c * kTargetsPerChunk; i < std::min(n, (c + 1) * kTargetsPerChunk); ++i)
          for (int64_t t = 0; t < degree[o][i]; ++t) dst[e++] = i;
      }
    });
  }
  return result;
}

// Appends the stored points [range) of a grid that pass `keep(d2, source)` to sel.cand[sel.count...],
// computing d2 exactly as the reference does. Branch-free: most tests fail, unpredictably, so
// every point is written and the count advances only for the kept ones.
template <typename scalar_t, typename Keep>
inline void append_run(const Grid<scalar_t>& g, std::pair<int64_t, int64_t> range, const scalar_t* p,
                       Selection<scalar_t>& sel, Keep keep) {
  auto& cand = sel.cand;
  int64_t count = sel.count;
  const int64_t need = count + (range.second - range.first);
  if (static_cast<int64_t>(cand.size()) < need) cand.resize(std::max<int64_t>(need, 2 * cand.size()));
  for (int64_t k = range.first; k < range.second; ++k) {
    const scalar_t dx = g.x[k] - p[0];
    const scalar_t dy = g.y[k] - p[1];
    const scalar_t dz = g.z[k] - p[2];
    const scalar_t d2 = dx * dx + dy * dy + dz * dz;
    cand[count] = Candidate<scalar_t>(d2, g.node[k]);
    count += keep(d2, g.node[k]);
  }
  sel.count = count;
}

// Keeps the `keep` smallest candidates by (d2, source), in any order.
template <typename scalar_t>
inline void keep_nearest(Selection<scalar_t>& sel, int64_t keep) {
  if (sel.count <= keep) return;
  if (keep == 0) {
    sel.count = 0;
    return;
  }
  std::nth_element(sel.cand.begin(), sel.cand.begin() + (keep - 1), sel.cand.begin() + sel.count);
  sel.count = keep;
}

// All sources with d2 < r2 (self only with `loop`). Needs a grid with cells of at least r.
template <typename scalar_t>
void radius_query(const Grid<scalar_t>& g, const scalar_t* p, int64_t i, scalar_t r2, bool loop,
                  Selection<scalar_t>& sel) {
  sel.count = 0;
  const int64_t cx = g.coord(p[0], 0), cy = g.coord(p[1], 1), cz = g.coord(p[2], 2);
  const int64_t x0 = std::max<int64_t>(0, cx - 1), x1 = std::min(g.dims[0] - 1, cx + 1);
  auto within = [&](scalar_t d2, int64_t j) { return (d2 < r2) & ((j != i) | loop); };
  for (int64_t z = std::max<int64_t>(0, cz - 1); z <= std::min(g.dims[2] - 1, cz + 1); ++z)
    for (int64_t y = std::max<int64_t>(0, cy - 1); y <= std::min(g.dims[1] - 1, cy + 1); ++y)
      append_run(g, g.run(x0, x1, y, z), p, sel, within);
}

// The k nearest sources (ties by index), searching shells of cells outwards; any cell size.
template <typename scalar_t>
void knn_query(const Grid<scalar_t>& g, const scalar_t* p, int64_t i, int64_t k, bool loop,
               Selection<scalar_t>& sel) {
  sel.count = 0;
  if (k == 0) return;
  const double pd[3] = {static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2])};
  const int64_t c[3] = {g.coord(pd[0], 0), g.coord(pd[1], 1), g.coord(pd[2], 2)};
  auto other = [&](scalar_t, int64_t j) { return (j != i) | loop; };
  // Shell m: the cells at Chebyshev distance m from the target's cell, scanned as x-runs.
  for (int64_t m = 0;; ++m) {
    const int64_t x0 = std::max<int64_t>(0, c[0] - m), x1 = std::min(g.dims[0] - 1, c[0] + m);
    for (int64_t dz = -m; dz <= m; ++dz) {
      const int64_t z = c[2] + dz;
      if (z < 0 || z >= g.dims[2]) continue;
      for (int64_t dy = -m; dy <= m; ++dy) {
        const int64_t y = c[1] + dy;
        if (y < 0 || y >= g.dims[1]) continue;
        if (dz == -m || dz == m || dy == -m || dy == m) {
          append_run(g, g.run(x0, x1, y, z), p, sel, other);
        } else {
          if (c[0] - m >= 0) append_run(g, g.run(c[0] - m, c[0] - m, y, z), p, sel, other);
          if (c[0] + m < g.dims[0]) append_run(g, g.run(c[0] + m, c[0] + m, y, z), p, sel, other);
        }
      }
    }
    // Points outside the current k best can never re-enter them: drop them as we go.
    keep_nearest(sel, k);
    // Every point closer than `clear` to the target lies in the cells scanned so far: the
    // distance to the nearest face of the scanned box, where faces on the grid boundary do not
    // count (nothing lies beyond them). Once the k-th best is inside that ball (with a margin for
    // rounding of the distances) no unscanned point can displace it.
    double clear = std::numeric_limits<double>::infinity();
    for (int a = 0; a < 3; ++a) {
      if (c[a] - m > 0) clear = std::min(clear, pd[a] - (g.origin[a] + static_cast<double>(c[a] - m) * g.cell));
      if (c[a] + m < g.dims[a] - 1) clear = std::min(clear, g.origin[a] + static_cast<double>(c[a] + m + 1) * g.cell - pd[a]);
    }
    if (clear == std::numeric_limits<double>::infinity()) return;  // the whole grid is scanned
    if (sel.count == k) {
      scalar_t kth = sel.cand[0].first;
      for (int64_t t = 1; t < k; ++t) kth = std::max(kth, sel.cand[t].first);
      if (static_cast<double>(kth) <= clear * clear * (1.0 - 1e-5)) return;
    }
  }
}

// Cells for radius queries: slightly larger than r so rounding in the cell coordinates can never
// split a close pair.
inline double radius_cell(double r) { return r * (1.0 + 1e-4); }

// Cells for kNN queries: sized so a typical target finds its k neighbours within the first shell,
// judged by the mean density over the protein's bounding box.
template <typename scalar_t>
double knn_cell(const scalar_t* p, int64_t s, int64_t e, int64_t k) {
  double lo[3], hi[3];
  for (int a = 0; a < 3; ++a) lo[a] = hi[a] = static_cast<double>(p[3 * s + a]);
  for (int64_t i = s; i < e; ++i)
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], static_cast<double>(p[3 * i + a]));
      hi[a] = std::max(hi[a], static_cast<double>(p[3 * i + a]));
    }
  double volume = 1, span_max = 0;
  for (int a = 0; a < 3; ++a) span_max = std::max(span_max, hi[a] - lo[a]);
  for (int a = 0; a < 3; ++a) volume *= std::max(hi[a] - lo[a], 1e-3 * span_max);
  return kKnnCellScale * std::cbrt(volume * static_cast<double>(std::max<int64_t>(k, 1)) / static_cast<double>(e - s));
}

at::Tensor radius_graph_cpu(const at::Tensor& pos, const c10::optional<at::Tensor>& batch, double r,
                            c10::optional<int64_t> max_num_neighbors, bool loop) {
  check_graph_params("radius_graph", r, max_num_neighbors);
  TORCH_CHECK(pos.device().is_cpu(), "radius_graph: CPU kernel called with pos on ", pos.device());
  const at::Tensor ptr = check_graph_inputs("radius_graph", pos, batch);
  const int64_t cap = max_num_neighbors.value_or(std::numeric_limits<int64_t>::max());
  return AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "radius_graph_cpu", [&] {
    const scalar_t r2 = static_cast<scalar_t>(r * r);
    auto cell = [r](const scalar_t*, int64_t, int64_t) { return radius_cell(r); };
    auto query = [&](const Grid<scalar_t>& g, const scalar_t* p, int64_t i, std::array<Selection<scalar_t>, 1>& sel) {
      sel[0].count = 0;
      if (cap == 0) return;
      radius_query(g, p, i, r2, loop, sel[0]);
      keep_nearest(sel[0], cap);
    };
    return build_edges<1, scalar_t>(pos, ptr, cell, query)[0];
  });
}

at::Tensor knn_graph_cpu(const at::Tensor& pos, const c10::optional<at::Tensor>& batch, int64_t k, bool loop) {
  TORCH_CHECK_VALUE(k >= 0, "knn_graph: k must be >= 0, got ", k);
  TORCH_CHECK(pos.device().is_cpu(), "knn_graph: CPU kernel called with pos on ", pos.device());
  const at::Tensor ptr = check_graph_inputs("knn_graph", pos, batch);
  return AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "knn_graph_cpu", [&] {
    auto cell = [k](const scalar_t* p, int64_t s, int64_t e) { return knn_cell(p, s, e, k); };
    auto query = [&](const Grid<scalar_t>& g, const scalar_t* p, int64_t i, std::array<Selection<scalar_t>, 1>& sel) {
      knn_query(g, p, i, k, loop, sel[0]);
    };
    return build_edges<1, scalar_t>(pos, ptr, cell, query)[0];
  });
}

// Both graphs from one scan per target: every source within r is found anyway, and when at least
// k of them exist the k nearest overall are among them (closer than any point outside r, ties
// included). Only targets with fewer than k sources within r run the kNN shell search.
std::tuple<at::Tensor, at::Tensor> radius_knn_graph_cpu(const at::Tensor& pos, const c10::optional<at::Tensor>& batch,
                                                        double r, c10::optional<int64_t> max_num_neighbors,
                                                        int64_t k, bool loop) {
  check_graph_params("radius_knn_graph", r, max_num_neighbors);
  TORCH_CHECK_VALUE(k >= 0, "radius_knn_graph: k must be >= 0, got ", k);
  TORCH_CHECK(pos.device().is_cpu(), "radius_knn_graph: CPU kernel called with pos on ", pos.device());
  const at::Tensor ptr = check_graph_inputs("radius_knn_graph", pos, batch);
  const int64_t cap = max_num_neighbors.value_or(std::numeric_limits<int64_t>::max());
  return AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "radius_knn_graph_cpu", [&] {
    const scalar_t r2 = static_cast<scalar_t>(r * r);
    auto cell = [r](const scalar_t*, int64_t, int64_t) { return radius_cell(r); };
    auto query = [&](const Grid<scalar_t>& g, const scalar_t* p, int64_t i, std::array<Selection<scalar_t>, 2>& sel) {
      radius_query(g, p, i, r2, loop, sel[0]);
      if (sel[0].count >= k) {
        auto& knn = sel[1];
        if (static_cast<int64_t>(knn.cand.size()) < sel[0].count) knn.cand.resize(sel[0].count);
        std::copy(sel[0].cand.begin(), sel[0].cand.begin() + sel[0].count, knn.cand.begin());
        knn.count = sel[0].count;
        keep_nearest(knn, k);
      } else {
        knn_query(g, p, i, k, loop, sel[1]);
      }
      keep_nearest(sel[0], cap);
    };
    auto out = build_edges<2, scalar_t>(pos, ptr, cell, query);
    return std::make_tuple(out[0], out[1]);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CPU, m) {
  m.impl("radius_graph", &radius_graph_cpu);
  m.impl("knn_graph", &knn_graph_cpu);
  m.impl("radius_knn_graph", &radius_knn_graph_cpu);
}

}  // namespace esmgear_fast
