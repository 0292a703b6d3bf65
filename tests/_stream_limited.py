"""Run by tests/test_transfer_folder.py::test_streams_a_checkpoint_larger_than_the_memory_limit
in a subprocess of its own (the limit must not touch pytest's process).

    python _stream_limited.py WARM_SRC SRC OUT LAYERS BUDGET KIND [KIND ...]

First it runs ``transfer_folder`` (the first KIND) on a tiny checkpoint of the same
architecture (WARM_SRC): every module is imported and every code path has run once, so
what follows allocates data only. Then it limits the process's data segment
(``RLIMIT_DATA``: its heap and private writable mappings, where every tensor and every
Python object lives; not read-only file mappings nor the page cache) to what it uses at
that point plus BUDGET bytes, checks that the limit binds (allocating the checkpoint's
fp32 size fails), and streams SRC into OUT/KIND (LAYERS layers) for each KIND
(``magnitude``: global sparsity 0.5; ``2:4``). Prints one JSON line.
"""

import ctypes
import gc
import json
import re
import resource
import sys

import torch

from elastigraph.transfer_folder import transfer_folder


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def main() -> None:
    warm_src, src, out, layers, budget, *kinds = sys.argv[1:]
    kws = {kind: {"sparsity": 0.5} if kind == "magnitude" else {"n_m": kind} for kind in kinds}
    # one warm-up call plans and writes like all (the masks differ only in torch ops)
    transfer_folder(warm_src, f"{out}/warm", num_hidden_layers=2, shard_bytes=1 << 16, **kws[kinds[0]])
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = status("VmData")
    limit = base + int(budget)
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    params = sum(v for v in json.loads(open(f"{src}/model.safetensors.index.json").read())["metadata"].values()) // 2
    try:  # the control: the checkpoint in fp32 does not fit under the limit
        torch.empty(params, dtype=torch.float32).fill_(1)
        binds = False
    except (RuntimeError, MemoryError):
        binds = True
    for kind, kw in kws.items():
        transfer_folder(src, f"{out}/{kind}", num_hidden_layers=int(layers), **kw)
    print(json.dumps({"base_data": base, "limit_data": limit, "binds": binds, "end_data": status("VmData"),
                      "peak_rss": status("VmHWM")}))


if __name__ == "__main__":
    main()
