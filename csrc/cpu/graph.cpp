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
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "esmgear_fast/graph_common.h"

namespace esmgear_fast {
namespace {

constexpr int64_t kTargetsPerChunk = 256;

template <typename scalar_t>
inline scalar_t squared_distance(const scalar_t* pos, int64_t j, int64_t i) {
  const scalar_t dx = pos[3 * j] - pos[3 * i];
  const scalar_t dy = pos[3 * j + 1] - pos[3 * i + 1];
  const scalar_t dz = pos[3 * j + 2] - pos[3 * i + 2];
  return dx * dx + dy * dy + dz * dz;
}

// Cell list of one protein. Cell coordinates are computed in double from exact float inputs, so a
// pair whose per-axis offset is below the cell size is never more than one cell apart.
struct Grid {
  double origin[3] = {0, 0, 0};
  double cell = 1;
  int64_t dims[3] = {1, 1, 1};
  std::vector<int64_t> cell_start;  // [num_cells + 1]
  std::vector<int64_t> points;      // node indices grouped by cell, ascending within a cell

  template <typename scalar_t>
  int64_t coord(const scalar_t* p, int axis) const {
    const double c = std::floor((static_cast<double>(p[axis]) - origin[axis]) / cell);
    return std::min<int64_t>(dims[axis] - 1, std::max<int64_t>(0, static_cast<int64_t>(c)));
  }
  int64_t index(int64_t x, int64_t y, int64_t z) const { return (z * dims[1] + y) * dims[0] + x; }
};

// `cell` is the smallest acceptable cell size; it grows when the grid would exceed ~8 cells per
// point (far-apart outliers), which keeps memory linear in the protein size and stays correct:
// radius queries only need cell >= r, and kNN ring searches work for any cell size.
template <typename scalar_t>
Grid build_grid(const scalar_t* pos, int64_t start, int64_t end, double cell) {
  Grid g;
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
    const int64_t c = g.index(g.coord(p, 0), g.coord(p, 1), g.coord(p, 2));
    cell_of[i - start] = c;
    ++g.cell_start[c + 1];
  }
  for (int64_t c = 0; c < num_cells; ++c) g.cell_start[c + 1] += g.cell_start[c];
  g.points.resize(n);
  std::vector<int64_t> fill(g.cell_start.begin(), g.cell_start.end() - 1);
  for (int64_t i = start; i < end; ++i) g.points[fill[cell_of[i - start]]++] = i;
  return g;
}

template <typename scalar_t>
using Candidate = std::pair<scalar_t, int64_t>;  // (squared distance, source index)

// Keeps the `keep` nearest candidates (ties by lower index), then orders them by source index.
template <typename scalar_t>
void select_nearest(std::vector<Candidate<scalar_t>>& cand, int64_t keep) {
  if (static_cast<int64_t>(cand.size()) > keep) {
    std::nth_element(cand.begin(), cand.begin() + keep, cand.end());  // pair order = (d2, j)
    cand.resize(keep);
  }
  std::sort(cand.begin(), cand.end(),
            [](const Candidate<scalar_t>& a, const Candidate<scalar_t>& b) { return a.second < b.second; });
}

// Shared driver: builds one grid per protein, runs `query(grid, target, candidates)` for every
// target in parallel chunks and concatenates the results into edge_index [2, E].
template <typename scalar_t, typename CellSize, typename Query>
at::Tensor build_edges(const at::Tensor& pos_in, const at::Tensor& ptr_in, CellSize cell_size, Query query) {
  const at::Tensor pos = pos_in.contiguous();
  const at::Tensor ptr = ptr_in.contiguous();
  const scalar_t* p = pos.data_ptr<scalar_t>();
  const int64_t* ptr_data = ptr.data_ptr<int64_t>();
  const int64_t n = pos.size(0);
  const int64_t num_graphs = ptr.size(0) - 1;

  std::vector<Grid> grids(num_graphs);
  std::vector<int64_t> graph_of(n);
  at::parallel_for(0, num_graphs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t s = ptr_data[b], e = ptr_data[b + 1];
      if (e > s) grids[b] = build_grid(p, s, e, cell_size(p, s, e));
      for (int64_t i = s; i < e; ++i) graph_of[i] = b;
    }
  });

  const int64_t num_chunks = (n + kTargetsPerChunk - 1) / kTargetsPerChunk;
  std::vector<std::vector<int64_t>> chunk_edges(num_chunks);  // (source, target) pairs, flattened
  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Candidate<scalar_t>> cand;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      auto& out = chunk_edges[chunk];
      const int64_t last = std::min(n, (chunk + 1) * kTargetsPerChunk);
      for (int64_t i = chunk * kTargetsPerChunk; i < last; ++i) {
        cand.clear();
        query(grids[graph_of[i]], p, i, cand);
        for (const auto& c : cand) {
          out.push_back(c.second);
          out.push_back(i);
        }
      }
    }
  });

  std::vector<int64_t> offset(num_chunks + 1, 0);
  for (int64_t c = 0; c < num_chunks; ++c) offset[c + 1] = offset[c] + chunk_edges[c].size() / 2;
  at::Tensor edge_index = at::empty({2, offset[num_chunks]}, pos.options().dtype(at::kLong));
  int64_t* src = edge_index.data_ptr<int64_t>();
  int64_t* dst = src + offset[num_chunks];
  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const auto& e = chunk_edges[c];
      for (size_t k = 0; k < e.size() / 2; ++k) {
        src[offset[c] + k] = e[2 * k];
        dst[offset[c] + k] = e[2 * k + 1];
      }
    }
  });
  return edge_index;
}

