"""Training throughput: elastigraph's loop dense vs masked (a random mask, 90% sparse by
default) vs a plain baseline loop as in the paper's code (DataLoader over a
TensorDataset, fp32, weights re-masked with ``param.data.mul_(mask)`` after every
optimizer step), same model, batch size and device.

    python benchmarks/train_speed.py --quick            # < 1 min on a CPU
    python benchmarks/train_speed.py --steps 200 --out speed.json

The last output line is one JSON object (``device``, ``dense_images_per_s``,
``masked_images_per_s``, ``baseline_images_per_s``, ...). Each variant is warmed up
first, then timed ``--repeats`` times, interleaved; the best run counts (the least
disturbed by other load on the machine); all runs are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elastigraph import masks, models  # noqa: E402
from elastigraph.train import TrainConfig, load_dataset, train  # noqa: E402


def random_mask(model: torch.nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Keep each prunable weight with probability 1 - sparsity (global, seeded)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) >= sparsity for k, v in masks.full_mask(model).items()}


def ours(model_name, ds, mask, steps, cfg_kw, init_state) -> float:
    """images/s of elastigraph.train.train over ``steps`` steps (its own timer excludes
    setup and the final evaluation, which test_set=None skips anyway)."""
    model = models.create(model_name, in_chans=ds.spec.in_chans, num_classes=ds.spec.num_classes)
    model.load_state_dict(init_state)
    r = train(model, ds, None, TrainConfig(steps=steps, **cfg_kw), mask=mask)
    return r.images_per_s


def baseline(model_name, ds, mask, steps, warmup, cfg_kw, init_state, device) -> float:
    """images/s of the paper-style loop: DataLoader(TensorDataset) batches moved to the
    device, fp32, ``param.data.mul_(mask)`` after every optimizer step."""
    model = models.create(model_name, in_chans=ds.spec.in_chans, num_classes=ds.spec.num_classes)
    model.load_state_dict(init_state)
    model.to(device).train()
    mean = torch.tensor(ds.spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.spec.std).view(1, -1, 1, 1)
    x = (ds.x.float() / 255 - mean) / std
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, ds.y), batch_size=cfg_kw["batch_size"], shuffle=True, drop_last=True,
        pin_memory=device.type == "cuda",
    )
    params = dict(model.named_parameters())
    dev_mask = {k: v.to(device, torch.float32) for k, v in mask.items()}
    for k, m in dev_mask.items():
        params[k].data.mul_(m)
    opt = torch.optim.SGD(model.parameters(), lr=cfg_kw["lr"], momentum=0.9, weight_decay=1e-4)
    it = iter(loader)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k, m in dev_mask.items():
            params[k].data.mul_(m)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * cfg_kw["batch_size"] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps: under a minute on a CPU")
    ap.add_argument("--model", default="cifar_resnet_20")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10 quick, 100 otherwise)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 quick, 20 otherwise)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 3 quick, 5 otherwise)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile in elastigraph's loop")
    ap.add_argument("--no-amp", action="store_true", help="fp32 in elastigraph's loop on CUDA too")
    ap.add_argument("--no-channels-last", action="store_true", help="NCHW memory format in elastigraph's loop on CUDA")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 with --quick on a CPU, where a "
                         "shared 2-core machine makes 2-thread runs collapse under contention)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here as well")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    threads = args.threads or (1 if args.quick and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    steps = args.steps or (10 if args.quick else 100)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 20)
    repeats = args.repeats or (3 if args.quick else 5)

    ds = load_dataset(args.dataset, split="train")
    torch.manual_seed(0)
    proto = models.create(args.model, in_chans=ds.spec.in_chans, num_classes=ds.spec.num_classes)
    init_state = {k: v.clone() for k, v in proto.state_dict().items()}
    mask = random_mask(proto, args.sparsity, seed=0)
    cfg_kw = dict(batch_size=args.batch_size, lr=0.05, schedule="constant", device=str(device),
                  compile=args.compile, amp=not args.no_amp, channels_last=not args.no_channels_last)

    runs: dict[str, list[float]] = {"dense": [], "masked": [], "baseline": []}
    # warm-up (kernels, allocator, compile caches), then interleaved timed runs
    ours(args.model, ds, None, warmup, cfg_kw, init_state)
    ours(args.model, ds, mask, warmup, cfg_kw, init_state)
    for _ in range(repeats):
        runs["dense"].append(ours(args.model, ds, None, steps, cfg_kw, init_state))
        runs["masked"].append(ours(args.model, ds, mask, steps, cfg_kw, init_state))
        runs["baseline"].append(baseline(args.model, ds, mask, steps, warmup, cfg_kw, init_state, device))
    best = {k: max(v) for k, v in runs.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    result = {
        "device": f"{device.type}: {name}",
        "model": args.model,
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "sparsity": masks.sparsity(mask),
        "amp": cfg_kw["amp"] and device.type == "cuda",
        "compile": args.compile,
        "channels_last": cfg_kw["channels_last"] and device.type == "cuda",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dense_images_per_s": round(best["dense"], 1),
        "masked_images_per_s": round(best["masked"], 1),
        "baseline_images_per_s": round(best["baseline"], 1),
        "masked_overhead": round(1 - best["masked"] / best["dense"], 4),
        "speedup_vs_baseline": round(best["masked"] / best["baseline"], 3),
        "runs_images_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"train speed: {args.model} on {args.dataset}, batch {args.batch_size}, {result['device']}")
    for col in ("loop", "images/s (best)", "all runs", "vs dense"):
        t.add_column(col, justify="right" if col != "loop" else "left")
    for k, label in (("dense", "elastigraph dense"), ("masked", f"elastigraph masked ({result['sparsity']:.0%})"),
                     ("baseline", "baseline (DataLoader, mul_ mask)")):
        t.add_row(label, f"{best[k]:.0f}", ", ".join(f"{x:.0f}" for x in runs[k]), f"{best[k] / best['dense']:.3f}")
    Console(stderr=False).print(t)
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
            f.write(line + "\n")
        os.replace(f.name, args.out)
    print(line)
    return result


if __name__ == "__main__":
    main()
