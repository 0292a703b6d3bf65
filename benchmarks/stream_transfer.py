"""Streamed folder-to-folder transfer of a ~1B-parameter Llama (issue 23, "done when").

Set-up (nothing downloaded): a random-init Llama with TinyLlama-1.1B's shape (hidden
2048, intermediate 5632, 32 heads, 4 key/value heads, vocabulary 32000, 22 layers) is
written as bf16 safetensors shards of 1 GB straight from a meta-device model, one
tensor at a time. Then, each in its own subprocess, ``transfer_folder`` stretches it to
33 layers (1.5x) with a global magnitude mask (sparsity 0.5) and with a 2:4 mask, and the
peak resident memory of that process (``VmHWM``, everything), its resident memory once
torch, transformers and elastigraph are imported (``imports``) and its time are reported;
the result is loaded with ``from_pretrained`` (in another subprocess) to check it.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/stream_transfer.py --work /tmp/stream --out stream.json

``--data-limit-gb X`` runs each transfer as tests/_stream_limited.py does at small scale:
after one call on a tiny checkpoint (code loaded), the process's data segment
(RLIMIT_DATA: heap and private writable mappings) may grow by X GB only, and the
checkpoint's fp32 size is checked not to fit under it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIG = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
              vocab_size=32000, num_hidden_layers=22, max_position_embeddings=2048)


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def write_source(path: Path, layers: int, config: dict = CONFIG) -> int:
    import torch
    import transformers
    from safetensors.torch import save_file

    cfg = transformers.LlamaConfig(**{**config, "num_hidden_layers": layers}, torch_dtype="bfloat16")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shard, size, files, wmap, total, params = {}, 0, [], {}, 0, 0

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            files.append(list(shard))
        shard, size = {}, 0

    for k, t in model.state_dict().items():
        if t.dim() == 1:
            v = torch.ones(t.shape, dtype=torch.bfloat16)
        else:
            v = (torch.randn(t.shape, generator=g) * 0.02).to(torch.bfloat16)
        if size + v.numel() * 2 > (1 << 30):
            flush()
        shard[k] = v
        size += v.numel() * 2
        total += v.numel() * 2
        params += v.numel()
    flush()
    for i, keys in enumerate(files):
        new = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        os.replace(path / f"model-{i + 1:05d}.safetensors", path / new)
        wmap.update({k: new for k in keys})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}))
    cfg.save_pretrained(str(path))
    return params


def _rss() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def _data() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmData:\s+(\d+) kB", f.read()).group(1)) * 1024


def child_transfer(src: str, dst: str, layers: int, kind: str, warm: str, data_limit: int) -> dict:
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported before the baseline)

    from elastigraph.transfer_folder import transfer_folder

    base = _rss()  # the interpreter with torch, transformers and elastigraph imported
    kw = {"sparsity": 0.5} if kind == "magnitude" else {"n_m": "2:4"}
    row: dict = {"kind": kind}
    if data_limit:  # as tests/_stream_limited.py: warm up on a tiny checkpoint, then limit the data segment
        import ctypes
        import gc

        import torch

        transfer_folder(warm, dst + "-warm", num_hidden_layers=2, overwrite=True, **kw)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        row["data_before_bytes"] = _data()
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (row["data_before_bytes"] + data_limit, hard))
        row["data_limit_bytes"] = data_limit
        params = json.loads(Path(src, "model.safetensors.index.json").read_text())["metadata"]["total_size"] // 2
        try:  # the control: the checkpoint's fp32 size cannot be allocated under the limit
            torch.empty(params, dtype=torch.float32).fill_(1)
            row["limit_binds"] = False
        except (RuntimeError, MemoryError):
            row["limit_binds"] = True
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    transfer_folder(src, dst, num_hidden_layers=layers, overwrite=True, **kw)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    row.update({"seconds": round(time.perf_counter() - t0, 1),
                "cpu_s": round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 1), "peak_rss_bytes": _hwm(),
                "imports_rss_bytes": base})
    return row


def child_load(dst: str) -> dict:
    import torch
    import transformers

    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3, 4]])).logits
    return {"loaded_params": n, "layers": model.config.num_hidden_layers, "finite": bool(torch.isfinite(out).all()),
            "load_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/stream_transfer")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--out", default="stream_transfer.json")
    ap.add_argument("--kinds", nargs="+", default=["magnitude", "2:4"])
    ap.add_argument("--data-limit-gb", type=float, default=0.0,
                    help="run each transfer under RLIMIT_DATA = its data segment after a warm-up call + this")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "transfer":
            print(json.dumps(child_transfer(args.child[1], args.child[2], int(args.child[3]), args.child[4],
                                            args.child[5], int(args.child[6]))))
        else:
            print(json.dumps(child_load(args.child[1])))
        return
    work = Path(args.work)
    src = work / "src"
    t0 = time.perf_counter()
    if not (src / "model.safetensors.index.json").is_file():
        params = write_source(src, args.layers)
    else:
        params = None
    setup_s = time.perf_counter() - t0
    warm = work / "warm"
    if not (warm / "model.safetensors.index.json").is_file():
        write_source(warm, 1, {**CONFIG, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "vocab_size": 256})
    src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    rows = []
    target = args.layers * 3 // 2
    for kind in args.kinds:
        dst = work / f"dst-{kind.replace(':', 'of')}"
        cmd = [sys.executable, __file__, "--child", "transfer", str(src), str(dst), str(target), kind, str(warm),
               str(int(args.data_limit_gb * 2**30))]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["dst_bytes"] = sum(p.stat().st_size for p in dst.glob("*.safetensors") if p.name != "mask.safetensors")
        row["mask_bytes"] = (dst / "mask.safetensors").stat().st_size
        res = subprocess.run([sys.executable, __file__, "--child", "load", str(dst)], capture_output=True, text=True)
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        row.update(json.loads(res.stdout.strip().splitlines()[-1]))
        rows.append(row)
        shutil.rmtree(dst)
        shutil.rmtree(str(dst) + "-warm", ignore_errors=True)
    gb = 1 / 2**30
    print(f"source: {args.layers} layers, {src_bytes * gb:.2f} GB bf16 (set-up {setup_s:.0f} s); target {target} layers")
    print(f"{'mask':>10} {'s':>7} {'cpu s':>7} {'peak RSS':>9} {'imports':>8} {'output':>8} {'mask file':>9} {'loads':>6}")
    for r in rows:
        print(f"{r['kind']:>10} {r['seconds']:>7.1f} {r['cpu_s']:>7.1f} {r['peak_rss_bytes'] * gb:>7.2f}GB "
              f"{r['imports_rss_bytes'] * gb:>6.2f}GB {r['dst_bytes'] * gb:>6.2f}GB {r['mask_bytes'] * gb:>7.2f}GB "
              f"{str(r['finite'] and r['layers'] == target):>6}")
        if "data_limit_bytes" in r:
            print(f"{'':>10} under RLIMIT_DATA = data after warm-up + {r['data_limit_bytes'] * gb:.2f} GB "
                  f"(the checkpoint's fp32 size could not be allocated: {r['limit_binds']})")
    Path(args.out).write_text(json.dumps({"source_layers": args.layers, "source_bytes": src_bytes, "params": params,
                                          "target_layers": target, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
