"""How long does a ticket transfer take on CPU, and where does the time go?

For each pair (model construction excluded): fx trace, shape propagation (meta tensors),
the rest of graph building, regions/units/segments, matching + plan + tensor pairing,
and ``Ticket.apply`` (copying the weights into the target and installing the mask).
Times are the best of ``--repeat`` runs. Memory: the peak of Python-level allocations
during transfer + apply measured with ``tracemalloc`` in a separate run (tensor storage
allocated by torch's C++ allocator is not seen by it; the transferred weights are views
of the source's tensors, so apply's copies go into the target's existing storage), plus
the process's peak RSS (``resource.getrusage``, models included).

    python benchmarks/transfer_speed.py [--out benchmarks/results/transfer_speed.json] [--repeat 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elastigraph import masks  # noqa: E402

# the modules themselves (``elastigraph.transfer`` the attribute may be the function)
eg_graph = importlib.import_module("elastigraph.graph")
eg_capture = importlib.import_module("elastigraph.graph.capture")
eg_transfer = importlib.import_module("elastigraph.transfer")


def _cases() -> list[tuple[str, Callable[[], torch.nn.Module], Callable[[], torch.nn.Module]]]:
    import timm
    import torchvision.models as tvm

    return [
        ("resnet18 -> resnet34", lambda: tvm.resnet18(), lambda: tvm.resnet34()),
        ("resnet50 -> resnet152", lambda: tvm.resnet50(), lambda: tvm.resnet152()),
        ("vit_base depth 12 -> 24", lambda: timm.create_model("vit_base_patch16_224"),
         lambda: timm.create_model("vit_base_patch16_224", depth=24)),
        ("convnext_tiny -> small", lambda: timm.create_model("convnext_tiny"),
         lambda: timm.create_model("convnext_tiny", depths=(3, 3, 27, 3))),
    ]


_PHASES = {
    "trace": (eg_capture, "trace"),
    "shape_prop": (eg_capture, "propagate_shapes"),
    "graph": (eg_graph, "build_graph"),
    "regions": (eg_graph, "decompose"),
    "segments": (eg_graph, "find_segments"),
    "match": (eg_transfer, "match"),
}


@contextmanager
def _timed(acc: dict[str, float]):
    """Wrap the phase functions so that their time accumulates into ``acc``."""
    saved = []
    for phase, (mod, name) in _PHASES.items():
        fn = getattr(mod, name)
        saved.append((mod, name, fn))

        def wrapper(*a, __fn=fn, __phase=phase, **k):
            t = time.perf_counter()
            try:
                return __fn(*a, **k)
            finally:
                acc[__phase] = acc.get(__phase, 0.0) + time.perf_counter() - t

        setattr(mod, name, wrapper)
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _one(src, mask, dst) -> dict[str, float]:
    acc: dict[str, float] = {}
    with _timed(acc):
        t0 = time.perf_counter()
        ticket = eg_transfer.transfer(src, mask, dst)
        t1 = time.perf_counter()
        ticket.apply(dst)
        t2 = time.perf_counter()
    out = {
        "trace_ms": acc["trace"] * 1e3,
        "shape_prop_ms": acc["shape_prop"] * 1e3,
        "graph_rest_ms": (acc["graph"] - acc["trace"] - acc["shape_prop"]) * 1e3,
        "units_ms": (acc["regions"] + acc["segments"]) * 1e3,
        "match_plan_ms": (t1 - t0 - acc["graph"] - acc["regions"] - acc["segments"]) * 1e3,
        "apply_ms": (t2 - t1) * 1e3,
        "total_ms": (t2 - t0) * 1e3,
    }
    out["stages"] = [f"{len(s.src_blocks)}->{len(s.dst_blocks)}" for s in ticket.plan.stages]
    return out


def _strip_masks(model: torch.nn.Module) -> None:
    """Undo apply() between repeats so that each run starts from a plain target."""
    for name in list(masks.from_model(model)):
        mod_name, _, attr = name.rpartition(".")
        torch.nn.utils.prune.remove(model.get_submodule(mod_name), attr)


def run(repeat: int) -> list[dict[str, Any]]:
    rows = []
    for label, mk_src, mk_dst in _cases():
        torch.manual_seed(0)
        src, dst = mk_src(), mk_dst()
        g = torch.Generator().manual_seed(0)
        mask = {k: torch.rand(v.shape, generator=g) < 0.2 for k, v in masks.full_mask(src).items()}
        _one(src, mask, dst)  # warm-up (imports, first-call dispatch)
        _strip_masks(dst)
        best = None
        for _ in range(repeat):
            r = _one(src, mask, dst)
            _strip_masks(dst)
            if best is None or r["total_ms"] < best["total_ms"]:
                best = r
        tracemalloc.start()
        eg_transfer.transfer(src, mask, dst).apply(dst)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        _strip_masks(dst)
        best.update(case=label, py_peak_mb=peak / 2**20,
                    rss_peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    src_params_m=sum(p.numel() for p in src.parameters()) / 1e6,
                    dst_params_m=sum(p.numel() for p in dst.parameters()) / 1e6)
        rows.append(best)
        del src, dst, mask
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/transfer_speed.json")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's). On a busy 2-core machine 1 thread is ~10x "
                         "faster for the copies: OpenMP's 2-thread loops stall when the other core is taken")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.repeat)

    from rich.console import Console
    from rich.table import Table

    cols = ["trace_ms", "shape_prop_ms", "graph_rest_ms", "units_ms", "match_plan_ms", "apply_ms", "total_ms",
            "py_peak_mb", "rss_peak_mb"]
    heads = ["trace", "shape-prop", "graph", "units", "match+plan", "apply", "total ms", "py peak MB", "RSS MB"]
    t = Table(title=f"trace + plan + apply on CPU ({torch.get_num_threads()} threads), best of {args.repeat}, "
                    "model construction excluded; times in ms",
              caption="py peak: tracemalloc during transfer+apply (Python objects only); RSS: process peak, models included")
    t.add_column("case")
    t.add_column("blocks per stage")
    for h in heads:
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(r["case"], " ".join(r["stages"]), *[f"{r[c]:.0f}" for c in cols])
    Console(width=160).print(t)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "repeat": args.repeat, "memory": "py_peak_mb: tracemalloc peak during "
               "transfer+apply; rss_peak_mb: resource.getrusage ru_maxrss of the process (models included)",
               "rows": rows}
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump(payload, f, indent=2)
    os.replace(f.name, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
