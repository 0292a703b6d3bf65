"""Whole-recipe wall clock with and without fleets / worker processes / Ray.

    python benchmarks/recipe_speed.py --smoke                      # the smoke of fmnist_elth_stretch
    python benchmarks/recipe_speed.py --set seeds=[0,1] --set prune.rounds=1 --set train.epochs=1
    python benchmarks/recipe_speed.py --smoke --configs off:1 off:2 off:ray   # Ray: pip install 'elastigraph[ray]'

Each configuration (``--configs``: ``fleet:workers`` pairs, default ``off:1 off:2 on:1``;
``workers`` = ``ray`` runs with ``--executor ray`` on a Ray the run starts on this machine,
its start-up included) runs ``python -m elastigraph run RECIPE ...`` into a fresh folder, timed from process
start to exit (imports, dataset loading and the report included). Each run's
results.json records are compared with the first configuration's: ``identical`` counts
records equal in every field, ``max_acc_diff`` is the largest test-accuracy difference.
The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "fmnist_elth_stretch.yaml"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, as for `elastigraph run`")
    ap.add_argument("--configs", nargs="+", default=["off:1", "off:2", "on:1"], help="fleet:workers pairs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows, ref = [], None
    with tempfile.TemporaryDirectory(prefix="eg_recipe_speed.") as tmp:
        for i, conf in enumerate(args.configs):
            fleet, workers = conf.split(":")
            out = Path(tmp) / f"run{i}"
            cmd = [sys.executable, "-m", "elastigraph", "run", args.recipe, "--out", str(out), "-q", "--fleet", fleet]
            cmd += ["--executor", "ray"] if workers == "ray" else ["--workers", workers]
            cmd += ["--smoke"] if args.smoke else []
            for s in args.sets:
                cmd += ["--set", s]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            t0 = time.perf_counter()
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            row = {"fleet": fleet, "workers": workers if workers == "ray" else int(workers), "wall_s": round(wall, 1), "rc": p.returncode}
            if p.returncode != 0:
                row["error"] = p.stderr[-500:]
            else:
                recs = json.loads((out / "results.json").read_text())["records"]
                if ref is None:
                    ref = recs
                same = sum(a == b for a, b in zip(ref, recs))
                diffs = [abs((a["test_acc"] or 0) - (b["test_acc"] or 0)) for a, b in zip(ref, recs)]
                markers = [json.loads(m.read_text())["result"] for m in (out / "steps").glob("*/done.json")]
                row.update(records=len(recs), identical=same, max_acc_diff=max(diffs) if diffs else None,
                           steps=len(markers), fleet_steps=sum("fleet" in m for m in markers))
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = round(base / r["wall_s"], 2) if r["wall_s"] else None
    result = {"recipe": Path(args.recipe).name, "smoke": args.smoke, "sets": args.sets,
              "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "load_avg_1m": round(os.getloadavg()[0], 2), "rows": rows}
    print(f"\n{result['recipe']}{' --smoke' if args.smoke else ''} {' '.join('--set ' + s for s in args.sets)}")
    print(f"{'fleet':>5} {'workers':>7} {'wall s':>7} {'speed-up':>8} {'identical records':>18} {'max acc diff':>12}")
    for r in rows:
        print(f"{r['fleet']:>5} {r['workers']:>7} {r['wall_s']:>7.1f} {r['speedup'] or 0:>8.2f} "
              f"{str(r.get('identical')) + '/' + str(r.get('records')):>18} {r.get('max_acc_diff', float('nan')):>12.4f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
