"""Transfer each family's two depths both ways and judge every ticket independently:
OK (every target block came whole from one source block of its stage, checked by
tensor identity and the names the test suite knows), refused (SegmentMismatchError, with
its message) or WRONG (a ticket that check fails). Prints a table, writes JSON.

    PYTHONPATH=$PWD python benchmarks/plan_check.py [--out plan_check.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_units as T  # noqa: E402  (the models and the independent checker of the suite)

from elastigraph.errors import ElastigraphError  # noqa: E402
from elastigraph.transfer import transfer  # noqa: E402

IMG = (2, 3, 64, 64)
STAGES = r"^(?P<stage>stages\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"
CASES = [
    # name, constructor, depth a, depth b, example input, block pattern, alternating kinds
    *[(k, mk, a, b, IMG, pat, False) for k, (mk, a, b, pat) in T.THIRD_PARTY.items()],
    ("swin", T._swin, (2, 2), (4, 6), IMG, r"^(?P<stage>layers\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$", True),
    ("torchvision vit", T._tv_vit, 3, 5, (2, 3, 32, 32),
     r"^(?P<stage>encoder\.layers)\.encoder_layer_(?P<block>\d+)\.(?P<rest>.*)$", False),
    ("repvit", lambda d: T.timm.models.repvit.RepVit(embed_dim=(16, 24), depth=d, num_classes=4, img_size=64),
     (2, 2), (4, 6), IMG, STAGES, True),
    *[(k, mk, a, b, inp, STAGES, False) for k, (mk, a, b, inp) in T.SINGLE_PERIOD.items()],
    ("issue13 s1 LeViT-like", T.LevitLike, 2, 3, (2, 5, 8), T.BLOCKS, False),
    ("issue13 s1 two stages", lambda d: T.TwoStages(*d), (2, 2), (2, 4), (2, 8), T.TWO, False),
    ("issue13 s2 shape", T.ShapeNet, 2, 4, (2, 3, 32, 32), r"^(?P<stage>stage\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$", False),
    ("issue13 s2 side input", T.SideInputNet, 2, 4, (2, 3, 32, 32), T.BLOCKS, False),
    ("issue13 s3 assert", T.AssertNet, 2, 4, (2, 5, 8), r"^(?P<stage>layers)\.(?P<block>\d+)\.(?P<rest>.*)$", False),
    # issue 20: values that go past blocks (a bypassing half, a stage's context), a side
    # value each block hands to the next, blocks that hand each other two tensors
    ("issue20 bypass", T.CspLike, 2, 3, (2, 8), T.BLOCKS, False),
    ("issue20 context", T.ContextStage, 2, 4, (2, 8), T.BLOCKS, True),
    ("issue20 handed-on size", T.SizeNet, 2, 4, (2, 3, 32, 32), T.BLOCKS, False),
    ("issue20 two streams", T.TwoStreams, 2, 4, (2, 8), T.BLOCKS, False),
]


def run_one(mk, a, b, inp, pat, alt):
    torch.manual_seed(0)
    src, dst = mk(a), mk(b)
    try:
        t = transfer(src, T.rand_mask(src), dst, example_input=inp)
    except ElastigraphError as e:
        return "refused", str(e)[:300]
    except Exception as e:  # noqa: BLE001 (a crash is a result here)
        return "crash", f"{type(e).__name__}: {str(e)[:300]}"
    try:
        T.check_blocks(src, dst, t, pat, parity=alt)
    except AssertionError as e:
        return "WRONG", str(e).splitlines()[0][:300]
    return "OK", ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="plan_check.json")
    args = ap.parse_args()
    rows = []
    for name, mk, a, b, inp, pat, alt in CASES:
        for x, y in ((a, b), (b, a)):
            status, detail = run_one(mk, x, y, inp, pat, alt)
            rows.append({"family": name, "src": str(x), "dst": str(y), "status": status, "detail": detail})
            print(f"{name:24s} {str(x):14s} -> {str(y):14s} {status:8s} {detail[:90]}", flush=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("OK", "refused", "WRONG", "crash")}
    print(counts)
    Path(args.out).write_text(json.dumps({"rows": rows, "counts": counts}, indent=2))


if __name__ == "__main__":
    main()
