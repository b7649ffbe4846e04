// Schemas of the graph-construction ops. CPU kernels: csrc/cpu/graph.cpp; CUDA: csrc/cuda/graph.cu;
// fake kernels and the Python API: esmgear_fast/ops/radius_graph.py and knn_graph.py.
#include <Python.h>
#include <torch/library.h>

// `import esmgear_fast._C` loads this library, which runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(esmgear_fast, m) {
  // Edges j -> i (row 0 = source j, row 1 = target i) between nodes of the same protein with
  // |pos_j - pos_i| < r. Per target at most max_num_neighbors sources: the nearest ones, ties by
  // lower source index. Edges are ordered by (target, source).
  m.def("radius_graph(Tensor pos, Tensor? batch, float r, int? max_num_neighbors, bool loop) -> Tensor");
  // The k nearest sources of every target in its protein (ties by lower index), same ordering.
  m.def("knn_graph(Tensor pos, Tensor? batch, int k, bool loop) -> Tensor");
  // (radius_graph(...), knn_graph(...)) from one neighbour search: GearNet needs both.
  m.def("radius_knn_graph(Tensor pos, Tensor? batch, float r, int? max_num_neighbors, int k, bool loop) -> (Tensor, Tensor)");
}
