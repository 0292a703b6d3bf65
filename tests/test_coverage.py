"""The coverage benchmark's independent check (benchmarks/coverage.py) and the fixes it
led to. The benchmark itself is run by hand (docs/coverage.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import elastigraph as eg

_spec = importlib.util.spec_from_file_location(
    "eg_coverage", Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py")
coverage = importlib.util.module_from_spec(_spec)
sys.modules["eg_coverage"] = coverage  # dataclasses look their module up there
_spec.loader.exec_module(coverage)


class _Net(nn.Module):
    def __init__(self, depths):
        super().__init__()
        self.stem, self.down, self.head = nn.Linear(4, 8), nn.Linear(8, 12), nn.Linear(12, 2)
        self.stages = nn.ModuleList(
            nn.Sequential(*[nn.Sequential(nn.Linear(w, w), nn.ReLU()) for _ in range(d)]) for w, d in zip((8, 12), depths))

    def forward(self, x):
        x = self.stem(x)
        for i, st in enumerate(self.stages):
            x = self.down(x) if i else x
            for b in st:
                x = x + b(x)
        return self.head(x)


def _ticket(src, dst):
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}
    return eg.transfer(src, mask, dst, example_input=(2, 4))


def test_check_accepts_a_correct_ticket_and_names_each_kind_of_wrong_one():
    src, dst = _Net((2, 2)), _Net((3, 3))
    t = _ticket(src, dst)
    assert coverage.check_ticket(t, src, dst) == []
    # a target block assembled from two source blocks
    bad = dict(t.weights)
    bad["stages.0.2.0.bias"] = src.stages[0][0][0].bias.detach()
    t.weights = bad
    assert any("assembled from source blocks" in p for p in coverage.check_ticket(t, src, dst))
    # a tensor from another stage
    t.weights = dict(bad, **{"stages.1.2.0.bias": src.stages[0][1][0].bias.detach().repeat(2)[:12]})
    assert any("not a source tensor" in p for p in coverage.check_ticket(t, src, dst))
    t.weights = dict(bad, **{"stages.1.2.0.weight": src.stages[1][1][0].weight.detach(),
                             "stages.1.1.0.weight": src.stages[1][0][0].weight.detach()})
    assert any("stages.1.1 is assembled" in p for p in coverage.check_ticket(t, src, dst))
    # a fixed part from another role
    t.weights = dict(bad, **{"stages.0.2.0.bias": src.stem.bias.detach()})
    assert any("another role" in p for p in coverage.check_ticket(t, src, dst))


def test_two_depths_and_name_components():
    assert coverage._two_depths(12) == (4, 5)
    assert coverage._two_depths((3, 3, 9, 3)) == ((2, 2, 2, 2), (3, 3, 3, 3))
    assert coverage._two_depths([1, 1, 3]) == ([1, 1, 2], [1, 1, 3])
    # asked again: by whole periods (alternating kinds), from 2 blocks a stage (single-block sources)
    assert coverage._two_depths((3, 3, 9, 3), step=2) == ((2, 2, 2, 2), (4, 4, 4, 4))
    assert coverage._two_depths([1, 1, 1, 1], lo=2) == ([2, 2, 2, 2], [3, 3, 3, 3])
    assert coverage._two_depths([1, 1, 3], lo=2) == ([2, 2, 2], [3, 3, 3])
    assert coverage._skeleton("trunk.block3.block3-2.f.a.0.weight") == "trunk.block#.block3-#.f.a.#.weight"
    assert coverage._skeleton("encoder.layers.encoder_layer_2.mlp.0.weight") == "encoder.layers.encoder_layer_#.mlp.#.weight"


def test_run_family_reports_ok_both_ways():
    fam = next(f for f in coverage.tv_families() if f.key == "tv:resnet")
    r = coverage.run_family(fam, timeout=120)
    assert r["status"] == "DONE" and coverage.outcomes(r) == ["OK", "OK"], r
    assert r["capture"] == "torch.fx" and r["stretch"]["plan"]["layer2"] == [0, 1, 1, 1]


def test_an_impossible_ask_is_asked_again_by_whole_periods():
    """A stage of alternating kinds refused at +1 block is asked again at +2 and counted apart."""
    timm = pytest.importorskip("timm")

    def fam(step, lo=0):
        d = coverage._two_depths((2, 2), step, lo)
        mk = lambda dd: timm.models.repvit.RepVit(embed_dim=(16, 24), depth=dd, num_classes=4, img_size=64)  # noqa: E731
        return coverage.Family("timm:repvit-tiny", "RepVit", lambda w: mk(d[0] if w == "a" else d[1]),
                               f"depth {d[0]} -> {d[1]}", (2, 3, 64, 64), restep=fam)

    r = coverage.run_family(fam(1), timeout=240)
    assert r["impossible_ask"]["knob"] == "depth (2, 2) -> (3, 3)"
    assert "come in 2 kinds that alternate" in r["impossible_ask"]["stretch"]["reason"]
    assert r["knob"] == "depth (2, 2) -> (4, 4)" and coverage.outcomes(r) == ["OK", "OK"], r
    assert coverage.summary([r])["impossible_first_asks"] == 1


def test_eval_levit_can_be_analysed_twice():
    """LeViT caches its attention biases in eval mode; a traced forward cached a proxy."""
    timm = pytest.importorskip("timm")
    m = timm.create_model("levit_128s", num_classes=10).eval()
    first = eg.analyze(m)
    assert len(eg.analyze(m).regions) == len(first.regions)
