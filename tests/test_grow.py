"""transfer(grow="identity") (issue 20 §3): a growth operator, not E-LTH, never the
default. A stage whose source holds only its shape-changing block 0 gets new blocks that
keep the target's own weights with the residual branch zeroed (so the grown model computes
what the source computes) and the mask of the nearest source block of the same shapes."""

import copy

import pytest
import torch
from torch import nn

from elastigraph import masks
from elastigraph.errors import SegmentMismatchError, StrategyError
from elastigraph.transfer import Plan, transfer


class Block(nn.Module):
    def __init__(s, cin, cout):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(cin, cout), nn.Linear(cout, cout)
        s.skip = nn.Linear(cin, cout) if cin != cout else None

    def forward(s, x):
        y = s.fc2(torch.relu(s.fc1(x)))
        return (s.skip(x) if s.skip is not None else x) + y


class Net(nn.Module):
    """Stages of 16 and 24 features (a third of 16 after them); each block 0 changes the
    width, the others keep it."""

    def __init__(s, d1, d2, d3=2):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 12), nn.Linear(16, 4)
        s.s1 = nn.Sequential(Block(12, 16), *[Block(16, 16) for _ in range(d1 - 1)])
        s.s2 = nn.Sequential(Block(16, 24), *[Block(24, 24) for _ in range(d2 - 1)])
        s.s3 = nn.Sequential(Block(24, 16), *[Block(16, 16) for _ in range(d3 - 1)])

    def forward(s, x):
        return s.head(s.s3(s.s2(s.s1(s.stem(x)))))


def _mask(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < 0.4 for n, p in m.named_parameters() if p.dim() == 2}


def test_identity_growth_keeps_the_function_and_takes_the_nearest_mask():
    torch.manual_seed(0)
    src, dst = Net(1, 3), Net(3, 3)
    mask = _mask(src)
    with pytest.raises(SegmentMismatchError, match=r"source stage has a single block .*\(grow='identity'"):
        transfer(src, mask, dst, example_input=(2, 8))  # never the default
    t = transfer(src, mask, dst, example_input=(2, 8), grow="identity")
    stage = next(s for s in t.plan.stages if s.label == "s1")
    assert stage.sources == [0, -1, -1] and stage.mapping_string() == "0:0"
    assert Plan.from_json(t.plan.to_json()).stages[0].sources == stage.sources  # a grown plan round-trips
    x = torch.randn(5, 8)
    ref = masks.install(copy.deepcopy(src), mask).eval()(x)  # the source ticket's function
    t.apply(dst)
    dst.eval()
    for j in (1, 2):  # the grown blocks: zeroed last layer, own first layer, the mask of a 16-wide block
        assert torch.count_nonzero(dst.s1[j].fc2.weight_orig) == 0 and torch.count_nonzero(dst.s1[j].fc2.bias) == 0
        assert torch.equal(t.mask[f"s1.{j}.fc1.weight"], mask["s3.1.fc1.weight"])  # s3: the nearest of 16
    assert torch.allclose(dst(x), ref, atol=1e-6)  # the grown model computes what the source does
    with pytest.raises(StrategyError, match="grow='zeros'"):
        transfer(src, mask, dst, example_input=(2, 8), grow="zeros")


def test_identity_growth_needs_a_block_of_the_same_shapes():
    src, dst = Net(1, 2, 1), Net(3, 2, 1)
    with pytest.raises(SegmentMismatchError, match=r"grow='identity': target block s1\.1 .* no source block of the "
                                                   r"same tensor shapes"):
        transfer(src, _mask(src), dst, example_input=(2, 8), grow="identity")
