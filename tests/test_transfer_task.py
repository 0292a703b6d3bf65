"""Transfer to another task (E-LTH Table 6): heads of different shapes are refused by
default with a hint; head="reinit" transfers everything else and gives the target's head
its own weights and a random mask at the source head's density."""

import pytest
import torch

import elastigraph as eg
from elastigraph import models
from elastigraph.errors import SegmentMismatchError, StrategyError

X = (2, 1, 28, 28)


def _mask(model, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters() if n.endswith("weight")}


def test_head_shape_mismatch_refused_by_default_with_hint():
    src = models.create("mlp", depth=2, width=32, in_chans=1, num_classes=10)
    dst = models.create("mlp", depth=3, width=32, in_chans=1, num_classes=5)
    with pytest.raises(SegmentMismatchError, match="head='reinit'"):
        eg.transfer(src, _mask(src), dst, example_input=X)
    with pytest.raises(StrategyError, match="'keep'"):
        eg.transfer(src, _mask(src), dst, example_input=X, head="new")


@pytest.mark.parametrize("classes", [5, 10, 100])
def test_head_reinit_density_and_weights(classes):
    torch.manual_seed(0)
    src = models.create("mlp", depth=2, width=32, in_chans=1, num_classes=10)
    dst = models.create("mlp", depth=3, width=32, in_chans=1, num_classes=classes)
    mask = _mask(src, density=0.2)
    t = eg.transfer(src, mask, dst, example_input=X, head="reinit", seed=1)
    assert t.reinit == ["fc.bias", "fc.weight"]
    src_density = float(mask["fc.weight"].float().mean())
    m = t.mask["fc.weight"]
    assert m.shape == (classes, 32) and m.dtype == torch.bool
    assert int(m.sum()) == round(src_density * classes * 32)  # exact kept count at the head's density
    assert torch.equal(t.weights["fc.weight"], dst.fc.weight.detach())  # the target's own init
    assert torch.equal(t.weights["fc.bias"], dst.fc.bias.detach())
    # everything else is transferred as without reinit (stretch 2 -> 3: block 1 copied)
    assert torch.equal(t.weights["fc_layers.2.weight"], src.fc_layers[1].weight)
    assert torch.equal(t.mask["fc_layers.2.weight"], mask["fc_layers.1.weight"])
    assert torch.equal(t.mask["fc_layers.0.weight"], mask["fc_layers.0.weight"])
    assert t.plan.stages[0].sources == [0, 1, 1]
    # seeded: the same seed gives the same head mask, another seed another one
    again = eg.transfer(src, mask, dst, example_input=X, head="reinit", seed=1)
    other = eg.transfer(src, mask, dst, example_input=X, head="reinit", seed=2)
    assert torch.equal(again.mask["fc.weight"], m) and not torch.equal(other.mask["fc.weight"], m)
    t.apply(dst)
    assert dst(torch.randn(*X)).shape == (2, classes)


def test_head_reinit_on_a_resnet_head():
    src = models.create("cifar_resnet_20", in_chans=1, num_classes=10, width=4)
    dst = models.create("cifar_resnet_32", in_chans=1, num_classes=100, width=4)
    mask = _mask(src, density=0.5)
    t = eg.transfer(src, mask, dst, example_input=X, head="reinit")
    assert t.reinit == ["fc.bias", "fc.weight"] and t.mask["fc.weight"].shape == (100, 16)
    assert int(t.mask["fc.weight"].sum()) == round(float(mask["fc.weight"].float().mean()) * 1600)
    assert torch.equal(t.mask["conv.weight"], mask["conv.weight"])
    assert torch.equal(t.weights["layer3.3.conv1.weight"], src.layer3[1].conv1.weight)  # stretched as usual


def test_head_reinit_traces_the_source_once(monkeypatch):
    """The reinit path analyses source, target and the stand-in target once each (the
    source's analysis is handed to transfer()), with the ticket it gave before."""
    import importlib

    mod = importlib.import_module("elastigraph.transfer")
    src = models.create("mlp", depth=2, width=32, in_chans=1, num_classes=10)
    dst = models.create("mlp", depth=3, width=32, in_chans=1, num_classes=5)
    mask = _mask(src, density=0.2)
    want = eg.transfer(src, mask, dst, example_input=X, head="reinit", seed=3)
    calls = []
    real = mod.analyze
    monkeypatch.setattr(mod, "analyze", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    t = eg.transfer(src, mask, dst, example_input=X, head="reinit", seed=3)
    assert [m is src for m in calls] == [True, False, False] and calls[1] is dst and calls[2] is not dst
    assert t.reinit == want.reinit and t.plan.to_dict() == want.plan.to_dict() and list(t.mask) == list(want.mask)
    assert all(torch.equal(t.mask[k], want.mask[k]) for k in t.mask)
    assert all(torch.equal(t.weights[k], want.weights[k]) for k in t.weights) and list(t.weights) == list(want.weights)
    # graphs the caller already has: nothing is traced but the stand-in
    calls.clear()
    sg, dg = real(src, X, name="source MLP"), real(dst, X, name="target MLP")
    again = eg.transfer(src, mask, dst, example_input=X, head="reinit", seed=3, src_graph=sg, dst_graph=dg)
    assert len(calls) == 1 and calls[0] is not src and calls[0] is not dst
    assert all(torch.equal(again.mask[k], want.mask[k]) for k in want.mask)
