"""The recipe runner: every shipped recipe in smoke mode, the step cache (skip on rerun,
partial invalidation) and kill -9 + resume giving the same results as an uninterrupted run."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tiny import tiny
from elastigraph.masks import load_mask
from elastigraph.recipes import load_recipe, run_recipe
from elastigraph.recipes.cache import MARKER

pytest.importorskip("elastigraph.transfer", reason="the runner needs elastigraph.transfer")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
HAVE_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() or bool(
    os.environ.get("FASHION_MNIST_ROOT")
)

TINY = tiny()
"""12 steps: source dense + 2 IMP levels, target dense, and per level: transfer,
retrain, random mask, retrain."""


EXPECTED_MAPPINGS = {
    ("lm_study_drop", "Llama2"): "0:0;1:1",  # keep-first: blocks 0 and 1 of 4
    ("lm_study_drop", "Llama2-even"): "0:0;3:1",  # even: first and last
    ("lm_study_stretch", "Llama4"): "0:0;1:1,2,3",  # append: the last block copied
}
"""Plans the shipped recipes' transfers must use (results.json's ``layer_density[].mapping``)."""


def _done(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "steps").glob(f"*/{MARKER}")}


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_runs_in_smoke_mode(path, tmp_path):
    recipe = load_recipe(path, smoke=True)
    summary = run_recipe(recipe, tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    recs = res["records"]
    src = [r for r in recs if r["role"] == "source"]
    rounds = recipe.prune.rounds  # one IMP round, or two where a recipe's hypotheses name level 2
    assert [(r["level"], r["method"]) for r in src] == [(0, "dense")] + [(lv, "imp") for lv in range(1, rounds + 1)]
    frac = 1 - (1 - recipe.prune.fraction) ** max(recipe.prune.transfer_levels())  # the transferred level's sparsity
    assert src[1]["sparsity"] == pytest.approx(recipe.prune.fraction, abs=1e-3)  # the first IMP round
    for t in recipe.targets:
        rows = {r["method"]: r for r in recs if r["role"] == "target" and r["target"] == t.name}
        expected = {"transfer"} | set(recipe.baselines) | ({"heal"} if recipe.heal else set())
        assert set(rows) - {"permuted"} == expected - {"permuted"}, t.name  # permuted: stretches only
        ticket = rows["transfer"]["sparsity"]
        assert abs(ticket - frac) < 0.15  # the source's transferred level plus the stretch/squeeze drift
        for m in set(recipe.baselines) - {"dense", "imp"}:
            assert rows[m]["sparsity"] == pytest.approx(ticket, abs=1e-4), m  # same sparsity as the ticket
        if "dense" in rows:
            assert rows["dense"]["sparsity"] == 0.0
        for r in rows.values():  # accuracy in [0, 1]; bits per byte in (0, 9) (8 = uniform over bytes)
            assert 0.0 <= r["test_acc"] <= 1.0 if "test_acc" in r else 0.0 < r["test_bpb"] < 9.0
    assert summary.skipped >= 0 and summary.executed == len(_done(tmp_path))
    maps = {e["target"]: e["mapping"] for e in res["layer_density"]}  # the plan each transfer used
    assert set(maps) == {t.name for t in recipe.targets}
    assert all(re.fullmatch(r"[0-9]+:[0-9,]+(;[0-9]+:[0-9,]+)*(\|[0-9:;,]*)*", m) for m in maps.values()), maps
    for (stem, target), want in EXPECTED_MAPPINGS.items():
        if stem == path.stem:
            assert maps[target] == want, (target, maps)
    for f in ("results.csv", "summary.csv", "accuracy.png", "layer_density.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_rerun_skips_everything_and_changes_invalidate_downstream(tmp_path):
    first = run_recipe(load_recipe(TINY), tmp_path)
    assert first.executed == 12 and first.skipped == 0
    before = json.loads((tmp_path / "results.json").read_text())
    again = run_recipe(load_recipe(TINY), tmp_path)
    assert again.executed == 0 and again.skipped == 12
    assert json.loads((tmp_path / "results.json").read_text()) == before
    # a new baseline reuses every existing step and adds only its own (2 masks + 2 retrains)
    more = run_recipe(load_recipe({**TINY, "baselines": ["random", "dense", "snip"]}), tmp_path)
    assert more.executed == 4
    # a different target keeps the whole source side (dense + 2 IMP levels)
    other = run_recipe(load_recipe({**TINY, "targets": [{"model": "cifar_resnet_26?width=4"}]}), tmp_path)
    assert other.skipped == 3 and other.executed == 9


def _write(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_kill_and_resume_gives_the_uninterrupted_results(tmp_path):
    recipe = _write(tmp_path)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    run_recipe(load_recipe(recipe), ref_dir)
    reference = json.loads((ref_dir / "results.json").read_text())

    cmd = [sys.executable, "-m", "elastigraph", "run", str(recipe), "--out", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(_done(run_dir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _done(run_dir)
    assert 2 <= len(finished) < 12, "the run was not killed partway"
    assert not (run_dir / "results.json").exists()

    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    skipped = {ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("[skip]")}
    ran = {ln.split()[2] for ln in p.stdout.splitlines() if ln.startswith("[run ]")}
    assert skipped == finished  # exactly the finished steps come from the cache
    assert len(ran) == 12 - len(finished) and not (ran & finished)
    assert json.loads((run_dir / "results.json").read_text()) == reference
    assert not list(run_dir.rglob("*.tmp"))


def _run_group(cmd: list[str], env: dict[str, str], timeout: float = 200) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (torchrun's
    workers too), then fail."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_torchrun_ddp_run_writes_from_rank0_and_resumes(tmp_path):
    """Two CPU ranks (gloo): every training step runs under DDP, files come from rank 0
    only, and a second launch takes every step from the cache."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    recipe = _write(tmp_path)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "elastigraph", "run", str(recipe), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    p = _run_group(cmd, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(_done(out)) == 12, p.stdout[-3000:] + p.stderr[-3000:]
    markers = [json.loads(f.read_text()) for f in (out / "steps").glob(f"*/{MARKER}")]
    trained = [m["result"]["device"] for m in markers if m["kind"] in ("dense", "imp", "retrain")]
    assert trained and set(trained) == {"cpu x2 (ddp)"}, trained
    assert p.stdout.count("[run ]") == 12, p.stdout[-3000:]  # one log, rank 0's
    again = _run_group(cmd, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("[skip]") == 12 and "[run ]" not in again.stdout, again.stdout[-3000:]


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_include_first_false_keeps_the_stem_out_of_imp_and_baselines(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "cifar_resnet_stretch.yaml", smoke=True,
                         overrides=["prune.include_first=false", "baselines=[random, dense]",
                                    "targets=[{model: cifar_resnet_32}]"])
    run_recipe(recipe, tmp_path)
    masks_written = {p.parent.name.split("-")[0]: load_mask(p) for p in (tmp_path / "steps").glob("*/mask.safetensors")}
    assert {"imp", "mask", "transfer"} <= set(masks_written)
    for kind, m in masks_written.items():
        assert "conv.weight" not in m, kind  # the stem is never pruned
        assert "fc.weight" in m, kind
