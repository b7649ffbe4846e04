"""Benchmark: GearNet relational message passing on graphs of real proteins.

Tasks, each forward (`fwd`) and forward+backward (`fwd+bwd`), at batch sizes 2, 8, 32 proteins:
  layer    one GeometricRelationalGraphConv, 512 -> 512, R = 7 (input features random)
  gearnet  the 6 x 512 GearNet (input: 21-dim one-hot residues, batch norm, shortcut, concat)
Graphs come from GearNetGraph on real chains. Implementations, with identical parameters:
  extension          esmgear_fast default: the fused C++ relational_linear when the [N, R*D] aggregate
                     takes >= 64 MB, else the unfused path (the layer row sorts the graph per call,
                     GearNet once per forward)
  extension_fused    fused=True: C++ relational_linear (aggregate tile by tile, GEMM per tile)
  extension_unfused  fused=False: C++ relational_aggregate into [N, R*D], then Linear
  reference          esmgear_fast's plain-PyTorch reference aggregation (index_add), then Linear
  torchdrug_style    TorchDrug's computation: sparse [N, N*R] COO adjacency, torch.sparse.mm, Linear
  gemm_only          (layer only) just the [N, R*D] x [R*D, D'] product of the layer's Linear on a fixed
                     aggregate (fwd: 1 GEMM; fwd+bwd: 3 GEMMs): the floor that every implementation pays
Speed-ups are against torchdrug_style, measured alternately in one run; peak memory on GPU only;
saved_mb (fwd+bwd rows): MB of floating-point tensors autograd keeps for backward (one run, any device).
  line_graph         building GearNet-Edge's spatial line graph (8 angle bins) of the residue graph:
                     esmgear_fast.ops.spatial_line_graph vs TorchDrug's algorithm (= our reference), fwd only
  gearnet_edge  the 6 x 512 GearNet-Edge (line graph, 8 angle bins, 59 edge features), at --edge-sizes
                only (default 2: on CPU its line-graph layers are very heavy). Both implementations
                build the spatial line graph inside every forward, as TorchDrug's GearNet.forward does;
                the 59 edge features are precomputed for both (TorchDrug computes them in graph
                construction). fwd+bwd sizes whose estimated activation memory exceeds --max-edge-mem-gb
                (default 8) run fwd only, with a note. --edge-breakdown prints where the time goes
                (line graph, edge features, node layers, edge layers, GEMM-only) for both.

    python benchmarks/bench_gearnet.py [--quick] [--device cuda] [--sizes 2 8 32] [--repeats 5] [--out f.jsonl]
        [--edge-sizes 2 8 32] [--edge-breakdown] [--max-edge-mem-gb 8] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_header, print_table, spread_batch, write_jsonl  # noqa: E402

from esmgear_fast.models import GearNet, gearnet_edge_feature, residue_one_hot  # noqa: E402
from esmgear_fast.ops.spatial_line_graph import spatial_line_graph  # noqa: E402
from esmgear_fast.reference.spatial_line_graph import spatial_line_graph as reference_line_graph  # noqa: E402
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


def torchdrug_gearnet_edge(model, x, graph, pos, edge_feature, batch, num_graphs):
    """TorchDrug's GearNet-Edge forward: builds the spatial line graph (TorchDrug's algorithm, which is
    our plain-PyTorch reference), sparse-mm layers on the residue graph and on the line graph; edge
    hidden states scattered into (target, relation) blocks, then the node layer's linear."""
    edge_index, edge_type = graph
    line_graph = reference_line_graph(pos, edge_index, model.num_angle_bin)
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
            "extension_fused": lambda: layer_fn("extension", fused=True),
            "extension_unfused": lambda: layer_fn("extension", fused=False),
            "reference": lambda: layer_fn("reference"),
            "torchdrug_style": lambda: torchdrug_layer(layer, x_layer, graph),
            "gemm_only": lambda: F.linear(aggregate, layer.linear.weight),
        },
        "gearnet": {
            "extension": lambda: model_fn("extension")["graph_feature"],
            "extension_fused": lambda: model_fn("extension", fused=True)["graph_feature"],
            "extension_unfused": lambda: model_fn("extension", fused=False)["graph_feature"],
            "reference": lambda: model_fn("reference")["graph_feature"],
            "torchdrug_style": lambda: torchdrug_gearnet(model, x_model, graph, b, nb)["graph_feature"],
        },
    }
    params = list(layer.parameters()) + [x_layer, aggregate] + list(model.parameters())
    runs["line_graph"] = line_graph_runs(batch, edge_index)
    if edge:
        runs["gearnet_edge"], edge_params = gearnet_edge_runs(batch, device, width, depth, edge_index, edge_type)
        params += edge_params
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
        if task != "line_graph" and not (task == "gearnet_edge" and edge == "fwd"):
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


