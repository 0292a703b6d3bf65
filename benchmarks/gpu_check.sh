#!/usr/bin/env bash
# One GPU check of elastigraph's CUDA path, sized for one H100/H200 in under 7 minutes:
# the GPU-marked tests, train_speed.py (fp32 / bf16 / bf16 without channels_last /
# bf16 + torch.compile), fleet_speed.py (K = 1..16, widths 8 and 16), and one scaled
# E-LTH recipe (Fashion-MNIST) end to end with fleets on and off.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repo root
#   bash benchmarks/gpu_check.sh --cpu      # dry run of every stage on a CPU, tiny sizes
#
# Every stage has its own timeout and the script goes on when one fails; a global budget
# (GPU_CHECK_BUDGET seconds, default 400) shortens or skips the last stages. Output goes to
# $OUT (default runs/gpu_check): summary.json (every stage: status, seconds, key numbers),
# train_speed.json, fleet_speed.json, recipe_fleet.json, recipe_alone.json, pytest_gpu.xml,
# log.txt -- seven files, none in sub-folders. A readable summary is printed at the end.
#
# Environment: python3 with torch (PYTHON=... to choose); the repo is used in place
# (PYTHONPATH, no pip install). If pydantic is missing and .whl/ holds wheels, they are
# installed with --no-index into a temporary folder. Fashion-MNIST: $FASHION_MNIST_ROOT,
# else .data/fashion-mnist in the repo, else /usr/share/datasets/fashion-mnist.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
OUTDIR=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/eg_gpu_check.XXXXXX")
LOG=$OUTDIR/log.txt
STAGES=$WORK/stages.jsonl
: >"$LOG"
: >"$STAGES"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-400}
T_START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# a private inductor cache: an entry left half-written by a killed compile elsewhere made
# a dry run here fail with "file too short"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${FASHION_MNIST_ROOT:-}" ] && [ -d "$ROOT/.data/fashion-mnist" ]; then
  export FASHION_MNIST_ROOT=$ROOT/.data/fashion-mnist
