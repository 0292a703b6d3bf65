"""The MLP family (open_lth's mnist_lenet): names build the right layers, the graph
analysis finds the hidden layers as one stage whose block 0 is the 784 -> width layer,
and transfer stretches/squeezes tickets between 2, 3 and 4 hidden layers with every
tensor copied from the block the plan names."""

import pytest
import torch

import elastigraph as eg
from elastigraph import models
from elastigraph.errors import ModelNameError, SegmentMismatchError
from elastigraph.models.mlp import MLP

X = (2, 1, 28, 28)


def test_mlp_names_build_open_lth_layers():
    m = models.create("mlp_300_100", in_chans=1, num_classes=10)
    assert isinstance(m, MLP) and m.hidden == (300, 100)
    assert [tuple(l.weight.shape) for l in m.fc_layers] == [(300, 784), (100, 300)]
    assert tuple(m.fc.weight.shape) == (10, 100)
    m = models.create("mlp", in_chans=3, num_classes=7, depth=3, width=64, img_size=32)
    assert [tuple(l.weight.shape) for l in m.fc_layers] == [(64, 3072), (64, 64), (64, 64)]
    assert m(torch.randn(4, 3, 32, 32)).shape == (4, 7)
    # the recipe spelling: a model spec string
    from elastigraph.recipes.schema import ModelSpec

    m = ModelSpec.model_validate("mlp?depth=4&width=50").build(in_chans=1, num_classes=10, img_size=28)
    assert len(m.fc_layers) == 4 and m.fc_layers[0].in_features == 784
    with pytest.raises(ModelNameError, match="depth >= 1"):
        models.create("mlp", depth=0)
    with pytest.raises(ModelNameError, match="bad overrides"):
        models.create("mlp_300", depth=3)


@pytest.mark.parametrize("depth", [3, 4])
def test_analysis_finds_hidden_layers_as_a_stage_with_block0(depth):
    g = eg.analyze(models.create("mlp", depth=depth, width=32, in_chans=1), X)
    assert len(g.stages) == 1
    st = g.stages[0]
    assert st.block0_label == "fc_layers.0"  # 784 -> 32 changes the shape: fixed
    assert [u.label for u in st.segment.units] == [f"fc_layers.{i}" for i in range(1, depth)]
    assert st.n_blocks == depth


def _ticket_mask(model, seed=0, density=0.3):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters() if n.endswith("weight")}


@pytest.mark.parametrize("d_src,d_dst,sources", [
    (2, 3, [0, 1, 1]), (2, 4, [0, 1, 1, 1]), (3, 4, [0, 1, 2, 1]),
    (4, 2, [0, 1]), (4, 3, [0, 1, 2]), (3, 2, [0, 1]),
])
def test_transfer_between_depths_copies_the_planned_layers(d_src, d_dst, sources):
    torch.manual_seed(0)
    src = models.create("mlp", depth=d_src, width=32, in_chans=1)
    dst = models.create("mlp", depth=d_dst, width=32, in_chans=1)
    mask = _ticket_mask(src)
    t = eg.transfer(src, mask, dst, example_input=X)
    assert len(t.plan.stages) == 1 and t.plan.stages[0].sources == sources
    assert t.plan.stages[0].block0 == "fc_layers.0"
    for j, i in enumerate(sources):
        for p in ("weight", "bias"):
            assert torch.equal(t.weights[f"fc_layers.{j}.{p}"], src.state_dict()[f"fc_layers.{i}.{p}"])
        assert torch.equal(t.mask[f"fc_layers.{j}.weight"], mask[f"fc_layers.{i}.weight"])
    assert torch.equal(t.weights["fc.weight"], src.fc.weight) and torch.equal(t.mask["fc.weight"], mask["fc.weight"])
    assert set(t.mask) == {n for n, _ in dst.named_parameters() if n.endswith("weight")}
    t.apply(dst)
    assert dst(torch.randn(*X)).shape == (2, 10)


def test_transfer_mlp_explicit_mapping_and_limits():
    src = models.create("mlp", depth=3, width=16, in_chans=1)
    dst = models.create("mlp", depth=4, width=16, in_chans=1)
    t = eg.transfer(src, _ticket_mask(src), dst, mapping="0:0;1:1,2;2:3", example_input=X)
    assert t.plan.stages[0].sources == [0, 1, 1, 2]
    # one hidden layer is only block 0: nothing to stretch from
    one = models.create("mlp", depth=1, width=16, in_chans=1)
    with pytest.raises(SegmentMismatchError):
        eg.transfer(one, _ticket_mask(one), dst, example_input=X)
