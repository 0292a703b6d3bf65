"""Divergence (issue 21): a training whose loss becomes NaN/inf stops at that step with
one clear message, is recorded as diverged (TrainResult, fleet members, step results,
results.json), shows as "diverged" in every report -- tables, CSV, plots -- and never as
a number, is left out of every statistic explicitly, and makes a recipe run exit
non-zero unless the recipe sets ``expect_divergence: true``."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings

import pytest
import torch

from elastigraph import cli, errors, models
from elastigraph.report import compare, summarize, summary_table
from elastigraph.train import TrainConfig, load_dataset, train
from elastigraph.train.fleet import train_fleet
from elastigraph.train.loop import DivergenceWarning

RECIPE = (
    "name: div\n"
    "dataset: {name: synthetic, train_limit: 32, test_limit: 16}\n"
    "source: cifar_resnet_14\n"
    "targets: [{model: cifar_resnet_20}]\n"
    "train: {steps: 6, batch_size: 8}\n"
    "prune: {rounds: 1}\n"
    "baselines: [random, dense]\n"
)


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic", limit=64)


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return models.create("cifar_resnet_14", in_chans=1)


@pytest.mark.parametrize("kw, at", [({"lr": 1e30}, 1), ({"gamma": 1e30, "milestones": (0.5,)}, 5)])
def test_train_stops_at_the_diverged_step(ds, kw, at, monkeypatch):
    """On the CPU the loss is checked every step: training stops before the bad step's
    update, metrics are NaN, one DivergenceWarning names the step and the lr."""
    steps = []
    real = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: (steps.append(1), real(self, *a, **k))[1])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = train(_net(), ds, ds, TrainConfig(steps=8, batch_size=16, device="cpu", eval_every=2, **kw))
    assert r.diverged and r.diverged_at == at
    assert len(steps) == at  # the diverged step made no update
    assert math.isnan(r.test_acc) and all(math.isnan(v) for v in r.metrics.values())
    msgs = [str(x.message) for x in w if issubclass(x.category, DivergenceWarning)]
    assert len(msgs) == 1 and f"step {at + 1} of 8" in msgs[0] and "lr" in msgs[0]
    assert all(h["step"] <= at for h in r.history)  # no evaluation of NaN weights


def test_last_update_diverging_is_caught(ds):
    """The last update can make the weights (or their test loss) non-finite with no later
    training loss to show it: still diverged."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        r = train(_net(), ds, ds, TrainConfig(steps=2, batch_size=16, device="cpu", gamma=1e30, milestones=(0.5,)))
    assert r.diverged and r.diverged_at == 1


def test_healthy_training_is_not_diverged(ds):
    r = train(_net(), ds, ds, TrainConfig(steps=3, batch_size=16, device="cpu"))
    assert not r.diverged and r.diverged_at is None and 0 <= r.test_acc <= 1


def test_fleet_members_diverge_on_their_own(ds):
    """A fleet records each member's divergence as train() alone does (same step), and a
    diverging member does not spoil the others (they match a fleet without it)."""
    bad = TrainConfig(steps=6, batch_size=16, device="cpu", eval_every=2, lr=1e30)
    good = TrainConfig(steps=6, batch_size=16, device="cpu", eval_every=2)
    # members may differ only in seed: run a healthy pair, and a pair that diverges
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        div = train_fleet([_net(0), _net(1)], ds, ds, [bad, dataclasses.replace(bad, seed=1)])
        alone = train(_net(0), ds, ds, bad)
    assert [r.diverged for r in div] == [True, True]
    assert div[0].diverged_at == alone.diverged_at
    assert all(r.history == [] and math.isnan(r.test_acc) for r in div)
    ok = train_fleet([_net(0), _net(1)], ds, ds, [good, dataclasses.replace(good, seed=1)])
    assert [r.diverged for r in ok] == [False, False] and all(len(r.history) == 3 for r in ok)


