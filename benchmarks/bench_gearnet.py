"""Benchmark: GearNet relational message passing on graphs of real proteins.

Tasks, each forward (`fwd`) and forward+backward (`fwd+bwd`), at batch sizes 2, 8, 32 proteins:
  layer    one GeometricRelationalGraphConv, 512 -> 512, R = 7 (input features random)
  gearnet  the 6 x 512 GearNet (input: 21-dim one-hot residues, batch norm, shortcut, concat)
Graphs come from GearNetGraph on real chains. Implementations, with identical parameters:
  extension          esmgear_fast default: fused C++ relational_linear (aggregate tile by tile, GEMM per
                     tile; the layer row sorts the graph per call, GearNet once per forward)
  extension_unfused  esmgear_fast with fused=False: C++ relational_aggregate into [N, R*D], then Linear
  reference          esmgear_fast's plain-PyTorch reference aggregation (index_add), then Linear
  torchdrug_style    TorchDrug's computation: sparse [N, N*R] COO adjacency, torch.sparse.mm, Linear
  gemm_only          (layer only) just the [N, R*D] x [R*D, D'] product of the layer's Linear on a fixed
                     aggregate (fwd: 1 GEMM; fwd+bwd: 3 GEMMs): the floor that every implementation pays
Speed-ups are against torchdrug_style, measured alternately in one run; peak memory on GPU only;
saved_mb (fwd+bwd rows): MB of floating-point tensors autograd keeps for backward (one run, any device).
  gearnet_edge  the 6 x 512 GearNet-Edge (line graph, 8 angle bins, 59 edge features), at --edge-sizes
                only (default 2: on CPU its line-graph layers are very heavy); our time includes building
                the line graph, the TorchDrug-style one gets it prebuilt.

    python benchmarks/bench_gearnet.py [--quick] [--device cuda] [--sizes 2 8 32] [--repeats 5] [--out f.jsonl]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_header, print_table, spread_batch, write_jsonl  # noqa: E402

from esmgear_fast.models import GearNet, gearnet_edge_feature, residue_one_hot, spatial_line_graph  # noqa: E402
from esmgear_fast.models.gearnet import graph_readout  # noqa: E402
from esmgear_fast.nn import GearNetGraph, GeometricRelationalGraphConv  # noqa: E402
from esmgear_fast.testing import real_proteins  # noqa: E402

R = 7


def torchdrug_layer(layer, x, graph):
    """TorchDrug's GeometricRelationalGraphConv: builds the adjacency (every call, as TorchDrug's
    message_and_aggregate does), sparse.mm(adjacency.t(), x), then combine."""
    n = x.size(0)
    adj_t = adjacency(*graph, n, x.device, layer.num_relation)
    update = torch.sparse.mm(adj_t, x).view(n, layer.num_relation * x.size(1))
    out = layer.linear(update) + layer.self_loop(x)
    if layer.batch_norm is not None:
        out = layer.batch_norm(out)
    return F.relu(out)


def torchdrug_gearnet(model, x, graph, batch, num_graphs):
    hiddens, layer_input = [], x
    for i, layer in enumerate(model.layers):
        hidden = torchdrug_layer(layer, layer_input, graph)
        if model.short_cut and hidden.shape == layer_input.shape:
            hidden = hidden + layer_input
        if model.batch_norm:
            hidden = model.batch_norms[i](hidden)
        hiddens.append(hidden)
        layer_input = hidden
    node = torch.cat(hiddens, -1) if model.concat_hidden else hiddens[-1]
    return {"node_feature": node, "graph_feature": graph_readout(node, batch, num_graphs, model.readout)}


def torchdrug_gearnet_edge(model, x, graph, line_graph, edge_feature, batch, num_graphs):
    """TorchDrug's GearNet-Edge forward: sparse-mm layers on the residue graph and on its line graph;
    edge hidden states scattered into (target, relation) blocks, then the node layer's linear."""
    edge_index, edge_type = graph
    n = x.size(0)
    hiddens, layer_input, edge_input = [], x, edge_feature
    out_row = edge_index[1] * model.num_relation + edge_type
    for i, layer in enumerate(model.layers):
        hidden = torchdrug_layer(layer, layer_input, graph)
        if model.short_cut and hidden.shape == layer_input.shape:
            hidden = hidden + layer_input
        edge_hidden = torchdrug_layer(model.edge_layers[i], edge_input, line_graph)
        update = edge_hidden.new_zeros(n * model.num_relation, edge_hidden.size(1)).index_add(0, out_row, edge_hidden)
        hidden = hidden + F.relu(layer.linear(update.view(n, -1)))
        edge_input = edge_hidden
        if model.batch_norm:
            hidden = model.batch_norms[i](hidden)
        hiddens.append(hidden)
        layer_input = hidden
    node = torch.cat(hiddens, -1) if model.concat_hidden else hiddens[-1]
    return {"node_feature": node, "graph_feature": graph_readout(node, batch, num_graphs, model.readout)}


def adjacency(edge_index, edge_type, n, device, num_relation=R):
    # As TorchDrug's utils.sparse_coo_tensor: rows = source j, columns = i * R + r; transposed for mm.
    idx = torch.stack([edge_index[0], edge_index[1] * num_relation + edge_type])
    adj = torch.sparse_coo_tensor(idx, torch.ones(idx.size(1), device=device), (n, n * num_relation),
                                  check_invariants=False)
    return adj.t()


