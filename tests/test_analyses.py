"""Linear mode connectivity: interpolation and barrier known answers, and the full
measurement on a tiny MLP (endpoints = the two trained networks, barrier 0 when both
trainings end at the same weights)."""

import pytest
import torch

from elastigraph import models
from elastigraph.analyses import (
    alphas_for, error_barrier, interpolate_state, interpolation_curve, linear_mode_connectivity,
)
from elastigraph.errors import ConfigError
from elastigraph.train import TrainConfig, evaluate
from elastigraph.train.data import synthetic


def test_interpolate_state_endpoints_and_midpoint():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, -2.0]), "n": torch.tensor(7)}
    assert torch.equal(interpolate_state(a, b, 0)["w"], a["w"])
    assert torch.equal(interpolate_state(a, b, 1)["w"], b["w"])
    mid = interpolate_state(a, b, 0.5)
    assert torch.equal(mid["w"], torch.tensor([2.0, 0.0])) and int(mid["n"]) == 3  # integers from a
    with pytest.raises(ConfigError, match="different keys"):
        interpolate_state(a, {"w": b["w"]}, 0.5)


def test_error_barrier_known_answers():
    al = alphas_for(11)
    assert al[0] == 0 and al[-1] == 1 and len(al) == 11
    assert error_barrier(al, [0.2] * 11) == 0  # identical endpoints, flat path
    assert error_barrier(al, [0.1 + 0.2 * a for a in al]) == pytest.approx(0, abs=1e-12)  # linear path
    assert error_barrier([0, 0.5, 1], [0.1, 0.5, 0.3]) == pytest.approx(0.3)  # 0.5 - (0.1 + 0.3) / 2
    assert error_barrier([0, 0.25, 1], [0.1, 0.4, 0.5]) == pytest.approx(0.2)  # 0.4 - 0.2
    assert error_barrier([0, 0.5, 1], [0.3, 0.1, 0.3]) == 0  # better in the middle: no barrier
    with pytest.raises(ConfigError):
        error_barrier([0.1, 1], [0.1, 0.2])
    with pytest.raises(ConfigError, match="at least 3"):
        alphas_for(2)


def _setup():
    torch.manual_seed(0)
    tr = synthetic(256, seed=1, split="train")
    te = synthetic(128, seed=1, split="test")
    model = models.create("mlp", depth=2, width=32, in_chans=1)
    g = torch.Generator().manual_seed(0)
    mask = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters() if n.endswith("weight")}
    return model, tr, te, mask


def test_lmc_endpoints_are_the_two_trained_networks():
    model, tr, te, mask = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(steps=12, batch_size=32, lr=0.05, augment=False, device="cpu")
    res = linear_mode_connectivity(model, tr, te, cfg, mask=mask, data_seeds=(1, 2), points=11)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    assert len(res.alphas) == len(res.test_acc) == 11 and res.steps == 12
    sa, sb = res.states
    assert not torch.equal(sa["fc.weight"], sb["fc.weight"])  # two data orders, two results
    for st, acc in zip(res.states, res.endpoint_acc):
        net = models.create("mlp", depth=2, width=32, in_chans=1)
        net.load_state_dict(st)
        assert evaluate(net, te, device="cpu")[1] == acc
        for n, m in mask.items():
            assert (st[n][~m] == 0).all()  # trained under the mask
    assert res.endpoint_acc == (res.test_acc[0], res.test_acc[-1])
    errors = [1 - a for a in res.test_acc]
    assert res.barrier == pytest.approx(error_barrier(res.alphas, errors)) and res.barrier >= 0
    assert res.barrier_mean == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)
    d = res.to_dict()
    assert "states" not in d and d["data_seeds"] == [1, 2]


def test_lmc_barrier_is_zero_when_both_runs_end_at_the_same_weights():
    model, tr, te, mask = _setup()
    cfg = TrainConfig(steps=3, batch_size=32, lr=0.0, momentum=0.0, weight_decay=0.0, augment=False, device="cpu")
    res = linear_mode_connectivity(model, tr, te, cfg, mask=mask, data_seeds=(5, 6), points=11)
    assert len(set(res.test_acc)) == 1 and res.barrier == 0 and res.barrier_mean == 0
    alphas, accs, _ = interpolation_curve(model, res.states[0], res.states[0], te, mask=mask, points=5, device="cpu")
    assert alphas == [0, 0.25, 0.5, 0.75, 1] and len(set(accs)) == 1
    with pytest.raises(ConfigError, match="two distinct"):
        linear_mode_connectivity(model, tr, te, cfg, mask=mask, data_seeds=(1, 1))
