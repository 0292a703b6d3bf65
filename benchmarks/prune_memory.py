"""Peak memory and time of magnitude pruning and mask installation on a random-init Llama
(issue 23): hidden 1024, 16 heads, vocabulary 32,000, intermediate 2730 (8 layers: the
issue's 165 M-parameter model), 4 and 8 layers, built with ``elastigraph.models.create``;
``--hidden 512 --heads 8 --intermediate 1376 --layers 4`` is the issue's 45 M-parameter one.
Phases: ``magnitude`` (global, sparsity 0.5), ``magnitude_2:4``, ``install`` (of the
magnitude mask), ``transfer`` (a random mask onto a model of L + 4 layers, as the issue's
table) and ``apply`` (``Ticket.apply`` of that transfer).

Each model is measured in its own subprocess; ``s`` is wall-clock time, ``cpu s`` the
process's user+system CPU time (all threads), which a loaded machine inflates less. Peak memory is the process's resident-set
high-water mark (``VmHWM``), reset (``/proc/self/clear_refs``) after the model is built and
freed heap is returned to the OS (``malloc_trim``), so the number is what the step adds on
top of what is already in memory.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/prune_memory.py --out prune_memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time

LLAMA = dict(hidden_size=1024, num_attention_heads=16, vocab_size=32000, intermediate_size=2730)


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _trim() -> None:
    """Give freed heap back to the OS (glibc), so memory an earlier step freed is not
    reused unseen by the next one's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure(fn):
    gc.collect()
    _trim()
    base = _status("VmRSS")
    _reset_peak()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return out, seconds, cpu, _status("VmHWM") - base


def child(layers: int, phases: list[str]) -> dict:
    import torch

    import elastigraph as eg

    torch.manual_seed(0)
    model = eg.models.create("hf:llama", num_hidden_layers=layers, **LLAMA)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    row = {"layers": layers, "params": params, "model_bytes": model_bytes, "threads": torch.get_num_threads()}
    mask = None
    # down_proj's 2730 inputs are not whole groups of 4: 2:4 on every other weight
    names = [n for n in eg.masks.prunable_parameters(model) if model.get_parameter(n).shape[1] % 4 == 0]
    for phase in phases:
        if phase == "magnitude":
            mask, s, cpu, peak = _measure(lambda: eg.prune.magnitude(model, sparsity=0.5))
        elif phase == "magnitude_2:4":
            _, s, cpu, peak = _measure(lambda: eg.prune.magnitude(model, n_m=(2, 4), names=names))
        elif phase == "transfer":  # the table: a random mask, L -> L + 4 layers
            torch.manual_seed(1)
            dst = eg.models.create("hf:llama", num_hidden_layers=layers + 4, **LLAMA)
            rmask = eg.prune.random(model, 0.5, seed=0)
            ticket, s, cpu, peak = _measure(lambda: eg.transfer(model, rmask, dst))
            del rmask
        elif phase == "apply":
            _, s, cpu, peak = _measure(lambda: ticket.apply(dst))
        elif phase == "apply_dense":  # a plain dense-with-zeros model (run it instead of apply)
            _, s, cpu, peak = _measure(lambda: ticket.apply(dst, dense=True))
        elif phase == "install":
            if mask is None:
                mask = eg.prune.magnitude(model, sparsity=0.5)
            _, s, cpu, peak = _measure(lambda: eg.masks.install(model, mask))
        else:
            raise SystemExit(f"unknown phase {phase!r}")
        row[f"{phase}_s"] = round(s, 3)
        row[f"{phase}_cpu_s"] = round(cpu, 3)
        row[f"{phase}_peak_bytes"] = peak
        gc.collect()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--phases", nargs="+", default=["magnitude", "install"])
    ap.add_argument("--out", default="prune_memory.json")
    ap.add_argument("--hidden", type=int, default=LLAMA["hidden_size"])
    ap.add_argument("--intermediate", type=int, default=LLAMA["intermediate_size"])
    ap.add_argument("--heads", type=int, default=LLAMA["num_attention_heads"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    LLAMA.update(hidden_size=args.hidden, intermediate_size=args.intermediate, num_attention_heads=args.heads)
    if args.child:
        print(json.dumps(child(args.layers[0], args.phases)))
        return
    rows = []
    for layers in args.layers:
        cmd = [sys.executable, __file__, "--child", "--layers", str(layers), "--phases", *args.phases,
               "--hidden", str(args.hidden), "--intermediate", str(args.intermediate), "--heads", str(args.heads)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if res.returncode:
            sys.exit(f"layers={layers} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    gb = 1 / 2**30
    head = f"{'layers':>6} {'params':>8} {'model':>8}" + "".join(f" {p + ' s':>14} {'cpu s':>8} {p + ' +peak':>18}" for p in args.phases)
    print(head)
    for r in rows:
        line = f"{r['layers']:>6} {r['params'] / 1e6:>7.1f}M {r['model_bytes'] * gb:>6.2f}GB"
        for p in args.phases:
            line += f" {r[p + '_s']:>14.2f} {r[p + '_cpu_s']:>8.2f} {r[p + '_peak_bytes'] * gb:>16.2f}GB"
        print(line)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "argv": sys.argv[1:]}, f, indent=1)


if __name__ == "__main__":
    main()