at::Tensor radius_graph_cpu(const at::Tensor& pos, const c10::optional<at::Tensor>& batch, double r,
                            c10::optional<int64_t> max_num_neighbors, bool loop) {
  check_graph_params("radius_graph", r, max_num_neighbors);
  TORCH_CHECK(pos.device().is_cpu(), "radius_graph: CPU kernel called with pos on ", pos.device());
  const at::Tensor ptr = check_graph_inputs("radius_graph", pos, batch);
  const int64_t cap = max_num_neighbors.value_or(std::numeric_limits<int64_t>::max());
  return AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "radius_graph_cpu", [&] {
    const scalar_t r2 = static_cast<scalar_t>(r * r);
    // Slightly larger than r so rounding in the cell coordinates can never split a close pair.
    auto cell_size = [r](const scalar_t*, int64_t, int64_t) { return r * (1.0 + 1e-4); };
    auto query = [&](const Grid& g, const scalar_t* p, int64_t i, std::vector<Candidate<scalar_t>>& cand) {
      if (cap == 0) return;
      const int64_t cx = g.coord(p + 3 * i, 0), cy = g.coord(p + 3 * i, 1), cz = g.coord(p + 3 * i, 2);
      for (int64_t z = std::max<int64_t>(0, cz - 1); z <= std::min(g.dims[2] - 1, cz + 1); ++z)
        for (int64_t y = std::max<int64_t>(0, cy - 1); y <= std::min(g.dims[1] - 1, cy + 1); ++y)
          for (int64_t x = std::max<int64_t>(0, cx - 1); x <= std::min(g.dims[0] - 1, cx + 1); ++x) {
            const int64_t c = g.index(x, y, z);
            for (int64_t k = g.cell_start[c]; k < g.cell_start[c + 1]; ++k) {
              const int64_t j = g.points[k];
              if (j == i && !loop) continue;
              const scalar_t d2 = squared_distance(p, j, i);
              if (d2 < r2) cand.emplace_back(d2, j);
            }
          }
      select_nearest(cand, cap);
    };
    return build_edges<scalar_t>(pos, ptr, cell_size, query);
  });
}

at::Tensor knn_graph_cpu(const at::Tensor& pos, const c10::optional<at::Tensor>& batch, int64_t k, bool loop) {
  TORCH_CHECK_VALUE(k >= 0, "knn_graph: k must be >= 0, got ", k);
  TORCH_CHECK(pos.device().is_cpu(), "knn_graph: CPU kernel called with pos on ", pos.device());
  const at::Tensor ptr = check_graph_inputs("knn_graph", pos, batch);
  return AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "knn_graph_cpu", [&] {
    // Cells sized to hold ~k points if the protein filled its bounding box.
    auto cell_size = [k](const scalar_t* p, int64_t s, int64_t e) {
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
      return std::cbrt(volume * static_cast<double>(std::max<int64_t>(k, 1)) / static_cast<double>(e - s));
    };
    auto query = [&](const Grid& g, const scalar_t* p, int64_t i, std::vector<Candidate<scalar_t>>& cand) {
      if (k == 0) return;
      const int64_t c[3] = {g.coord(p + 3 * i, 0), g.coord(p + 3 * i, 1), g.coord(p + 3 * i, 2)};
      int64_t reach = 0;  // shells needed to cover the whole grid from this cell
      for (int a = 0; a < 3; ++a) reach = std::max({reach, c[a], g.dims[a] - 1 - c[a]});
      auto visit = [&](int64_t x, int64_t y, int64_t z) {
        if (x < 0 || y < 0 || z < 0 || x >= g.dims[0] || y >= g.dims[1] || z >= g.dims[2]) return;
        const int64_t cell = g.index(x, y, z);
        for (int64_t t = g.cell_start[cell]; t < g.cell_start[cell + 1]; ++t) {
          const int64_t j = g.points[t];
          if (j != i || loop) cand.emplace_back(squared_distance(p, j, i), j);
        }
      };
      // Shell m holds the cells at Chebyshev distance m. After shells 0..m every point within
      // m * cell of the target has been seen; stop once k of the seen points lie inside that
      // ball (the margin absorbs rounding of the float distances), since then the k nearest
      // and all their ties are among them.
      for (int64_t m = 0; m <= reach; ++m) {
        for (int64_t dz = -m; dz <= m; ++dz)
          for (int64_t dy = -m; dy <= m; ++dy) {
            const bool face = (dz == -m || dz == m || dy == -m || dy == m);
            for (int64_t dx = -m; dx <= m; dx += (face || m == 0) ? 1 : 2 * m)
              visit(c[0] + dx, c[1] + dy, c[2] + dz);
          }
        if (m == 0 || static_cast<int64_t>(cand.size()) < k) continue;
        const double ball = static_cast<double>(m) * g.cell * (1.0 - 1e-4);
        int64_t inside = 0;
        for (const auto& cd : cand) inside += static_cast<double>(cd.first) <= ball * ball;
        if (inside >= k) break;
      }
      select_nearest(cand, k);
    };
    return build_edges<scalar_t>(pos, ptr, cell_size, query);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(esmgear_fast, CPU, m) {
  m.impl("radius_graph", &radius_graph_cpu);
  m.impl("knn_graph", &knn_graph_cpu);
}

}  // namespace esmgear_fast