# ------------------------------------------------------------------------------------ GearNet-Edge


def edge_model_and_inputs(batch, device, width, depth, edge_index, edge_type):
    """The paper's GearNet-Edge (hidden `width` x `depth`, 8 angle bins, 59 edge features)."""
    torch.manual_seed(0)
    model = GearNet(21, [width] * depth, R, edge_input_dim=59, num_angle_bin=8, batch_norm=True,
                    concat_hidden=True, short_cut=True, readout="sum").to(device)
    feat = gearnet_edge_feature(batch.residue_type, batch.pos, edge_index, edge_type)
    return model, residue_one_hot(batch.residue_type).to(device), feat


def line_graph_runs(batch, edge_index):
    """The `line_graph` task: our compiled op vs TorchDrug's algorithm (our reference)."""
    return {
        "extension": lambda: spatial_line_graph(batch.pos, edge_index, 8, backend="extension"),
        "torchdrug_style": lambda: reference_line_graph(batch.pos, edge_index, 8),
    }


def gearnet_edge_runs(batch, device, width, depth, edge_index, edge_type):
    """Callables of the `gearnet_edge` task (and the parameters whose gradients to clear)."""
    model, x, feat = edge_model_and_inputs(batch, device, width, depth, edge_index, edge_type)
    graph, b, nb = (edge_index, edge_type), batch.batch, batch.num_proteins

    def ours(backend):
        for m in list(model.layers) + list(model.edge_layers):
            m.backend = backend
        model.backend = backend
        return model(x, edge_index, edge_type, b, nb, pos=batch.pos, edge_feature=feat)

    runs = {
        "extension": lambda: ours("extension")["graph_feature"],
        "torchdrug_style": lambda: torchdrug_gearnet_edge(model, x, graph, batch.pos, feat, b, nb)["graph_feature"],
    }
    return runs, list(model.parameters())


def edge_activation_gb(num_edges, width, depth, num_angle_bin=8):
    """Rough float32 memory of GearNet-Edge fwd+bwd: per edge layer autograd keeps the [E, bins * D_in]
    aggregation and a few [E, D] tensors; the peak is dominated by these."""
    per_layer = num_edges * (num_angle_bin * width + 6 * width) * 4
    return depth * per_layer / 2**30


