"""The runner's throughput options: a level's retrains as one fleet, worker processes,
and the per-step lock; none of them changes a step's id, and workers change no number."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from tiny import tiny
from elastigraph.errors import ConfigError
from elastigraph.recipes import load_recipe, run_recipe
from elastigraph.recipes.cache import MARKER, StepCache

pytest.importorskip("elastigraph.transfer", reason="the runner needs elastigraph.transfer")

TINY = tiny(prune={"rounds": 1}, seeds=[0, 1])


def _markers(out):
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "steps").glob(f"*/{MARKER}")}


def _records(out):
    return json.loads((out / "results.json").read_text())["records"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run_recipe(load_recipe(TINY), out, fleet="off", workers=1)
    return out


@pytest.mark.parametrize("seeds", [[0, 1], [0]], ids=["seeds-to-workers", "one-seed"])
def test_workers_give_the_sequential_results_bit_for_bit(tmp_path, reference, seeds):
    """Two worker processes (whole seeds; or, with one seed, the target's own chain and a
    level's retrains): same step ids, same files' numbers, same results.json."""
    recipe = load_recipe({**TINY, "seeds": seeds})
    summary = run_recipe(recipe, tmp_path, fleet="off", workers=2)
    ref = [r for r in _records(reference) if r["seed"] in seeds]
    assert _records(tmp_path) == ref
    mine, theirs = _markers(tmp_path), _markers(reference)
    assert set(mine) <= set(theirs) and len(mine) == summary.executed
    for sid, m in mine.items():
        for key in ("test_acc", "test_loss", "sparsity"):
            assert m["result"].get(key) == theirs[sid]["result"].get(key), (sid, key)
    again = run_recipe(recipe, tmp_path, fleet="off", workers=2)
    assert again.executed == 0 and _records(tmp_path) == ref


def test_fleet_trains_a_levels_retrains_together_with_the_same_step_ids(tmp_path, reference):
    summary = run_recipe(load_recipe(TINY), tmp_path, fleet="on", workers=1)
    mine, theirs = _markers(tmp_path), _markers(reference)
    assert set(mine) == set(theirs) and summary.executed == len(mine)
    fleets = {sid: m["result"]["fleet"] for sid, m in mine.items() if "fleet" in m["result"]}
    # per seed and level: transferred ticket + random retrains = one fleet of 2
    assert sorted(fleets.values()) == [2] * 4 and all(s.startswith("retrain-") for s in fleets)
    for sid, m in mine.items():
        a, b = m["result"], theirs[sid]["result"]
        if sid in fleets:  # float tolerance: the grouped kernels round differently
            assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-4)
            assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 32
        else:
            assert a.get("test_acc") == b.get("test_acc") and a.get("test_loss") == b.get("test_loss")


def test_bad_fleet_or_worker_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="fleet='sometimes'"):
        run_recipe(load_recipe(TINY), tmp_path, fleet="sometimes")
    with pytest.raises(ConfigError, match="workers=0"):
        run_recipe(load_recipe(TINY), tmp_path, workers=0)


def test_step_lock_makes_a_second_holder_wait(tmp_path):
    cache = StepCache(tmp_path)
    order: list[str] = []
    held = threading.Event()

    def first():
        with cache.lock("retrain-0123"):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait(5)
    with cache.lock("retrain-0123"):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    with cache.lock("retrain-other"):  # other steps are not blocked
        pass


def test_fleet_steps_report_validation_accuracy_like_alone_ones(tmp_path):
    recipe = load_recipe({**TINY, "seeds": [0], "dataset": {**TINY["dataset"], "val_fraction": 0.25}})
    run_recipe(recipe, tmp_path / "fleet", fleet="on", workers=1)
    run_recipe(recipe, tmp_path / "alone", fleet="off", workers=1)
    fleet, alone = _markers(tmp_path / "fleet"), _markers(tmp_path / "alone")
    assert set(fleet) == set(alone)
    members = [sid for sid, m in fleet.items() if "fleet" in m["result"]]
    assert members
    for sid in members:
        assert fleet[sid]["result"]["val_acc"] is not None
        assert abs(fleet[sid]["result"]["val_acc"] - alone[sid]["result"]["val_acc"]) <= 1 / 16


def test_workers_from_a_two_thread_parent_find_the_steps_they_ran(tmp_path, reference):
    """The parent's thread count is split among the workers (2 threads -> 1 each), and the
    thread count is part of a step's id: the parent must name a step with the count it
    is trained with, or it looks for a step the worker stored under another id (the
    README demo failed so: 'not a finished step (missing)')."""
    recipe = load_recipe({**TINY, "seeds": [0]})
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_recipe(recipe, tmp_path, fleet="off", workers=2)
        assert torch.get_num_threads() == 2  # restored after the pool
    finally:
        torch.set_num_threads(n)
    ref = [r for r in _records(reference) if r["seed"] == 0]
    assert _records(tmp_path) == ref  # 1 thread each, like the one-thread reference
    assert json.loads((tmp_path / "results.json").read_text())["environment"]["threads"] == 1


def test_numerics_are_part_of_every_training_steps_identity(tmp_path, reference, monkeypatch):
    """Issue 21: what changes the numbers is in the step id. On the CPU a fleet computes
    what alone computes (fp32 both), so they share ids (test above); every training
    step's marker records its numerics; on CUDA with bf16 autocast (the default amp) the
    alone step and the fp32 fleet step are two ids, so a cache never hands one's number
    out as the other's; a cache from before numerics were in the id is recomputed."""
    from elastigraph.recipes.cache import step_id
    from elastigraph.recipes.runner import RetrainRequest, Runner

    markers = _markers(reference)
    trained = {sid: m for sid, m in markers.items() if sid.split("-")[0] in ("dense", "imp", "retrain")}
    assert trained and all(m["settings"]["numerics"] == "fp32" for m in trained.values())
    # the id a cache made before this change gave the step (no numerics): never looked up
    for sid, m in trained.items():
        legacy = {k: v for k, v in m["settings"].items() if k != "numerics"}
        assert step_id(m["kind"], legacy, m["inputs"]) != sid
    runner = Runner(load_recipe(TINY), tmp_path)
    assert runner.numerics() == runner.numerics(fleet=True) == "fp32"
    monkeypatch.setattr(Runner, "_cuda", lambda self: True)  # a GPU run, amp on (the default)
    assert runner.numerics() == "bf16-autocast" and runner.numerics(fleet=True) == "fp32"
    sid, m = next((s, m) for s, m in trained.items() if s.startswith("retrain-"))
    cache = StepCache(reference / "steps")
    rec = cache.load(sid)
    req = RetrainRequest(runner.recipe.targets[0].model, 0, rec, None, "", 0, "x")
    alone, fleet = (step_id(*runner._key_ids(req, fleet=f)) for f in (False, True))
    assert alone != fleet
    no_amp = Runner(load_recipe({**TINY, "train": {**TINY["train"], "amp": False}}), tmp_path / "b")
    assert no_amp.numerics() == no_amp.numerics(fleet=True) == "fp32"  # fp32 alone = the fleet's numbers
