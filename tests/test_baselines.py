"""Known answers for the runner's E-LTH baselines on a tiny stretch (ResNet-14 -> 20,
width 4, synthetic data): random keeps the ticket's exact per-tensor counts, reinit
shares the ticket's mask but not its weights, permuted changes only the copied blocks
(keeping their counts), imp-matched hits the transferred sparsity exactly, and every
baseline trains on the transferred ticket's global sparsity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import tiny
from elastigraph.masks import load_mask
from elastigraph.recipes import load_recipe, run_recipe
from elastigraph.recipes.cache import MARKER, load_tensors
from elastigraph.recipes.runner import copied_tensors, derived_seed, split_validation

pytest.importorskip("elastigraph.transfer", reason="the runner needs elastigraph.transfer")

ALL = ["imp", "imp-matched", "reinit", "random", "random-global", "magnitude", "permuted", "snip", "grasp",
       "synflow", "dense"]
STRETCH = tiny(name="baselines", dataset={"val_fraction": 0.25}, prune={"levels": [2]}, baselines=ALL,
               baseline_settings={"synflow_iterations": 2})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    run_recipe(load_recipe(STRETCH), out)
    markers = [json.loads(f.read_text()) for f in (out / "steps").glob(f"*/{MARKER}")]
    by_id = {m["id"]: m for m in markers}
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["records"] if r["role"] == "target" and r["level"] == 2}
    return out, by_id, rows, res


def _mask_of(out: Path, by_id: dict, retrain_id: str):
    """The mask a retrain step trained under, and that mask step's marker."""
    mid = by_id[retrain_id]["inputs"]["mask"]
    return load_mask(out / "steps" / mid / "mask.safetensors"), by_id[mid]


def test_every_baseline_is_recorded_at_the_transferred_sparsity(run):
    _, _, rows, res = run
    assert set(rows) == {"transfer", *ALL} - {"dense"}
    ticket = rows["transfer"]["sparsity"]
    for m in set(ALL) - {"imp", "dense"}:
        assert rows[m]["sparsity"] == pytest.approx(ticket, abs=1e-6), m
    assert rows["imp"]["sparsity"] != pytest.approx(ticket, abs=1e-4)  # the level-matched one differs
    assert res["environment"]["threads"] == torch.get_num_threads()
    assert res["environment"]["torch"] == torch.__version__
    assert set(res["accuracy_splits"]) >= {"test_acc", "val_acc"}
    assert res["accuracy_splits"]["sizes"] == {"train": 48, "val": 16, "test": 32}
    assert all(r["val_acc"] is not None for r in res["records"])


def test_random_keeps_the_tickets_exact_per_tensor_counts(run):
    out, by_id, rows, _ = run
    ticket, _ = _mask_of(out, by_id, rows["transfer"]["step"])
    rnd, _ = _mask_of(out, by_id, rows["random"]["step"])
    glob, _ = _mask_of(out, by_id, rows["random-global"]["step"])
    assert list(rnd) == list(ticket)
    assert {k: int(v.sum()) for k, v in rnd.items()} == {k: int(v.sum()) for k, v in ticket.items()}
    assert sum(not torch.equal(rnd[k], ticket[k]) for k in ticket) > len(ticket) // 2
    # the global one keeps the same total, not the same per-tensor counts
    assert sum(int(v.sum()) for v in glob.values()) == sum(int(v.sum()) for v in ticket.values())
    assert {k: int(v.sum()) for k, v in glob.items()} != {k: int(v.sum()) for k, v in ticket.items()}


def test_reinit_shares_the_mask_but_not_the_weights(run):
    out, by_id, rows, _ = run
    tr = by_id[rows["transfer"]["step"]]
    re = by_id[rows["reinit"]["step"]]
    assert re["inputs"]["mask"] == tr["inputs"]["mask"]  # the transfer step's mask itself
    assert "weights" not in re["inputs"]  # not the ticket's weights: a fresh initialisation ...
    assert re["settings"]["init_seed"] == derived_seed(0, "reinit") != 0  # ... with another seed
    assert re["settings"]["start_step"] == 0 and tr["settings"]["start_step"] == 1
    w_tr = load_tensors(out / "steps" / tr["inputs"]["mask"] / "weights.safetensors")
    from elastigraph.recipes.schema import ModelSpec

    torch.manual_seed(derived_seed(0, "reinit"))
    fresh = ModelSpec.model_validate("cifar_resnet_20?width=4").build(in_chans=3, num_classes=10).state_dict()
    torch.manual_seed(0)
    own = ModelSpec.model_validate("cifar_resnet_20?width=4").build(in_chans=3, num_classes=10).state_dict()
    assert not torch.equal(fresh["layer1.0.conv1.weight"], w_tr["layer1.0.conv1.weight"])
    assert not torch.equal(fresh["layer1.0.conv1.weight"], own["layer1.0.conv1.weight"])


