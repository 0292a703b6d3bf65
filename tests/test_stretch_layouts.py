"""The two stretch layouts of the authors' scripts as named strategies: copies at the end
of the stage (``append``, the default) and copies right after the copied run
(``after-run``); both give the authors' mapping strings."""

from __future__ import annotations

from elastigraph import models
from elastigraph.transfer import StagePlan, parse_strategy, stretch_after_run, stretch_append, strategies, transfer


def _string(sources: list[int]) -> str:
    return StagePlan(0, "s", None, [], [], sources).mapping_string()


def test_layouts_give_the_authors_mapping_strings():
    # ResNet-32 -> 56 (5 -> 9 blocks), copies at the end of the stage
    assert _string(stretch_append(5, 9)) == "0:0;1:1,5;2:2,6;3:3,7;4:4,8"
    # ResNet-32 -> 44 (5 -> 7), copies right after the copied run
    assert _string(stretch_after_run(5, 7)) == "0:0;1:1,3;2:2,4;3:5;4:6"
    assert _string(stretch_append(5, 7)) == "0:0;1:1,5;2:2,6;3:3;4:4"
    # ResNet-20 -> 32 (3 -> 5): both layouts coincide (B0,B1,B2,B1,B2)
    assert stretch_after_run(3, 5) == stretch_append(3, 5) == [0, 1, 2, 1, 2]
    # more copies than blocks: the run cycles, each block copied as few times as possible
    assert stretch_after_run(3, 8) == [0, 1, 2, 1, 2, 1, 2, 1]
    assert stretch_after_run(4, 6) == [0, 1, 2, 1, 2, 3]


def test_after_run_is_a_named_strategy_and_plans_a_resnet():
    assert parse_strategy("after-run") == ("after-run", "keep-first")
    assert parse_strategy(None) == ("append", "keep-first") == parse_strategy("default")
    assert "after-run" in strategies() and "the default" in strategies()["append"]
    src = models.create("cifar_resnet_32", in_chans=1, width=4)
    dst = models.create("cifar_resnet_44", in_chans=1, width=4)
    mask = {n: p.detach() != 0 for n, p in src.named_parameters() if p.dim() > 1}
    t = transfer(src, mask, dst, strategy="after-run", example_input=(2, 1, 16, 16))
    assert t.plan.mapping_string() == "0:0;1:1,3;2:2,4;3:5;4:6"
    # the authors' other 32 -> 56 layout (B1, B2 copied twice) is an explicit mapping
    dst56 = models.create("cifar_resnet_56", in_chans=1, width=4)
    t56 = transfer(src, mask, dst56, mapping="0:0;1:1,3,5;2:2,4,6;3:7;4:8", example_input=(2, 1, 16, 16))
    assert [s.sources for s in t56.plan.stages] == [[0, 1, 2, 1, 2, 1, 2, 3, 4]] * 3
