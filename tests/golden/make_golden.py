"""Write tests/golden/records.json: the results.json records of every shipped recipe in
--smoke mode and of one small real (non-smoke) run, computed on one thread.

Run once on a known-good main (it was made on f342849, before the redesign of issue 17)
and commit the output; tests/test_golden.py reruns the same runs and asserts the records
are equal bit for bit, so a refactor that moves a number fails there.

    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from golden_runs import GOLDEN, RUNS, comparable, run_one  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    out: dict[str, list] = {}
    for name in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = comparable(run_one(name, Path(tmp)))
        print(name, len(out[name]), "records", flush=True)
    GOLDEN.write_text(json.dumps({"torch": torch.__version__, "threads": 1, "runs": out}, indent=1, sort_keys=True) + "\n")
    print("wrote", GOLDEN)


if __name__ == "__main__":
    main()