def test_permuted_changes_only_the_copied_blocks_and_keeps_their_counts(run):
    out, by_id, rows, _ = run
    tr_id = by_id[rows["transfer"]["step"]]["inputs"]["mask"]
    blocks = json.loads((out / "steps" / tr_id / "blocks.json").read_text())
    ticket, _ = _mask_of(out, by_id, rows["transfer"]["step"])
    copies = set(copied_tensors(blocks)) & set(ticket)
    # ResNet-14 -> 20 stretches every stage from 2 to 3 blocks: block 2 copies block 1
    assert copies == {f"layer{s}.2.conv{c}.weight" for s in (1, 2, 3) for c in (1, 2)}
    perm, marker = _mask_of(out, by_id, rows["permuted"]["step"])
    assert set(marker["result"]["shuffled"]) == copies
    for k in ticket:
        if k in copies:
            assert int(perm[k].sum()) == int(ticket[k].sum()) and not torch.equal(perm[k], ticket[k]), k
        else:
            assert torch.equal(perm[k], ticket[k]), k
    # trained from the ticket's own (transferred) weights at the rewind step
    pm = by_id[rows["permuted"]["step"]]
    assert pm["inputs"]["weights"] == tr_id and pm["settings"]["start_step"] == 1


def test_copied_tensors_follows_the_authors_permute_copy():
    # 5 -> 9 blocks, copies right after the run (0:0;1:1,3,5;2:2,4,6;3:7;4:8): positions 3..6 are copies
    rows = [(0, j, i, [f"b{j}.w"]) for j, i in enumerate([0, 1, 2, 1, 2, 1, 2, 3, 4])]
    assert copied_tensors(rows) == ["b3.w", "b4.w", "b5.w", "b6.w"]
    # squeeze: nothing is a copy
    assert copied_tensors([(0, j, i, [f"b{j}.w"]) for j, i in enumerate([0, 1, 2])]) == []
    # blocks of different stages with the same index are not copies of each other
    assert copied_tensors([(0, 1, 1, ["a"]), (1, 1, 1, ["b"])]) == []


def test_imp_matched_hits_the_transferred_sparsity_from_the_previous_level(run):
    out, by_id, rows, _ = run
    ticket, _ = _mask_of(out, by_id, rows["transfer"]["step"])
    m = by_id[rows["imp-matched"]["step"]]
    assert m["kind"] == "imp-matched"
    mask = load_mask(out / "steps" / m["id"] / "mask.safetensors")
    assert sum(int(v.sum()) for v in mask.values()) == sum(int(v.sum()) for v in ticket.values())
    # pruned on from the deepest IMP level that is not sparser, nested in its mask
    level = m["result"]["from_level"]
    prev = by_id[m["inputs"]["prev"]]
    assert prev["kind"] == ("imp" if level else "dense")
    assert level == 2 and rows["imp"]["sparsity"] < rows["imp-matched"]["sparsity"]  # 36.8% is past level 2's 36%
    if level:
        pm = load_mask(out / "steps" / prev["id"] / "mask.safetensors")
        assert all(not bool((mask[k] & ~pm[k]).any()) for k in mask)


def test_validation_split_is_disjoint_seeded_and_sized():
    from elastigraph.train.data import load_dataset

    ds = load_dataset("synthetic", split="train", limit=40, seed=0)
    tr, va = split_validation(ds, 0.25, seed=3)
    assert len(tr) == 30 and len(va) == 10
    tr2, va2 = split_validation(ds, 0.25, seed=3)
    assert torch.equal(va.x, va2.x) and torch.equal(tr.y, tr2.y)
    rows = {tuple(x.flatten().tolist()) for x in ds.x}
    assert len(rows) == 40  # synthetic images are distinct, so disjointness is checkable
    assert not ({tuple(x.flatten().tolist()) for x in tr.x} & {tuple(x.flatten().tolist()) for x in va.x})


def test_thread_count_enters_every_training_and_scoring_step_key(tmp_path):
    """CPU results differ between thread counts, so a cache never mixes them."""
    from elastigraph.recipes.cache import step_id
    from elastigraph.recipes.runner import Runner
    from elastigraph.recipes.schema import ModelSpec

    runner = Runner(load_recipe(STRETCH), tmp_path)
    spec = ModelSpec.model_validate("cifar_resnet_20?width=4")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = runner._train_settings(spec, 0)
        torch.set_num_threads(2)
        two = runner._train_settings(spec, 0)
    finally:
        torch.set_num_threads(before)
    assert one["threads"] == 1 and two["threads"] == 2
    assert step_id("retrain", one, {}) != step_id("retrain", two, {})


