"""Fleet throughput: aggregate images/s of K masked networks trained at once
(``elastigraph.train.fleet.train_fleet``) against the same K trainings run one after
another in one process (``train()`` K times) and as K separate processes running at the
same time, for K in ``--ks`` and each width in ``--widths``.

    python benchmarks/fleet_speed.py --quick                       # CPU, about a minute
    python benchmarks/fleet_speed.py --ks 1 2 4 8 16 --widths 8 16 --out fleet.json

Every network is ``--model`` (cifar_resnet_20) with its own seed, initial weights, 90%
random mask and data order, batch ``--batch-size``, on a synthetic 1x28x28 set (the
content does not matter for speed). Aggregate images/s = K x steps x batch / time of
the timed steps (each loop's own timer: setup, dataset transfer and evaluation
excluded; for processes, first timed-step start to last timed-step end across all K,
process start-up excluded). Each row is the best of ``--repeats`` timed runs after a
warm-up. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastigraph import masks, models  # noqa: E402
from elastigraph.train import TrainConfig, synthetic, train  # noqa: E402
from elastigraph.train.fleet import train_fleet  # noqa: E402


def _members(model: str, width: int, k: int, sparsity: float, classes: int = 10):
    out = []
    for s in range(k):
        torch.manual_seed(s)
        m = models.create(model, in_chans=1, num_classes=classes, width=width)
        g = torch.Generator().manual_seed(1000 + s)
        mk = {n: torch.rand(v.shape, generator=g) >= sparsity for n, v in masks.full_mask(m).items()}
        out.append((m, mk))
    return out


def _cfgs(k: int, steps: int, args) -> list[TrainConfig]:
    return [TrainConfig(steps=steps, batch_size=args.batch_size, lr=0.05, schedule="constant", seed=s,
                        device=args.device, amp=not args.no_amp, compile=args.compile) for s in range(k)]


def run_fleet(ds, args, width: int, k: int, steps: int) -> float:
    mem = _members(args.model, width, k, args.sparsity)
    res = train_fleet([m for m, _ in mem], ds, None, _cfgs(k, steps, args), masks=[mk for _, mk in mem])
    return res[0].images_per_s  # aggregate over the fleet


def run_sequential(ds, args, width: int, k: int, steps: int) -> float:
    mem = _members(args.model, width, k, args.sparsity)
    imgs, secs = 0, 0.0
    for (m, mk), cfg in zip(mem, _cfgs(k, steps, args)):
        r = train(m, ds, None, cfg, mask=mk)
        imgs += steps * args.batch_size
        secs += steps * args.batch_size / r.images_per_s
    return imgs / secs


def _child(args) -> None:
    """One process of the 'processes' mode: warm up, train one network, print its timed
    section as wall-clock [start, end] (time.time) on the last line."""
    ds = synthetic(args.n, (1, 28, 28), 10, seed=0)
    (m, mk), = _members(args.model, args.width, 1, args.sparsity)
    cfg = _cfgs(1, args.warmup, args)[0]
    cfg.seed = args.seed
    train(copy.deepcopy(m), ds, None, cfg, mask=mk)
    cfg = _cfgs(1, args.steps, args)[0]
    cfg.seed = args.seed
    r = train(m, ds, None, cfg, mask=mk)
    end_wall = time.time()
    timed = args.steps * args.batch_size / r.images_per_s
    print(json.dumps({"start": end_wall - timed, "end": end_wall}))


def run_processes(ds, args, width: int, k: int, steps: int) -> float:
    """K processes at once, each with max(1, this process's threads // K) threads (so K
    processes never oversubscribe the cores this process would use alone)."""
    threads = max(1, torch.get_num_threads() // k)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    base = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", args.model, "--width", str(width),
            "--steps", str(steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--sparsity", str(args.sparsity), "--device", args.device, "--n", str(args.n)]
    base += ["--no-amp"] if args.no_amp else []
    base += ["--compile"] if args.compile else []
    procs = [subprocess.Popen(base + ["--seed", str(s)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in range(k)]
    spans = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"child process failed ({p.returncode}): {err[-2000:]}")
        spans.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    return k * steps * args.batch_size / wall


MODES = {"fleet": run_fleet, "sequential": run_sequential, "processes": run_processes}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="K in 1 2 4, width 8, few steps: about a minute on a CPU")
    ap.add_argument("--model", default="cifar_resnet_20")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="default 8 16 (8 with --quick)")
    ap.add_argument("--ks", type=int, nargs="+", default=None, help="fleet sizes (default 1 2 4 8 16; 1 2 4 with --quick)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--process-max-k", type=int, default=16, help="skip the processes mode above this K")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 4 quick, 20 otherwise)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 quick, 3 otherwise)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--n", type=int, default=2048, help="synthetic training images")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.child:
        _child(args)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = args.widths or ([8] if args.quick else [8, 16])
    ks = args.ks or ([1, 2, 4] if args.quick else [1, 2, 4, 8, 16])
    dev = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if args.device == "auto" else args.device))
    args.device = str(dev)
    ds = synthetic(args.n, (1, 28, 28), 10, seed=0)
    rows = []
    t_all = time.perf_counter()
    for width in widths:
        for mode in args.modes:  # warm-up per mode (kernels, allocator, compile caches)
            if mode != "processes":
                MODES[mode](ds, args, width, 2 if mode == "fleet" else 1, args.warmup)
        for k in ks:
            for mode in args.modes:
                if mode == "processes" and k > args.process_max_k:
                    continue
                runs, err = [], None
                for _ in range(args.repeats):
                    try:
                        runs.append(MODES[mode](ds, args, width, k, args.steps))
                    except Exception as e:  # noqa: BLE001 -- recorded, the table goes on
                        err = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                        break
                rows.append({"width": width, "k": k, "mode": mode,
                             "images_per_s": round(max(runs), 1) if runs else None,
                             "runs": [round(r, 1) for r in runs], **({"error": err} if err else {})})
                print(f"width {width} K {k:2d} {mode:10s} {rows[-1]['images_per_s']}" + (f"  {err}" if err else ""),
                      flush=True)
    one = {r["width"]: r["images_per_s"] for r in rows if r["k"] == 1 and r["mode"] == "sequential" and r["images_per_s"]}
    for r in rows:
        if r["images_per_s"] and one.get(r["width"]):
            r["vs_one_at_a_time"] = round(r["images_per_s"] / one[r["width"]], 2)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    result = {
        "device": f"{dev.type}: {name}", "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "sparsity": args.sparsity,
        "amp": (not args.no_amp) and dev.type == "cuda", "compile": args.compile, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "wall_s": round(time.perf_counter() - t_all, 1), "rows": rows,
    }
    print(f"\nfleet speed: {args.model}, batch {args.batch_size}, {result['device']}, "
          f"amp={result['amp']} compile={args.compile}  (aggregate images/s; x = vs K=1 sequential)")
    print(f"{'width':>5} {'K':>3} " + " ".join(f"{m:>18}" for m in args.modes))
    for width in widths:
        for k in ks:
            cells = []
            for m in args.modes:
                r = next((r for r in rows if r["width"] == width and r["k"] == k and r["mode"] == m), None)
                if r is None or r["images_per_s"] is None:
                    cells.append(f"{'-' if r is None else 'error':>18}")
                else:
                    cells.append(f"{r['images_per_s']:>10.0f} ({r.get('vs_one_at_a_time', 0):>4.1f}x)")
            print(f"{width:>5} {k:>3} " + " ".join(cells))
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
            f.write(json.dumps(result, indent=1) + "\n")
        os.replace(f.name, args.out)
    print(line)
    return result


if __name__ == "__main__":
    main()