def implementations(batch, device, width, depth, edge=False):
    edge_index, edge_type = GearNetGraph()(batch)
    n = batch.num_nodes
    graph = (edge_index, edge_type)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = GeometricRelationalGraphConv(width, width, R).to(device)
    x_layer = torch.randn(n, width, generator=gen).to(device).requires_grad_(True)
    model = GearNet(21, [width] * depth, R).to(device)
    x_model = residue_one_hot(batch.residue_type).to(device)
    b, nb = batch.batch, batch.num_proteins

    def layer_fn(backend, fused=None):
        layer.backend, layer.fused = backend, fused
        return layer(x_layer, edge_index, edge_type)

    def model_fn(backend, fused=None):
        for m in model.layers:
            m.backend, m.fused = backend, fused
        return model(x_model, edge_index, edge_type, b, nb)

    # The GEMM alone, on a fixed aggregate of the right shape (values do not matter for its time).
    aggregate = torch.randn(n, R * width, generator=gen).to(device).requires_grad_(True)

    runs = {
        "layer": {
            "extension": lambda: layer_fn("extension"),
            "extension_unfused": lambda: layer_fn("extension", fused=False),
            "reference": lambda: layer_fn("reference"),
            "torchdrug_style": lambda: torchdrug_layer(layer, x_layer, graph),
            "gemm_only": lambda: F.linear(aggregate, layer.linear.weight),
        },
        "gearnet": {
            "extension": lambda: model_fn("extension")["graph_feature"],
            "extension_unfused": lambda: model_fn("extension", fused=False)["graph_feature"],
            "reference": lambda: model_fn("reference")["graph_feature"],
            "torchdrug_style": lambda: torchdrug_gearnet(model, x_model, graph, b, nb)["graph_feature"],
        },
    }
    params = list(layer.parameters()) + [x_layer, aggregate] + list(model.parameters())
    if edge:
        edge_model = GearNet(21, [width] * depth, R, edge_input_dim=59, num_angle_bin=8).to(device)
        feat = gearnet_edge_feature(batch.residue_type, batch.pos, edge_index, edge_type)
        line = spatial_line_graph(batch.pos, edge_index, 8)  # built inside ours each call, once here for TorchDrug-style

        def edge_fn(backend):
            for m in list(edge_model.layers) + list(edge_model.edge_layers):
                m.backend = backend
            return edge_model(x_model, edge_index, edge_type, b, nb, pos=batch.pos, edge_feature=feat)

        runs["gearnet_edge"] = {
            "extension": lambda: edge_fn("extension")["graph_feature"],
            "torchdrug_style": lambda: torchdrug_gearnet_edge(edge_model, x_model, graph, line, feat, b, nb)["graph_feature"],
        }
        params += list(edge_model.parameters())

    def backward(fn):
        def run():
            fn().sum().backward()
            for p in params:
                p.grad = None
        return run

    def forward(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    tasks, saved = {}, {}
    for task, impls in runs.items():
        tasks[(task, "fwd")] = {k: forward(f) for k, f in impls.items()}
        tasks[(task, "fwd+bwd")] = {k: backward(f) for k, f in impls.items()}
        saved[task] = {k: saved_mb(f, params) for k, f in impls.items()}
    return tasks, edge_index.size(1), saved


def saved_mb(fn, params) -> float:
    """MB of distinct floating-point storages autograd saves for backward in one call of fn: the
    activation memory of training (the integer graph is shared and not counted)."""
    storages = {}

    def pack(t):
        dense = t._values() if t.is_sparse else t  # TorchDrug-style adjacency: count its values
        if dense.is_floating_point():
            storages[dense.untyped_storage().data_ptr()] = dense.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    for p in params:
        p.grad = None
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--quick", action="store_true",
                        help="one batch size (8), 3 repeats, no GearNet-Edge: a quick check of the layer rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=512, help="hidden width (512 in the paper)")
    parser.add_argument("--depth", type=int, default=6, help="GearNet layers (6 in the paper)")
    parser.add_argument("--edge-sizes", type=int, nargs="*", default=[2],
                        help="batch sizes that also run GearNet-Edge (its line graph is ~20x the graph)")
    parser.add_argument("--out", default=None, help="JSON-lines file (default: benchmarks/results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.edge_sizes = [8], 3, []
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    proteins = real_proteins(min_len=50, max_len=1200)
    info = machine_info(device)
    print_header(info, f"width {args.width}, depth {args.depth}")
    rows = []
    for size in args.sizes:
        batch = spread_batch(proteins, size, device)
        tasks, num_edges, saved = implementations(batch, device, args.width, args.depth,
                                                  edge=size in args.edge_sizes)
        for (task, mode), impls in tasks.items():
            res = measure(impls, device, repeats=args.repeats, warmup=1)
            for name, r in res.items():
                row = {"task": task, "mode": mode, "impl": name, "proteins": size, "residues": batch.num_nodes,
                       "edges": num_edges, "width": args.width, "depth": args.depth, **r}
                row["speedup_vs_torchdrug_style"] = res["torchdrug_style"]["median_ms"] / r["median_ms"]
                if mode == "fwd+bwd" and name in saved.get(task, {}):
                    row["saved_mb"] = saved[task][name]
                if "peak_mem_mb" in r and res["torchdrug_style"].get("peak_mem_mb"):
                    row["mem_vs_torchdrug_style"] = r["peak_mem_mb"] / res["torchdrug_style"]["peak_mem_mb"]
                rows.append(row)
    columns = ["task", "mode", "proteins", "residues", "impl", "median_ms", "speedup_vs_torchdrug_style", "saved_mb"]
    if device.type == "cuda":
        columns += ["peak_mem_mb", "mem_vs_torchdrug_style"]
    print_table(rows, columns)
    path = write_jsonl(rows, info, "bench_gearnet", args.out)
    print(f"# results appended to {path}")


if __name__ == "__main__":
    main()