def test_a_registered_baseline_runs_through_a_recipe(tmp_path):
    """Adding a baseline is one registered function: a toy that keeps the *smallest*
    rewind-point weights is accepted by the schema, gets the target's dense run scheduled
    for it (``needs=("rewind",)``), is scored at the transferred sparsity in a mask step
    of its own, retrained from the rewind weights and recorded; unregistered, the schema
    refuses it again."""
    from elastigraph.errors import RecipeError
    from elastigraph.prune import magnitude
    from elastigraph.recipes import baselines

    @baselines.register("toy-smallest", needs=("rewind",), prune_method="magnitude")
    def toy(lv):
        """Keeps the smallest-magnitude weights (a toy)."""
        def score(s):
            with torch.no_grad():
                for p in s.model.parameters():
                    p.copy_(1.0 / (p.abs() + 1e-12))
            return magnitude(s.model, sparsity=s.sparsity, **s.prunable)

        return lv.scored(score)

    recipe = {**STRETCH, "name": "toy", "baselines": ["toy-smallest"], "prune": {"rounds": 1, "rewind_step": 1},
              "dataset": {"name": "synthetic", "train_limit": 32, "test_limit": 16}}
    try:
        assert baselines.get("toy-smallest").doc == "Keeps the smallest-magnitude weights (a toy)."
        run_recipe(load_recipe(recipe), tmp_path)
    finally:
        baselines.unregister("toy-smallest")
    by_id = {m["id"]: m for m in (json.loads(f.read_text()) for f in (tmp_path / "steps").glob(f"*/{MARKER}"))}
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["records"]
            if r["role"] == "target"}
    assert set(rows) == {"transfer", "toy-smallest"}
    assert rows["toy-smallest"]["sparsity"] == pytest.approx(rows["transfer"]["sparsity"], abs=1e-6)
    retrain = by_id[rows["toy-smallest"]["step"]]
    mask_step = by_id[retrain["inputs"]["mask"]]
    dense = by_id[retrain["inputs"]["weights"]]  # retrained from the target's rewind weights ...
    assert mask_step["settings"]["method"] == "toy-smallest" and mask_step["inputs"]["weights"] == dense["id"]
    assert dense["kind"] == "dense" and dense["settings"]["model"] == "cifar_resnet_20?width=4"
    assert retrain["settings"]["start_step"] == 1  # ... at the rewind step
    mask = load_mask(tmp_path / "steps" / mask_step["id"] / "mask.safetensors")
    w = load_tensors(tmp_path / "steps" / dense["id"] / "rewind.safetensors")
    kept = torch.cat([w[k].abs()[m] for k, m in mask.items()])
    pruned = torch.cat([w[k].abs()[~m] for k, m in mask.items()])
    assert len(pruned) > 0 and kept.max() <= pruned.min()  # the smallest ones, globally
    with pytest.raises(RecipeError, match="baselines\\[0\\]: 'toy-smallest' is not one of 'imp'"):
        load_recipe(recipe)


def test_results_json_reads_back_as_the_typed_records_it_was_written_from(run, tmp_path):
    """recipes.results is the one schema of results.json: what the runner wrote loads back
    field for field, and a damaged record is a ReportError naming the field."""
    from elastigraph.errors import ReportError
    from elastigraph.recipes import results

    out, _, rows, res = run
    typed = results.load(out)
    assert typed.to_dict() == res and list(typed.to_dict()) == list(res)
    assert [list(r.to_dict()) for r in typed.records] == [list(r) for r in res["records"]]  # the order too
    t = {r.method: r for r in typed.records if r.role == "target" and r.level == 2}["transfer"]
    assert t.tests == {k: rows["transfer"][k] for k in ("test_acc", "test_loss")}
    assert t.val == {"val_acc": rows["transfer"]["val_acc"]} and t.step == rows["transfer"]["step"]
    assert typed.task.primary.key == "acc" and typed.task.primary.higher_is_better
    bad = json.loads(json.dumps(res))
    bad["records"][3]["level"] = "two"
    (tmp_path / "results.json").write_text(json.dumps(bad))
    with pytest.raises(ReportError, match=r"records\[3\]\.level is 'two', expected int"):
        results.load(tmp_path)
    bad["records"][3]["level"] = 2
    bad["records"][3]["test_acc"] = "high"
    with pytest.raises(ReportError, match=r"records\[3\]\.test_acc is 'high'"):
        results.validate(bad)
