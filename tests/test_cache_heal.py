"""The step cache heals itself (issue 9 section 4), one run per output folder and a
shared ``--cache`` safe for concurrent runs (section 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from elastigraph import cli
from elastigraph.errors import OutputLockedError
from elastigraph.recipes import load_recipe, run_recipe
from elastigraph.recipes.cache import MARKER, FolderLock, StepCache, file_manifest
from elastigraph.report import load_results

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {
    "name": "heal",
    "dataset": {"name": "synthetic", "train_limit": 32, "test_limit": 16},
    "source": "cifar_resnet_14",
    "targets": [{"model": "cifar_resnet_20"}],
    "train": {"steps": 2, "batch_size": 8, "augment": False},
    "prune": {"rounds": 1},
}
"""4 steps: source dense, source IMP level 1, transfer, retrain."""


def _records(out: Path) -> list[dict]:
    return load_results(out)["records"]


def _steps(out: Path) -> dict[str, Path]:
    return {p.parent.name.split("-")[0]: p.parent for p in sorted((out / "steps").glob(f"*/{MARKER}"))}


def test_damaged_steps_are_redone_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    first = run_recipe(load_recipe(RECIPE), out)
    assert first.executed == 4
    want = _records(out)
    steps = _steps(out)
    assert set(steps) == {"dense", "imp", "transfer", "retrain"}
    marker = json.loads((steps["dense"] / MARKER).read_text())
    assert set(marker["files"]) == {"rewind.safetensors", "final.safetensors"}
    assert all(len(v["sha256"]) == 64 for v in marker["files"].values())

    # four kinds of damage, one per step; leftovers of a kill in a step and in the run folder
    (steps["dense"] / MARKER).write_text((steps["dense"] / MARKER).read_text()[:40])           # truncated marker
    m = json.loads((steps["imp"] / MARKER).read_text())
    m["result"]["test_acc"] = 0.99                                                             # edited marker
    (steps["imp"] / MARKER).write_text(json.dumps(m))
    w = steps["transfer"] / "weights.safetensors"
    b = bytearray(w.read_bytes())
    b[-1] ^= 0xFF                                                                               # flipped byte
    w.write_bytes(bytes(b))
    (steps["retrain"] / "final.safetensors").unlink()                                           # missing file
    (steps["retrain"] / "final.safetensors").mkdir()                                            # ... and unreadable
    (steps["retrain"] / ".final.safetensors.abc123.tmp").write_bytes(b"partial")
    (out / ".results.json.xyz.tmp").write_text("{")
    capsys.readouterr()

    second = run_recipe(load_recipe(RECIPE), out)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4, err
    for name, why in (("dense", "unreadable or not JSON"), ("imp", "was edited"),
                      ("transfer", "does not match its recorded sha256"), ("retrain", "final.safetensors")):
        assert any(steps[name].name in w_ and why in w_ for w_ in warnings), (name, err)
    assert "Traceback" not in err
    assert second.executed == 4 and second.skipped == 0
    assert _records(out) == want  # redone to the same results (CPU, deterministic)
    assert not list(out.glob(".*.tmp")) and not list(out.glob("steps/*/.*.tmp"))
    third = run_recipe(load_recipe(RECIPE), out)
    assert (third.executed, third.skipped) == (0, 4)
    assert "warning" not in capsys.readouterr().err


def test_empty_marker_and_old_marker_are_not_done(tmp_path, capsys):
    cache = StepCache(tmp_path)
    d = tmp_path / "dense-0000000000000000"
    d.mkdir()
    (d / MARKER).write_text("")
    assert not cache.done(d.name)
    (d / MARKER).write_text(json.dumps({"id": d.name, "kind": "dense", "inputs": {}, "result": {}}))
    assert not StepCache(tmp_path).done(d.name)  # no checksums: written before they existed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("warning: step dense-0000000000000000") for line in err)
    (d / "x.bin").write_bytes(b"123")
    rec = cache.finish(d.name, "dense", {}, {}, {"a": 1})
    assert cache.done(d.name) and StepCache(tmp_path).done(d.name)
    assert rec.result == {"a": 1} and StepCache(tmp_path).load(d.name).result == {"a": 1}
    assert file_manifest(d)["x.bin"]["bytes"] == 3


def test_second_run_on_the_same_folder_exits_2_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(RECIPE))
    holder = FolderLock(out / ".lock", "x").acquire()
    try:
        rc = cli.main(["run", str(recipe), "-q", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
        assert f"PID {os.getpid()}" in err and "--wait" in err
        assert not (out / "steps").exists()  # refused before any work

        # --wait: queues behind the holder and runs once it is released
        threading.Timer(1.0, holder.release).start()
        rc = cli.main(["run", str(recipe), "-q", "--out", str(out), "--wait"])
        assert rc == 0, capsys.readouterr().err
    finally:
        holder.release()
    with pytest.raises(OutputLockedError):  # the lock is exclusive: a second holder is refused
        with FolderLock(out / ".lock", "x"):
            FolderLock(out / ".lock", "y").acquire()


def test_step_lock_serialises_two_holders(tmp_path):
    cache = StepCache(tmp_path)
    order: list[str] = []

    def second() -> None:
        with cache.lock("s-1"):
            order.append("second")

    with cache.lock("s-1"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]
    with cache.lock("s-2"), cache.lock("s-3"):  # different steps do not block each other
        pass


@pytest.mark.slow
def test_concurrent_runs_share_one_cache(tmp_path):
    """Two processes, two --out folders, one --cache: every step computed exactly once,
    both runs end with the same results."""
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "elastigraph", "run", str(recipe), "--out", str(tmp_path / f"out{i}"),
                          "--cache", str(tmp_path / "cache")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=tmp_path)
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    ran = sum(out.count("[run ]") for out, _ in logs)
    assert ran == 4, logs  # 4 distinct steps, each computed by one of the two runs
    assert _records(tmp_path / "out0") == _records(tmp_path / "out1")
    assert not (tmp_path / "out0" / "steps").exists()