fi
if [ "$MODE" = cpu ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

say() { echo "$*" | tee -a "$LOG"; }

# stage NAME TIMEOUT_S CMD...: run CMD under timeout (capped by what is left of the
# budget), log its output, record status and seconds; never stops the script.
stage() {
  local name=$1 limit=$2
  shift 2
  local now left t0 rc status
  now=$(date +%s)
  left=$((BUDGET - (now - T_START) - 15))
  if [ "$left" -lt 20 ]; then
    say "=== $name: skipped (budget of ${BUDGET}s spent)"
    echo "{\"stage\": \"$name\", \"status\": \"skipped\", \"seconds\": 0, \"rc\": null}" >>"$STAGES"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "=== $name (timeout ${limit}s): $*"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1 </dev/null
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  local secs=$(($(date +%s) - t0))
  say "=== $name: $status (rc $rc, ${secs}s)"
  echo "{\"stage\": \"$name\", \"status\": \"$status\", \"seconds\": $secs, \"rc\": $rc}" >>"$STAGES"
  return 0
}

# ----------------------------------------------------------------- 0. environment
say "elastigraph gpu_check ($MODE mode) in $ROOT, output $OUTDIR, budget ${BUDGET}s"
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv) >>"$LOG" 2>&1
if ! "$PY" -c "import pydantic" 2>/dev/null && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  say "pydantic missing: installing the carried wheels from .whl/ (no index)"
  WHEELS=$(ls "$ROOT"/.whl/*.whl)
  # keep the machine's own typing_extensions when it is new enough for pydantic (>= 4.16)
  if "$PY" -c "from importlib.metadata import version as v; import sys; sys.exit(tuple(map(int, v('typing_extensions').split('.')[:2])) < (4, 16))" 2>/dev/null; then
    WHEELS=$(echo "$WHEELS" | grep -v typing_extensions)
  fi
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" $WHEELS >>"$LOG" 2>&1 \
    && export PYTHONPATH=$PYTHONPATH:$WORK/site
fi
"$PY" - >"$WORK/env.json" 2>>"$LOG" <<'EOF'
import importlib, json, os, platform, sys
import torch
env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.cuda.is_available(),
       "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine(),
       "cpu_count": os.cpu_count(), "fashion_mnist_root": os.environ.get("FASHION_MNIST_ROOT"), "missing": []}
for mod in ("torchvision", "timm", "networkx", "safetensors", "yaml", "pydantic", "rich", "typer", "matplotlib", "pytest"):
    try:
        m = importlib.import_module(mod)
        env[mod] = getattr(m, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        env["missing"].append(f"{mod} ({type(e).__name__})")
import elastigraph
env["elastigraph"] = elastigraph.__file__
print(json.dumps(env))
EOF
cat "$WORK/env.json" | tee -a "$LOG"
if [ "$MODE" = gpu ] && ! grep -q '"cuda": true' "$WORK/env.json"; then
  say "WARNING: no CUDA device visible; the GPU stages will run on whatever torch picks"
fi

# ----------------------------------------------------------------- sizes
if [ "$MODE" = cpu ]; then
  SPEED="--steps 2 --warmup 1 --repeats 1 --threads 1"
  FLEET="--ks 1 2 --widths 8 --steps 2 --warmup 1 --n 256 --process-max-k 2"
  FLEET_C="--ks 2 --widths 8 --steps 2 --warmup 1 --n 256 --modes fleet"
  RECIPE_SET=(--smoke)
  T_TEST=240 T_SPEED=120 T_COMPILE=240 T_FLEET=240 T_RECIPE=180
else
  SPEED="--steps 100 --warmup 20 --repeats 3"
  # fleets train in fp32 (see docs/benchmarks.md): compare them with fp32 single runs
  FLEET="--no-amp --ks 1 2 4 8 16 --widths 8 16 --steps 20 --warmup 3 --process-max-k 4"
  FLEET_C="--no-amp --ks 1 16 --widths 8 --steps 20 --warmup 3 --modes fleet sequential"
  RECIPE_SET=(--set "seeds=[0]" --set prune.rounds=2)
  T_TEST=180 T_SPEED=60 T_COMPILE=120 T_FLEET=170 T_RECIPE=110
fi
SPEED_DS=fashion_mnist
"$PY" -c "from elastigraph.train import load_dataset; load_dataset('fashion_mnist', split='test')" 2>/dev/null || SPEED_DS=synthetic
RECIPE=recipes/fmnist_elth_stretch.yaml
[ "$SPEED_DS" = synthetic ] && say "Fashion-MNIST not found: train_speed uses synthetic data; the recipe stages will fail"

# ----------------------------------------------------------------- stages (most important first)
stage pytest_gpu "$T_TEST" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$OUTDIR/pytest_gpu.xml" tests
stage speed_fp32 "$T_SPEED" "$PY" benchmarks/train_speed.py --dataset $SPEED_DS $SPEED --no-amp --out "$WORK/speed_fp32.json"
stage speed_bf16 "$T_SPEED" "$PY" benchmarks/train_speed.py --dataset $SPEED_DS $SPEED --out "$WORK/speed_bf16.json"
stage fleet_speed "$T_FLEET" "$PY" benchmarks/fleet_speed.py $FLEET --out "$WORK/fleet_speed.json"
stage recipe_fleet "$T_RECIPE" "$PY" -m elastigraph run "$RECIPE" "${RECIPE_SET[@]}" --fleet on --workers 1 -q --json \
  --out "$WORK/recipe_fleet"
stage speed_bf16_compile "$T_COMPILE" "$PY" benchmarks/train_speed.py --dataset $SPEED_DS $SPEED --compile \
  --out "$WORK/speed_bf16_compile.json"
stage recipe_alone "$T_RECIPE" "$PY" -m elastigraph run "$RECIPE" "${RECIPE_SET[@]}" --fleet off --workers 1 -q --json \
  --out "$WORK/recipe_alone"
stage speed_bf16_nocl "$T_SPEED" "$PY" benchmarks/train_speed.py --dataset $SPEED_DS $SPEED --no-channels-last \
  --out "$WORK/speed_bf16_nocl.json"
stage fleet_compile "$T_COMPILE" "$PY" benchmarks/fleet_speed.py $FLEET_C --compile --out "$WORK/fleet_compile.json"

# ----------------------------------------------------------------- collect + summary
"$PY" - "$WORK" "$OUTDIR" "$MODE" "$(($(date +%s) - T_START))" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, shutil, sys
from pathlib import Path
work, out, mode, wall = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def load(p):
    try:
        return json.loads(Path(p).read_text())
    except Exception:
        return None
stages = [json.loads(l) for l in (work / "stages.jsonl").read_text().splitlines() if l.strip()]
speed = {k: load(work / f"speed_{k}.json") for k in ("fp32", "bf16", "bf16_nocl", "bf16_compile")}
fleet, fleet_c = load(work / "fleet_speed.json"), load(work / "fleet_compile.json")
recipes = {k: load(work / f"recipe_{k}" / "results.json") for k in ("fleet", "alone")}
for k, steps_dir in (("fleet", work / "recipe_fleet"), ("alone", work / "recipe_alone")):
    if recipes[k] is not None:  # total training seconds of the steps, from their markers
        res = [load(m).get("result", {}) for m in (steps_dir / "steps").glob("*/done.json")]
        # a fleet's members each record the fleet's wall time: count it once
        recipes[k]["steps_wall_s"] = round(sum((r.get("wall_s") or 0) / r.get("fleet", 1) for r in res), 2)
stage_s = {s["stage"]: s for s in stages}
summary = {"mode": mode, "wall_s": wall, "env": load(work / "env.json"), "stages": stages,
           "train_speed": speed, "fleet_compile": fleet_c}
json.dump({k: v for k, v in speed.items()}, open(out / "train_speed.json", "w"), indent=1)
if fleet is not None:
    json.dump({"eager": fleet, "compile": fleet_c}, open(out / "fleet_speed.json", "w"), indent=1)
for k, v in recipes.items():
    if v is not None:
        json.dump(v, open(out / f"recipe_{k}.json", "w"), indent=1)
# readable summary
env = summary["env"] or {}
print(f"\n===== gpu_check summary ({mode}): {env.get('device')} torch {env.get('torch')} python {env.get('python')}, {wall}s")
if env.get("missing"):
    print("missing packages:", ", ".join(env["missing"]))
for s in stages:
    print(f"  {s['stage']:20s} {s['status']:8s} {s['seconds']:4d}s")
print("train_speed (images/s, best run):")
for k, v in speed.items():
    if v:
        print(f"  {k:14s} dense {v['dense_images_per_s']:>9.0f}  masked {v['masked_images_per_s']:>9.0f}  "
              f"baseline {v['baseline_images_per_s']:>9.0f}  masked/baseline {v['speedup_vs_baseline']:.2f}x")
for label, f in (("fleet_speed", fleet), ("fleet_speed --compile", fleet_c)):
    if not f:
        continue
    print(f"{label} (aggregate images/s; x = vs one network at a time):")
    for r in f["rows"]:
        print(f"  width {r['width']:>2} K {r['k']:>2} {r['mode']:10s} {r['images_per_s'] or 0:>9.0f}  "
              f"{r.get('vs_one_at_a_time', 0):>5.2f}x" + (f"  {r['error'][:100]}" if r.get("error") else ""))
acc = {}
for k, v in recipes.items():
    if v:
        acc[k] = {(r["target"], r["method"], r["level"]): r["test_acc"] for r in v["records"]}
        print(f"recipe {k}: {len(v['records'])} records, stage {stage_s.get('recipe_' + k, {}).get('seconds')}s, "
              f"sum of step walls {v.get('steps_wall_s')}s")
if len(acc) == 2:
    common = sorted(set(acc["fleet"]) & set(acc["alone"]))
    diffs = [abs((acc["fleet"][c] or 0) - (acc["alone"][c] or 0)) for c in common]
    summary["recipe_fleet_vs_alone"] = {"records": len(common), "max_abs_test_acc_diff": max(diffs) if diffs else None,
                                       "identical": sum(d == 0 for d in diffs)}
    print("recipe fleet vs alone:", summary["recipe_fleet_vs_alone"])
json.dump(summary, open(out / "summary.json", "w"), indent=1)
print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")
EOF
rm -rf "$WORK"
exit 0