def _records():
    base = {"role": "target", "target": "t", "level": 1, "sparsity": 0.2, "steps": 6}
    recs = []
    for seed in range(3):
        recs.append({**base, "seed": seed, "method": "transfer", "test_acc": 0.5 + 0.01 * seed})
        recs.append({**base, "seed": seed, "method": "imp", "test_acc": 0.4 + 0.02 * seed})
    recs.append({**base, "seed": 0, "method": "random", "test_acc": None, "test_loss": None, "diverged": True,
                 "diverged_at": 3})
    recs.append({**base, "seed": 1, "method": "random", "test_acc": 0.3})
    recs.append({**base, "seed": 0, "method": "snip", "test_acc": None, "diverged": True, "diverged_at": 0})
    return recs


def test_statistics_skip_diverged_runs_explicitly():
    rows = {s["method"]: s for s in summarize(_records())}
    assert rows["random"]["n"] == 1 and rows["random"]["diverged"] == 1 and rows["random"]["test_acc_mean"] == 0.3
    assert rows["snip"]["n"] == 0 and rows["snip"]["diverged"] == 1 and math.isnan(rows["snip"]["test_acc_mean"])
    assert rows["transfer"]["diverged"] == 0 and rows["transfer"]["n"] == 3
    # the best baseline is picked among runs that trained; a diverged run pairs with nothing
    best = [c for c in compare(_records()) if c["kind"] == "best baseline"]
    assert [c["b"] for c in best] == ["random"] and best[0]["n"] == 1
    from rich.console import Console

    con = Console(width=200, record=True)
    con.print(summary_table({"recipe": "r", "seeds": [0, 1, 2], "records": _records()}))
    text = con.export_text()
    snip_row = next(line for line in text.splitlines() if " snip " in line)
    random_row = next(line for line in text.splitlines() if " random " in line)
    assert "diverged" in snip_row and "nan" not in snip_row.lower()
    assert "1 diverged" in random_row


def _run(tmp_path, capsys, *extra):
    (tmp_path / "r.yaml").write_text(RECIPE)
    rc = cli.main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--set", "train.gamma=1e30",
                   "--fleet", "off", *extra])
    return rc, *capsys.readouterr()


def test_recipe_with_diverging_training_end_to_end(tmp_path, capsys):
    """train.gamma=1e30 on a smoke-sized recipe: the run stops the diverged chain, writes
    results and report showing 'diverged' (JSON null + flag, CSV cells, plot title, table)
    and exits 2 with one error line; a rerun from the cache exits 2 too."""
    rc, out, err = _run(tmp_path, capsys)
    assert rc == 2 and "Traceback" not in out + err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 2 training(s) of recipe 'div' diverged"), last  # source and target dense
    assert "source cifar_resnet_14 dense level=0 seed=0 at step" in last
    assert "expect_divergence: true" in err
    assert "[diverged] train CifarResNet diverged: the loss is NaN/inf at step" in out
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())
    div = [r for r in res["records"] if r.get("diverged")]
    assert div and all(r["test_acc"] is None and r["test_loss"] is None for r in div)
    assert isinstance(div[0]["diverged_at"], int)
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert all(r["test_acc"] == "diverged" for r in rows if r["step"] in {d["step"] for d in div})
    summ = list(csv.DictReader((run / "summary.csv").open()))
    assert any(r["diverged"] == "1" and r["test_acc_mean"] == "diverged" for r in summ)
    assert (run / "accuracy.png").stat().st_size > 0
    # the table of `elastigraph report` shows it, never a number
    rc2 = cli.main(["report", str(run)])
    out2, _ = capsys.readouterr()
    assert rc2 == 0 and "diverged" in out2
    # rerun: every step from the cache, still non-zero
    rc3, out3, err3 = _run(tmp_path, capsys)
    assert rc3 == 2 and "diverged" in err3


def test_expect_divergence_makes_it_an_expected_outcome(tmp_path, capsys):
    rc, out, err = _run(tmp_path, capsys, "--set", "expect_divergence=true")
    assert rc == 0, err
    assert "expected: the recipe sets expect_divergence: true" in out
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert any(r.get("diverged") for r in res["records"])


