"""The masked training loop: schedules, exact zeros under momentum + weight decay,
seeded determinism, rewind/resume, learning, progress, DDP (gloo on CPU via torchrun)."""

import copy
import json
import math
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import torch
from torch import nn

from elastigraph import masks
from elastigraph.errors import ConfigError, DatasetError
from elastigraph.train import TrainConfig, TrainResult, evaluate, lr_at, rich_progress, synthetic, total_steps, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_net(seed: int = 0, bn: bool = True, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes)]
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def data():
    return synthetic(256, (1, 12, 12), 4, seed=0), synthetic(128, (1, 12, 12), 4, seed=0, split="test")


def half_mask(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) < 0.5 for k, v in masks.full_mask(model).items()}


def strip_time(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


# ----------------------------------------------------------------- schedules / config


def test_step_schedule_with_warmup_at_known_steps():
    cfg = TrainConfig(lr=0.1, schedule="step", milestones=(0.5, 0.75), gamma=0.1, warmup_steps=10)
    assert lr_at(cfg, 0, 100) == pytest.approx(0.01)
    assert lr_at(cfg, 4, 100) == pytest.approx(0.05)
    assert lr_at(cfg, 9, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 49, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 50, 100) == pytest.approx(0.01)
    assert lr_at(cfg, 74, 100) == pytest.approx(0.01)
    assert lr_at(cfg, 75, 100) == pytest.approx(0.001)
    # the paper's CIFAR protocol: 160 epochs of 391 steps, /10 at epochs 80 and 120
    paper = TrainConfig(lr=0.1, milestones=(0.5, 0.75))
    assert lr_at(paper, 80 * 391 - 1, 160 * 391) == pytest.approx(0.1)
    assert lr_at(paper, 80 * 391, 160 * 391) == pytest.approx(0.01)
    assert lr_at(paper, 120 * 391, 160 * 391) == pytest.approx(0.001)


def test_cosine_and_constant_schedules():
    cos = TrainConfig(lr=0.2, schedule="cosine")
    assert lr_at(cos, 0, 100) == pytest.approx(0.2)
    assert lr_at(cos, 50, 100) == pytest.approx(0.1)
    assert lr_at(cos, 100, 100) == pytest.approx(0.0, abs=1e-12)
    warm = TrainConfig(lr=0.2, schedule="cosine", warmup_steps=20)
    assert lr_at(warm, 19, 100) == pytest.approx(0.2)
    assert lr_at(warm, 60, 100) == pytest.approx(0.1)
    assert lr_at(TrainConfig(lr=0.3, schedule="constant"), 77, 100) == pytest.approx(0.3)


def test_config_is_json_ready_and_validated():
    cfg = TrainConfig(milestones=[0.25, 0.5])
    assert cfg.milestones == (0.25, 0.5)
    assert json.loads(json.dumps(cfg.to_dict()))["milestones"] == [0.25, 0.5]
    assert total_steps(TrainConfig(epochs=2.5, batch_size=100), 1050) == 25
    assert total_steps(TrainConfig(steps=7, batch_size=100), 1050) == 7
    with pytest.raises(ConfigError, match="schedule='linear'"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="milestones"):
        TrainConfig(milestones=(0.75, 0.5))


# ----------------------------------------------------------------- masked training


def test_masked_weights_stay_exactly_zero_under_momentum_and_weight_decay(data):
    tr, te = data
    model = tiny_net()
    mask = half_mask(model)
    mask_before = {k: v.clone() for k, v in mask.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # weight decay this strong moves weight_orig's masked entries every step: only the
    # in-forward mask keeps the effective weights at zero
    cfg = TrainConfig(steps=6, batch_size=32, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)
    res = train(model, tr, te, cfg, mask=mask)
    assert isinstance(res, TrainResult) and res.steps == 6 and res.device == "cpu"
    for k, m in mask.items():
        assert torch.equal(mask[k], mask_before[k])  # the caller's mask is untouched
        final = res.final_state[k]
        assert final[~m].abs().max().item() == 0.0, k
        assert (final[m] != before[k][m]).float().mean() > 0.9, f"{k}: kept weights did not train"
    # plain model back: no prune hooks, no *_orig/*_mask, masked entries zero
    assert masks.from_model(model) == {}
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert set(res.final_state) == set(before)
    assert list(res.final_state) == list(before)  # same key order as the input model
    for k, v in model.state_dict().items():
        assert torch.equal(v, res.final_state[k]), k


def test_installed_mask_is_used_when_none_given(data):
    tr, te = data
    model = tiny_net()
    mask = half_mask(model, seed=5)
    masks.install(model, mask)
    res = train(model, tr, te, TrainConfig(steps=3, batch_size=32, lr=0.1, weight_decay=0.1))
    for k, m in mask.items():
        assert res.final_state[k][~m].abs().max().item() == 0.0
    assert masks.from_model(model) == {}


def test_same_seed_same_numbers_on_cpu(data):
    tr, te = data
    cfg = TrainConfig(steps=8, batch_size=32, lr=0.05, eval_every=4, augment=True, label_smoothing=0.1, seed=7)
    init = tiny_net()
    mask = half_mask(init)
    runs = [train(copy.deepcopy(init), tr, te, cfg, mask=mask) for _ in range(2)]
    assert strip_time(runs[0].history) == strip_time(runs[1].history)
    assert [h["step"] for h in runs[0].history] == [4, 8]
    for k in runs[0].final_state:
        assert torch.equal(runs[0].final_state[k], runs[1].final_state[k]), k
    other = train(copy.deepcopy(init), tr, te, TrainConfig(**{**cfg.to_dict(), "seed": 8}), mask=mask)
    assert strip_time(other.history) != strip_time(runs[0].history)


def test_adamw_trains_and_keeps_pruned_weights_zero(data):
    """AdamW's decoupled weight decay also moves weight_orig's masked entries; the
    in-forward mask must still keep them out of the effective weights."""
    tr, te = data
    model = tiny_net()
    mask = half_mask(model)
    res = train(model, tr, te, TrainConfig(optimizer="adamw", steps=40, batch_size=32, lr=3e-2, weight_decay=0.05,
                                           schedule="cosine", eval_every=10, augment=False), mask=mask)
    for k, m in mask.items():
        assert res.final_state[k][~m].abs().max().item() == 0.0, k
    assert res.history[-1]["train_loss"] < 0.75 * res.history[0]["train_loss"]
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        TrainConfig(optimizer="adam")


def test_loss_goes_down_on_a_learnable_task(data):
    tr, te = data
    res = train(tiny_net(), tr, te, TrainConfig(steps=40, batch_size=32, lr=0.05, eval_every=10, augment=False))
    first, last = res.history[0], res.history[-1]
    assert last["train_loss"] < 0.75 * first["train_loss"]
    assert last["test_acc"] >= 0.6  # chance is 0.25; 0.88 here with torch 2.14 on x86
    assert res.test_acc == last["test_acc"] and res.test_loss == last["test_loss"]
    assert math.isfinite(res.images_per_s) and res.images_per_s > 0
    # evaluate() agrees with the loop's last evaluation and leaves the model alone
    model = tiny_net()
    model.load_state_dict(res.final_state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, acc = evaluate(model, te)
    assert acc == pytest.approx(res.test_acc) and loss == pytest.approx(res.test_loss, rel=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_rewind_state_and_resume_from_it(data):
    tr, te = data
    init = tiny_net()
    mask = half_mask(init)
    cfg = TrainConfig(steps=10, batch_size=32, lr=0.05, schedule="constant")
    full = train(copy.deepcopy(init), tr, te, cfg, mask=mask, rewind_step=4)
    short = train(copy.deepcopy(init), tr, te, TrainConfig(**{**cfg.to_dict(), "steps": 4}), mask=mask)
    # the data stream and schedule depend on the global step only: the first 4 steps of
    # the long run are the short run
    for k in short.final_state:
        assert torch.equal(full.rewind_state[k], short.final_state[k]), k
        if k in mask:
            assert full.rewind_state[k][~mask[k]].abs().max().item() == 0.0
    # an IMP round: load the rewind point, train the remaining steps
    resumed = tiny_net()
    resumed.load_state_dict(full.rewind_state)
    r = train(resumed, tr, te, cfg, mask=mask, start_step=4, rewind_step=4)
    assert r.steps == 6 and r.history[-1]["step"] == 10
    assert all(torch.equal(r.rewind_state[k], full.rewind_state[k]) for k in r.rewind_state)
    with pytest.raises(ConfigError, match="rewind_step=2"):
        train(tiny_net(), tr, te, cfg, start_step=4, rewind_step=2)
    with pytest.raises(ConfigError, match="start_step=11"):
        train(tiny_net(), tr, te, cfg, start_step=11)


def test_progress_callback_and_rich_progress(data):
    tr, te = data
    calls = []
    train(tiny_net(), tr, te, TrainConfig(steps=4, batch_size=32, eval_every=2),
          progress=lambda s, t, m: calls.append((s, t, dict(m))))
    assert [(s, t) for s, t, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "test_acc" not in calls[0][2] and "test_acc" in calls[1][2]
    from rich.console import Console

    buf = StringIO()
    with rich_progress("round 1", console=Console(file=buf, force_terminal=False, width=100)) as cb:
        train(tiny_net(), tr, te, TrainConfig(steps=2, batch_size=32), progress=cb)
    assert "round 1" in buf.getvalue() and "2/2" in buf.getvalue()


def test_bad_inputs_raise_clear_errors(data):
    tr, te = data
    with pytest.raises(DatasetError, match="ArrayDataset"):
        train(tiny_net(), [(torch.zeros(1, 12, 12), 0)], te, TrainConfig(steps=1))
    with pytest.raises(ConfigError, match="not a torch device"):
        train(tiny_net(), tr, te, TrainConfig(steps=1, device="gpu0"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(tiny_net(), tr, te, TrainConfig(steps=1, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_masked_training(data):
    tr, te = data
    model = tiny_net()
    mask = half_mask(model)
    res = train(model, tr, te, TrainConfig(steps=20, batch_size=32, lr=0.05, amp=True, channels_last=True))
    assert res.device.startswith("cuda")
    assert next(model.parameters()).device.type == "cpu"
    res = train(model, tr, te, TrainConfig(steps=5, batch_size=32, weight_decay=0.1), mask=mask)
    for k, m in mask.items():
        assert res.final_state[k][~m].abs().max().item() == 0.0


# ----------------------------------------------------------------- DDP


def test_ddp_under_torchrun_matches_single_process(tmp_path):
    """Two gloo ranks on the CPU: the weights end identical on both ranks, and (no
    BatchNorm) equal to single-process training on the same global batches."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "_ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # a rare abort of a gloo rank at process teardown (seen once in ~10 fresh-clone suites on a
        # loaded 2-core machine; 3 of 3 reruns passed): launch once more, every check below unchanged
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for kind in ("plain", "bn"):
        assert r0[kind]["final"].keys() == r1[kind]["final"].keys()
        for k in r0[kind]["final"]:
            assert torch.equal(r0[kind]["final"][k], r1[kind]["final"][k]), (kind, k)
        assert strip_time(r0[kind]["history"]) == strip_time(r1[kind]["history"])
    assert r0["plain"]["device"] == "cpu x2 (ddp)"
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import _ddp_worker as w
    finally:
        sys.path.pop(0)
    single = w.run(bn=False)
    for k, v in single.final_state.items():
        torch.testing.assert_close(r0["plain"]["final"][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r0["plain"]["rewind"][k], single.rewind_state[k], rtol=1e-5, atol=1e-6)
    bn_mask = w.mask_for(w.tiny_net(True))["0.weight"]
    assert r0["bn"]["final"]["0.weight"][~bn_mask].abs().max().item() == 0.0


def test_config_problems_reports_settings_that_are_not_a_config_yet():
    from elastigraph.train import config_problems

    assert config_problems({"lr": 0.1, "steps": 10}) == []
    got = dict(config_problems({"lr": float("nan"), "schedule": "linear", "colour": "red", "task": "regression"}))
    assert set(got) == {"lr", "schedule", "colour", "task"}
    assert "finite" in got["lr"] and "'linear'" in got["schedule"] and "causal_lm" in got["task"]
    with pytest.raises(ConfigError, match="lr="):  # the same rules, raised by the config itself
        TrainConfig(lr=float("nan"))
