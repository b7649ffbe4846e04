"""Benchmark: GVP-GNN (ESM-GearNet's GVP structure encoder) on radius graphs of real proteins.

Tasks, each forward (`fwd`) and forward+backward (`fwd+bwd`), in eval mode (dropout off), per batch size:
  layer   one GVPConvLayer, (256, 16) nodes, (64, 1) edges (ESM-GearNet's hidden edge size) and, with
          the default --edge-dims, also (16, 1) edges (the size of its raw RBF + direction edge
          features); node and edge features random
  gvpgnn  the 5-layer GVPGNN encoder of ESM-GVP (1280-dim ESM-2 input, random here), from the
          graph to the mean readout; both implementations compute their own edge features
Graphs: 10 A radius graphs (<= 32 neighbours) of real chains, built once outside the timings.
Implementations, with identical parameters:
  esmgear_fast   esmgear_fast's layers with backend "auto" (the fastest GVP ops available)
  reference      backend "reference" (only listed when "auto" resolves to something else)
  plain_pytorch  gvp-pytorch's computation written out in plain PyTorch below (independent of the
                 package's ops): nn.Linear on transposed vectors, gathered + concatenated messages,
                 index_add mean aggregation
  gvp_pytorch    (--peer) gvp-pytorch itself as vendored by ProteinWorkshop, if installed
Speed-ups are against plain_pytorch, measured alternately in one run; peak memory on GPU only.

    python benchmarks/bench_gvp.py [--quick] [--device cuda] [--sizes 2 8 32] [--repeats 5] [--out f.jsonl]

Defaults: on GPU sizes 2 8 32, proteins <= 500 residues, 10 rounds; on CPU (kept short, a few
minutes on 2 cores) sizes 2 8, proteins <= 100 residues, 2 rounds.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_header, print_table, spread_batch, write_jsonl  # noqa: E402

from esmgear_fast import backend as backend_mod  # noqa: E402
from esmgear_fast.models import GVPGNN, gvp_radius_graph  # noqa: E402
from esmgear_fast.nn import GVPConvLayer  # noqa: E402
from esmgear_fast.testing import real_proteins  # noqa: E402

# ------------------------------------------------------------------ plain gvp-pytorch-style computation

_ACT = {"relu": torch.relu, "sigmoid": torch.sigmoid, "silu": F.silu}


def _act(name, x):
    return x if name is None else _ACT[name](x)


def _norm(x, dim, keepdim=False, sqrt=True):
    out = torch.clamp(torch.sum(torch.square(x), dim, keepdim), min=1e-8)
    return torch.sqrt(out) if sqrt else out


def plain_gvp(m, x):
    if m.vi:
        s, v = x
        vh = m.wh(v.transpose(-1, -2))                      # [n, 3, h]
        s = m.ws(torch.cat([s, _norm(vh, -2)], -1))
        if m.vo:
            v = m.wv(vh).transpose(-1, -2)                   # [n, vo, 3]
            if m.vector_gate:
                v = v * torch.sigmoid(m.wsv(_act(m.vector_act, s))).unsqueeze(-1)
            elif m.vector_act is not None:
                v = v * _act(m.vector_act, _norm(v, -1, keepdim=True))
    else:
        s = m.ws(x[0] if isinstance(x, tuple) else x)
        v = s.new_zeros(s.size(0), m.vo, 3) if m.vo else None
    s = _act(m.scalar_act, s)
    return (s, v) if m.vo else s


def plain_layer_norm(m, x):
    if not m.v:
        return m.scalar_norm(x)
    s, v = x
    rms = torch.sqrt(torch.mean(_norm(v, -1, keepdim=True, sqrt=False), dim=-2, keepdim=True))
    return m.scalar_norm(s), v / rms


def plain_conv(conv, x, edge_index, edge_attr):
    s, v = x
    j, i = edge_index
    ms = torch.cat([s[j], edge_attr[0], s[i]], -1)
    mv = torch.cat([v[j], edge_attr[1], v[i]], -2)
    m = (ms, mv)
    for g in conv.message_func:
        m = plain_gvp(g, m)
    n = s.size(0)
    count = torch.zeros(n, dtype=s.dtype, device=s.device).index_add_(0, i, torch.ones_like(i, dtype=s.dtype))
    count = count.clamp(min=1)
    out_s = torch.zeros(n, m[0].size(1), dtype=s.dtype, device=s.device).index_add_(0, i, m[0]) / count[:, None]
    out_v = torch.zeros(n, m[1].size(1), 3, dtype=s.dtype, device=s.device).index_add_(0, i, m[1])
    return out_s, out_v / count[:, None, None]


def plain_conv_layer(layer, x, edge_index, edge_attr):  # eval mode: dropout is the identity
    dh = plain_conv(layer.conv, x, edge_index, edge_attr)
    x = plain_layer_norm(layer.norm[0], (x[0] + dh[0], x[1] + dh[1]))
    dh = x
    for g in layer.ff_func:
        dh = plain_gvp(g, dh)
    return plain_layer_norm(layer.norm[1], (x[0] + dh[0], x[1] + dh[1]))


def plain_gvpgnn(model, x, pos, edge_index, batch, num_graphs):
    j, i = edge_index
    vec = pos[i] - pos[j]
    mu = torch.linspace(0.0, 20.0, model.num_rbf, device=pos.device).view(1, -1)
    rbf = torch.exp(-((vec.norm(dim=-1, keepdim=True) - mu) / (20.0 / model.num_rbf)) ** 2)
    h = plain_gvp(model.W_v[1], plain_layer_norm(model.W_v[0], model.residue_embedding(x)))
    e = plain_gvp(model.W_e[1], plain_layer_norm(model.W_e[0], (rbf, vec.unsqueeze(-2))))
    for layer in model.layers:
        h = plain_conv_layer(layer, h, edge_index, e)
    node = plain_gvp(model.W_out[1], plain_layer_norm(model.W_out[0], h))
    graph = torch.zeros(num_graphs, node.size(1), device=node.device).index_add_(0, batch, node)
    return graph / torch.bincount(batch, minlength=num_graphs).clamp(min=1).unsqueeze(-1)


# ------------------------------------------------------------------ optional peer

def load_gvp_pytorch():
    """gvp-pytorch's layers from ProteinWorkshop's vendored copy (file loaded alone), or None."""
    try:
        import torch_geometric.nn  # noqa: F401
        import torch_scatter  # noqa: F401
    except ImportError:
        return None
    spec = importlib.util.find_spec("proteinworkshop")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "graph_encoders", "layers", "gvp.py")
    name = "_proteinworkshop_gvp_layers"
    file_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module
    file_spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ tasks

def parse_dims(text):
    a, b = (int(t) for t in text.split(","))
    return a, b


def implementations(batch, device, node_dims, edge_dims_list, depth, input_dim, peer):
    edge_index = gvp_radius_graph(batch.pos, batch.batch)
    n, num_edges = batch.num_nodes, edge_index.size(1)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv_backends = importlib.import_module("esmgear_fast.ops.gvp").CONV_BACKENDS
    auto = backend_mod.resolve("gvp_conv_message", "auto", batch.pos.device, conv_backends)
    backends = {"esmgear_fast": "auto"}
    if auto != "reference":
        backends["reference"] = "reference"
    params, runs = [], {}

    def set_backend(module, name):
        for m in module.modules():
            if hasattr(m, "backend"):
                m.backend = name

    for edge_dims in edge_dims_list:
        layer = GVPConvLayer(node_dims, edge_dims, activations=("relu", None), vector_gate=True).to(device).eval()
        x = (torch.randn(n, node_dims[0], generator=gen).to(device).requires_grad_(True),
             torch.randn(n, node_dims[1], 3, generator=gen).to(device).requires_grad_(True))
        e = (torch.randn(num_edges, edge_dims[0], generator=gen).to(device),
             torch.randn(num_edges, edge_dims[1], 3, generator=gen).to(device))
        params += list(layer.parameters()) + list(x)

        def ours(layer=layer, x=x, e=e, name="auto"):
            set_backend(layer, name)
            s, v = layer(x, edge_index, e)
            return s.sum() + v.sum()

        impls = {k: (lambda f=ours, b=b: f(name=b)) for k, b in backends.items()}
        impls["plain_pytorch"] = lambda layer=layer, x=x, e=e: sum(t.sum() for t in plain_conv_layer(layer, x, edge_index, e))
        if peer is not None:
            peer_layer = peer.GVPConvLayer(node_dims, edge_dims, activations=(torch.relu, None), vector_gate=True)
            peer_layer.load_state_dict(layer.state_dict())
            peer_layer.to(device).eval()
            params += list(peer_layer.parameters())
            impls["gvp_pytorch"] = lambda pl=peer_layer, x=x, e=e: sum(t.sum() for t in pl(x, edge_index, e))
        runs[f"layer e{edge_dims[0]},{edge_dims[1]}"] = impls

    model = GVPGNN(input_dim=input_dim, node_h_dim=node_dims, edge_h_dim=edge_dims_list[0], num_layers=depth)
    model = model.to(device).eval()
    x_model = torch.randn(n, input_dim, generator=gen).to(device)
    params += list(model.parameters())
    b, nb = batch.batch, batch.num_proteins

    def model_fn(name):
        set_backend(model, name)
        return model(x_model, batch.pos, b, nb, edge_index=edge_index)["graph_feature"].sum()

    impls = {k: (lambda bk=bk: model_fn(bk)) for k, bk in backends.items()}
    impls["plain_pytorch"] = lambda: plain_gvpgnn(model, x_model, batch.pos, edge_index, b, nb).sum()
    runs["gvpgnn"] = impls

    def backward(fn):
        def run():
            fn().backward()
            for p in params:
                p.grad = None
        return run

    def forward(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    tasks = {}
    for task, impls in runs.items():
        tasks[(task, "fwd")] = {k: forward(f) for k, f in impls.items()}
        tasks[(task, "fwd+bwd")] = {k: backward(f) for k, f in impls.items()}
    return tasks, num_edges, auto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="one batch of 2 proteins <= 80 residues, 1 repeat")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="batch sizes in proteins (default 2 8 32 on GPU, 2 8 on CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10 on GPU, 2 on CPU)")
    parser.add_argument("--node-dims", type=parse_dims, default=(256, 16), help="scalars,vectors (256,16)")
    parser.add_argument("--edge-dims", type=parse_dims, nargs="+", default=[(64, 1), (16, 1)],
                        help="edge scalars,vectors of the layer task (the first is the encoder's)")
    parser.add_argument("--depth", type=int, default=5, help="GVPConvLayers of the encoder (5)")
    parser.add_argument("--input-dim", type=int, default=1280, help="encoder input (1280 = ESM-2 650M)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest protein used (default 500 on GPU, 100 on CPU)")
    parser.add_argument("--peer", action="store_true", help="also time gvp-pytorch (ProteinWorkshop's copy)")
    parser.add_argument("--out", default=None, help="JSON-lines file (default: benchmarks/results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([2] if args.quick else ([2, 8, 32] if gpu else [2, 8]))
    repeats = args.repeats or (1 if args.quick else (10 if gpu else 2))
    max_len = args.max_len or (80 if args.quick else (500 if gpu else 100))
    peer = load_gvp_pytorch() if args.peer else None
    if args.peer and peer is None:
        print("# --peer: gvp-pytorch (proteinworkshop + torch_geometric + torch_scatter) not importable; skipped")

    proteins = real_proteins(min_len=50, max_len=max_len)
    info = machine_info(device)
    print_header(info, f"nodes {args.node_dims}, depth {args.depth}, input {args.input_dim}")
    rows = []
    for size in sizes:
        batch = spread_batch(proteins, size, device)
        tasks, num_edges, auto = implementations(batch, device, args.node_dims, args.edge_dims, args.depth,
                                                 args.input_dim, peer)
        for (task, mode), impls in tasks.items():
            res = measure(impls, device, repeats=repeats, warmup=1)
            for name, r in res.items():
                row = {"task": task.split()[0], "mode": mode, "impl": name, "proteins": size,
                       "residues": batch.num_nodes, "edges": num_edges, "node_dims": list(args.node_dims),
                       "edge_dims": [int(t) for t in task.split()[1][1:].split(",")] if " " in task
                       else list(args.edge_dims[0]), "depth": args.depth if task == "gvpgnn" else 1,
                       "auto_backend": auto, **r}
                row["speedup_vs_plain_pytorch"] = res["plain_pytorch"]["median_ms"] / r["median_ms"]
                if "peak_mem_mb" in r and res["plain_pytorch"].get("peak_mem_mb"):
                    row["mem_vs_plain_pytorch"] = r["peak_mem_mb"] / res["plain_pytorch"]["peak_mem_mb"]
                rows.append(row)
    for row in rows:
        row["edge"] = ",".join(str(d) for d in row["edge_dims"])
    columns = ["task", "edge", "mode", "proteins", "residues", "edges", "impl", "median_ms", "speedup_vs_plain_pytorch"]
    if gpu:
        columns += ["peak_mem_mb", "mem_vs_plain_pytorch"]
    print_table(rows, columns)
    for row in rows:
        del row["edge"]
    path = write_jsonl(rows, info, "bench_gvp", args.out)
    print(f"# results appended to {path}")


if __name__ == "__main__":
    main()
