"""Runner features of the paper's analyses: ``analyses: [lmc]`` (linear mode
connectivity of the transferred and the target's own IMP ticket, results + CSV + plot)
and the rewind-point switches (``prune.rewind_step: 0``; ``start_at_step_zero``)."""

from __future__ import annotations

import json

import pytest
import torch

from elastigraph.errors import RecipeError
from elastigraph.masks import load_mask
from elastigraph.models import create
from elastigraph.recipes import load_recipe, run_recipe
from elastigraph.recipes.cache import load_tensors

TINY_MLP = {
    "name": "tiny-mlp",
    "dataset": {"name": "synthetic", "train_limit": 64, "test_limit": 32},
    "source": "mlp?depth=2&width=16",
    "prune": {"rounds": 2, "fraction": 0.5, "rewind_step": 2},
    "train": {"steps": 4, "batch_size": 16, "augment": False, "lr": 0.05},
    "targets": [{"model": "mlp?depth=3&width=16", "label": "M3"}],
    "baselines": ["imp"],
    "analyses": ["lmc"],
    "lmc": {"points": 5, "levels": [2]},
    "seeds": [0],
    "device": "cpu",
}


def test_lmc_analysis_in_a_recipe(tmp_path):
    summary = run_recipe(load_recipe(TINY_MLP), tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    rows = res["lmc"]
    assert [(r["method"], r["level"]) for r in rows] == [("transfer", 2), ("imp", 2)]
    recs = {(r["method"], r["level"]): r for r in res["records"] if r["role"] == "target"}
    for r in rows:
        assert r["alphas"] == [0, 0.25, 0.5, 0.75, 1] and len(r["test_acc"]) == 5
        assert r["endpoint_acc"] == [r["test_acc"][0], r["test_acc"][-1]]
        assert r["barrier"] >= 0 and r["data_seeds"] == [10001, 10002] and r["steps"] in (2, 4)
        assert r["sparsity"] == pytest.approx(recs[(r["method"], 2)]["sparsity"])
    assert rows[0]["steps"] == 2  # retrained from the rewind step, as the ticket is
    for f in ("lmc.csv", "lmc.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert len((tmp_path / "lmc.csv").read_text().splitlines()) == 3
    again = run_recipe(load_recipe(TINY_MLP), tmp_path)  # cached like every step
    assert again.executed == 0 and json.loads((tmp_path / "results.json").read_text())["lmc"] == rows
    assert summary.executed > 0


def test_lmc_recipe_validation():
    bad = {**TINY_MLP, "lmc": {"levels": [3], "data_seeds": [1, 1], "points": 2}}
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    msg = str(e.value)
    assert "lmc.data_seeds" in msg and "lmc.points" in msg
    with pytest.raises(RecipeError, match="not transferred levels"):
        load_recipe({**TINY_MLP, "lmc": {"levels": [3]}})
    with pytest.raises(RecipeError, match="analyses"):
        load_recipe({**TINY_MLP, "analyses": ["cka"]})


def _transfer_dir(out, label="transfer"):
    steps = [p for p in (out / "steps").iterdir() if (p / "weights.safetensors").is_file()]
    assert len(steps) == 1
    return steps[0]


def test_start_at_step_zero_transfers_the_initial_weights(tmp_path):
    base = {**{k: v for k, v in TINY_MLP.items() if k != "lmc"}, "analyses": [], "baselines": [], "prune": {"rounds": 1, "fraction": 0.5, "rewind_step": 2}}
    zero = {**base, "targets": [{"model": "mlp?depth=3&width=16", "label": "M3-zero", "start_at_step_zero": True}]}
    run_recipe(load_recipe(zero), tmp_path / "zero")
    run_recipe(load_recipe(base), tmp_path / "k")
    torch.manual_seed(0)
    init = create("mlp", depth=2, width=16, in_chans=1, num_classes=10).state_dict()
    w0 = load_tensors(_transfer_dir(tmp_path / "zero") / "weights.safetensors")
    wk = load_tensors(_transfer_dir(tmp_path / "k") / "weights.safetensors")
    assert torch.equal(w0["fc_layers.2.weight"], init["fc_layers.1.weight"])  # stretched copy of the init
    assert torch.equal(w0["fc.weight"], init["fc.weight"])
    assert not torch.equal(wk["fc.weight"], init["fc.weight"])  # rewound to step 2 instead
    m0 = load_mask(_transfer_dir(tmp_path / "zero") / "mask.safetensors")
    mk = load_mask(_transfer_dir(tmp_path / "k") / "mask.safetensors")
    assert all(torch.equal(m0[n], mk[n]) for n in mk)  # same ticket mask, only the weights differ
    rz = json.loads((tmp_path / "zero" / "results.json").read_text())["records"]
    rk = json.loads((tmp_path / "k" / "results.json").read_text())["records"]
    steps = {r["method"]: r["steps"] for r in rz if r["role"] == "target"}
    assert steps["transfer"] == 4  # retrained from step 0
    assert {r["method"]: r["steps"] for r in rk if r["role"] == "target"}["transfer"] == 2


def test_permuted_baseline_of_a_step_zero_target_trains_as_the_ticket_does(tmp_path):
    """The permuted copies start from the ticket's own (step-0) weights, so they must
    train from step 0 too, or the comparison gives the baseline fewer steps."""
    rec = {**{k: v for k, v in TINY_MLP.items() if k != "lmc"}, "analyses": [], "baselines": ["permuted", "reinit"],
           "prune": {"rounds": 1, "fraction": 0.5, "rewind_step": 2},
           "targets": [{"model": "mlp?depth=4&width=16", "label": "M4", "start_at_step_zero": True},
                       {"model": "mlp?depth=4&width=16", "label": "M4-k"}]}
    run_recipe(load_recipe(rec), tmp_path)
    recs = json.loads((tmp_path / "results.json").read_text())["records"]
    steps = {(r["target"], r["method"]): r["steps"] for r in recs if r["role"] == "target"}
    assert steps[("M4", "transfer")] == steps[("M4", "permuted")] == 4
    assert steps[("M4-k", "transfer")] == steps[("M4-k", "permuted")] == 2


def test_rewind_step_zero_rewinds_imp_to_the_initialisation(tmp_path):
    rec = {**{k: v for k, v in TINY_MLP.items() if k != "lmc"}, "analyses": [], "baselines": [], "prune": {"rounds": 1, "fraction": 0.5, "rewind_step": 0}}
    run_recipe(load_recipe(rec), tmp_path)
    torch.manual_seed(0)
    init = create("mlp", depth=2, width=16, in_chans=1, num_classes=10).state_dict()
    w = load_tensors(_transfer_dir(tmp_path) / "weights.safetensors")
    assert torch.equal(w["fc.weight"], init["fc.weight"])
    recs = json.loads((tmp_path / "results.json").read_text())["records"]
    assert all(r["steps"] == 4 for r in recs if r["method"] in ("imp", "transfer"))  # every level trains from 0


# --------------------------------------------------------------------------- another task


def _steps(out, kind):
    return [json.loads((p / "done.json").read_text()) for p in (out / "steps").iterdir()
            if (p / "done.json").is_file() and json.loads((p / "done.json").read_text())["kind"] == kind]


def test_target_on_another_task_trains_on_its_own_dataset(tmp_path):
    """ElasticLTH change_depth_dataset: the source ticket from classes 0-4, the target
    (its IMP ticket, every baseline) trained and evaluated on classes 5-9 only."""
    src_ds = {"name": "synthetic?classes=0-4", "train_limit": 60, "test_limit": 30, "val_fraction": 0.2}
    dst_ds = {"name": "synthetic?classes=5-9", "train_limit": 40, "test_limit": 20, "val_fraction": 0.25}
    recipe = {**{k: v for k, v in TINY_MLP.items() if k not in ("lmc", "analyses")}, "dataset": src_ds,
              "targets": [{"model": "mlp?depth=3&width=16", "label": "M3-task", "dataset": dst_ds}],
              "baselines": ["imp", "reinit", "random", "snip", "dense"]}
    run_recipe(load_recipe(recipe), tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["accuracy_splits"]["sizes"] == {"train": 48, "val": 12, "test": 30}
    assert res["accuracy_splits"]["target_sizes"] == {"M3-task": {"dataset": "synthetic?classes=5-9",
                                                                 "train": 30, "val": 10, "test": 20}}
    datasets = {}
    for kind in ("dense", "imp", "retrain", "mask"):
        for st in _steps(tmp_path, kind):
            s = st["settings"]
            if s.get("dataset") is not None:
                datasets.setdefault(s.get("model") or s.get("target"), set()).add(s["dataset"]["name"])
    assert datasets == {"mlp?depth=2&width=16": {"synthetic?classes=0-4"},
                        "mlp?depth=3&width=16": {"synthetic?classes=5-9"}}
    trs = _steps(tmp_path, "transfer")
    assert len(trs) == 2  # levels 1 and 2
    for tr in trs:
        assert tr["settings"]["target_dataset"]["name"] == "synthetic?classes=5-9"
        assert tr["settings"]["dataset"]["name"] == "synthetic?classes=0-4"
    methods = {r["method"] for r in res["records"] if r["role"] == "target"}
    assert methods == {"dense", "transfer", "imp", "reinit", "random", "snip"}


def test_target_on_another_task_with_more_classes_needs_head_reinit(tmp_path):
    src_ds = {"name": "synthetic?classes=0-4", "train_limit": 40, "test_limit": 20}
    dst_ds = {"name": "synthetic", "train_limit": 40, "test_limit": 20}
    base = {**{k: v for k, v in TINY_MLP.items() if k not in ("lmc", "analyses")}, "dataset": src_ds,
            "prune": {"rounds": 1, "fraction": 0.5, "rewind_step": 2}, "baselines": []}
    keep = {**base, "targets": [{"model": "mlp?depth=3&width=16", "dataset": dst_ds}]}
    with pytest.raises(Exception, match="set `head: reinit` on target"):  # heads 5 vs 10: refused, naming the option
        run_recipe(load_recipe(keep), tmp_path / "keep")
    reinit = {**base, "targets": [{"model": "mlp?depth=3&width=16", "dataset": dst_ds, "head": "reinit"}]}
    run_recipe(load_recipe(reinit), tmp_path / "reinit")
    (tr,) = _steps(tmp_path / "reinit", "transfer")
    assert tr["settings"]["head"] == "reinit" and tr["result"]["reinit_head"]
    d = tmp_path / "reinit" / "steps" / tr["id"]
    mask = load_mask(d / "mask.safetensors")
    assert set(tr["result"]["reinit_head"]) == {"fc.weight", "fc.bias"}
    assert mask["fc.weight"].shape == (10, 16)  # the target's own 10-class head
    # its mask keeps the source head's density (the output layer is pruned in this recipe)
    src = tr["result"]["source_layers"]["fc.weight"]
    assert 0 < src < 1 and mask["fc.weight"].float().mean().item() == pytest.approx(src, abs=0.02)


def test_smoke_limits_apply_to_a_targets_own_dataset():
    recipe = {**{k: v for k, v in TINY_MLP.items() if k not in ("lmc", "analyses")},
              "targets": [{"model": "mlp?depth=3&width=16", "dataset": {"name": "synthetic?classes=5-9"}}]}
    r = load_recipe(recipe, smoke=True)
    assert (r.targets[0].dataset.train_limit, r.targets[0].dataset.test_limit) == (32, 16)
    assert r.targets[0].dataset.name == "synthetic?classes=5-9"