def gearnet_edge_breakdown(batch, device, width, depth, repeats=3):
    """Where GearNet-Edge's time goes, ours vs TorchDrug-style, each part timed on its own (median ms):

      line_graph      building the spatial line graph (fwd; no gradient flows through it)
      edge_features   the 59 gearnet edge features (shared input of both; not in the model timings)
      node_layers     the 6 residue-graph layers alone, fwd+bwd (aggregation + linear + BN + act)
      edge_layers     the 6 line-graph layers alone, fwd+bwd, on a prebuilt line graph
      full            the whole model, fwd+bwd (as the gearnet_edge task)
      gemm            only the dense Linear GEMMs of the whole model on inputs of the same shapes,
                      fwd+bwd: identical work in both implementations, so full / gemm bounds the
                      speed-up any aggregation or line-graph kernel can give (Amdahl).
    """
    edge_index, edge_type = GearNetGraph()(batch)
    model, x, feat = edge_model_and_inputs(batch, device, width, depth, edge_index, edge_type)
    graph, b, nb = (edge_index, edge_type), batch.batch, batch.num_proteins
    n, e = batch.num_nodes, edge_index.size(1)
    line = spatial_line_graph(batch.pos, edge_index, 8, backend="extension")
    params = list(model.parameters())

    def fwd_bwd(fn):
        def run():
            out = fn()
            (out if isinstance(out, torch.Tensor) else out["graph_feature"]).sum().backward()
            for p in params:
                p.grad = None
        return run

    def node_layers(td):
        h = x
        for layer in model.layers:
            h = torchdrug_layer(layer, h, graph) if td else layer(h, edge_index, edge_type)
        return h

    def edge_layers(td):
        h, total = feat, 0
        for layer in model.edge_layers:
            h = torchdrug_layer(layer, h, line) if td else layer(h, line[0], line[1])
            total = total + h.sum()
        return total

    # Inputs with the shapes every Linear of the model sees (R = 7 relations, 8 angle bins).
    # Layer 0's inputs (one-hot residues, edge features) need no gradient, as in the model.
    gemm_inputs = []
    for i, (layer, edge_layer) in enumerate(zip(model.layers, model.edge_layers)):
        d_in, de_in = layer.self_loop.in_features, edge_layer.self_loop.in_features
        grad = i > 0
        gemm_inputs += [(layer.linear, torch.randn(n, R * d_in, device=device, requires_grad=grad)),  # node agg.
                        (layer.self_loop, torch.randn(n, d_in, device=device, requires_grad=grad)),
                        (layer.linear, torch.randn(n, R * d_in, device=device, requires_grad=True)),  # edge -> node
                        (edge_layer.linear, torch.randn(e, 8 * de_in, device=device, requires_grad=grad)),  # line graph
                        (edge_layer.self_loop, torch.randn(e, de_in, device=device, requires_grad=grad))]

    def gemm_only():
        return sum(m(t).sum() for m, t in gemm_inputs)

    fns = {
        "line_graph/extension": lambda: spatial_line_graph(batch.pos, edge_index, 8, backend="extension"),
        "line_graph/torchdrug_style": lambda: reference_line_graph(batch.pos, edge_index, 8),
        "edge_features/shared": lambda: gearnet_edge_feature(batch.residue_type, batch.pos, edge_index, edge_type),
        "node_layers/extension": fwd_bwd(lambda: node_layers(False)),
        "node_layers/torchdrug_style": fwd_bwd(lambda: node_layers(True)),
        "edge_layers/extension": fwd_bwd(lambda: edge_layers(False)),
        "edge_layers/torchdrug_style": fwd_bwd(lambda: edge_layers(True)),
        "full/extension": fwd_bwd(lambda: model(x, edge_index, edge_type, b, nb, pos=batch.pos, edge_feature=feat)),
        "full/torchdrug_style": fwd_bwd(lambda: torchdrug_gearnet_edge(model, x, graph, batch.pos, feat, b, nb)),
        "gemm/shared": fwd_bwd(gemm_only),
    }
    res = measure(fns, device, repeats=repeats, warmup=1)
    rows = []
    for key, r in res.items():
        part, impl = key.split("/")
        rows.append({"task": "gearnet_edge_breakdown", "part": part, "impl": impl, "proteins": batch.num_proteins,
                     "residues": n, "edges": e, "line_edges": line[1].numel(), "width": width, "depth": depth,
                     "median_ms": r["median_ms"], "repeats": r["repeats"]})
    gemm = res["gemm/shared"]["median_ms"]
    for row in rows:
        if row["part"] == "full":
            row["gemm_share"] = gemm / row["median_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=512, help="hidden width (512 in the paper)")
    parser.add_argument("--depth", type=int, default=6, help="GearNet layers (6 in the paper)")
    parser.add_argument("--edge-sizes", type=int, nargs="*", default=[2],
                        help="batch sizes that also run GearNet-Edge (its line graph is ~20x the graph)")
    parser.add_argument("--max-edge-mem-gb", type=float, default=8.0,
                        help="GearNet-Edge fwd+bwd only where the estimated activation memory fits (else fwd)")
    parser.add_argument("--edge-breakdown", action="store_true",
                        help="also time GearNet-Edge part by part per --edge-sizes batch (see gearnet_edge_breakdown)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, sizes 2 only (smoke run)")
    parser.add_argument("--out", default=None, help="JSON-lines file (default: benchmarks/results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    proteins = real_proteins(min_len=50, max_len=1200)
    info = machine_info(device)
    print_header(info, f"width {args.width}, depth {args.depth}")
    rows = []
    if args.quick:
        args.sizes, args.repeats = [2], 1
        args.edge_sizes = [s for s in args.edge_sizes if s in args.sizes]
    breakdown = []
    for size in args.sizes:
        batch = spread_batch(proteins, size, device)
        edge = False
        if size in args.edge_sizes:
            num_edges = GearNetGraph()(batch)[0].size(1)
            gb = edge_activation_gb(num_edges, args.width, args.depth)
            edge = True if gb <= args.max_edge_mem_gb else "fwd"
            if edge == "fwd":
                print(f"# gearnet_edge batch {size}: fwd+bwd needs ~{gb:.1f} GB of activations "
                      f"(> --max-edge-mem-gb {args.max_edge_mem_gb}); running fwd only")
            if args.edge_breakdown:
                breakdown += gearnet_edge_breakdown(batch, device, args.width, args.depth, args.repeats)
        tasks, num_edges, saved = implementations(batch, device, args.width, args.depth, edge=edge)
        done = len(rows)
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
        # Written per batch size, so a later size that runs out of memory keeps the earlier rows.
        path = write_jsonl(rows[done:], info, "bench_gearnet", args.out)
    columns = ["task", "mode", "proteins", "residues", "impl", "median_ms", "speedup_vs_torchdrug_style", "saved_mb"]
    if device.type == "cuda":
        columns += ["peak_mem_mb", "mem_vs_torchdrug_style"]
    print_table(rows, columns)
    if breakdown:
        print("# GearNet-Edge time by part (each timed alone; node/edge layers, full and gemm are fwd+bwd)")
        print_table(breakdown, ["proteins", "edges", "line_edges", "part", "impl", "median_ms", "gemm_share"])
        path = write_jsonl(breakdown, info, "bench_gearnet", args.out)
    print(f"# results appended to {path}")


if __name__ == "__main__":
    main()