def test_runner_raises_a_named_error_with_the_summary(tmp_path):
    from elastigraph.recipes import load_recipe, run_recipe

    (tmp_path / "r.yaml").write_text(RECIPE)
    r = load_recipe(tmp_path / "r.yaml", overrides=["train.lr=1e30"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        with pytest.raises(errors.DivergedError, match="diverged") as e:
            run_recipe(r, tmp_path / "run", fleet="off")
    assert e.value.summary is not None and e.value.summary.diverged
    assert isinstance(e.value, ValueError)


def test_cli_train_diverged_is_one_error_line(tmp_path, capsys):
    rc = cli.main(["train", "cifar_resnet_14", "--dataset", "synthetic", "--steps", "3", "--lr", "1e30",
                   "--train-limit", "32", "--test-limit", "16", "--batch-size", "8", "--out", str(tmp_path / "t.json")])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("error: training cifar_resnet_14 diverged")
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["diverged"] is True and res["test_acc"] is None


def test_lmc_with_a_diverged_training_is_diverged_never_a_number(ds, tmp_path):
    """Linear mode connectivity whose training diverges: no interpolation is measured,
    the result and its rows say 'diverged' (None in JSON, cells in lmc.csv, named in the
    figure), and a healthy row beside it is still drawn."""
    from elastigraph.analyses import linear_mode_connectivity, plot_lmc, write_lmc_csv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        bad = linear_mode_connectivity(_net(), ds, ds, TrainConfig(steps=3, batch_size=16, device="cpu", lr=1e30),
                                       points=3)
    good = linear_mode_connectivity(_net(), ds, ds, TrainConfig(steps=2, batch_size=16, device="cpu"), points=3)
    assert bad.diverged and not good.diverged
    d = bad.to_dict()
    assert d["diverged"] is True and d["barrier"] is None and d["endpoint_acc"] == [None, None] and d["test_acc"] == []
    assert json.loads(json.dumps(d, allow_nan=False)) == d  # strict JSON: no NaN anywhere
    assert "diverged" not in good.to_dict() and 0 <= good.to_dict()["barrier"] <= 1
    rows = [{"seed": 0, "target": "t", "level": 1, "method": m, "sparsity": 0.2, **r.to_dict()}
            for m, r in (("transfer", bad), ("imp", good))]
    write_lmc_csv(rows, tmp_path / "lmc.csv")
    lines = list(csv.reader((tmp_path / "lmc.csv").open()))
    assert lines[1][5:] == ["diverged"] * 5 and lines[2][5] != "diverged"
    plot_lmc(rows, tmp_path / "lmc.png")
    assert (tmp_path / "lmc.png").stat().st_size > 0


def test_heal_table_counts_diverged_healings():
    """The healing table: a cell whose healings all diverged shows 'diverged', a mixed one
    counts them beside n; neither enters the gain."""
    from rich.console import Console

    from elastigraph.report import heal_summary

    base = {"role": "target", "target": "t", "method": "heal", "sparsity": 0.2, "steps": 2}
    recs = [{**base, "seed": 0, "level": 1, "test_acc": 0.6, "before": {"acc": 0.5},
             "sparsity_before": 0.2, "sparsity_after": 0.2},
            {**base, "seed": 1, "level": 1, "test_acc": None, "diverged": True, "diverged_at": 1},
            {**base, "seed": 0, "level": 2, "test_acc": None, "diverged": True, "diverged_at": 0}]
    rows = {r["level"]: r for r in heal_summary(recs)}
    assert rows[1]["n"] == 1 and rows[1]["diverged"] == 1 and rows[1]["gain"] == pytest.approx(0.1)
    assert rows[2]["n"] == 0 and rows[2]["diverged"] == 1 and rows[2]["after"] is None
    con = Console(width=200, record=True)
    con.print(summary_table({"recipe": "r", "seeds": [0, 1], "records": recs}))
    text = con.export_text()
    assert "1 (1 diverged)" in text and "0 (1 diverged)" in text
