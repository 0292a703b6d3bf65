"""Block influence (issue 19, which blocks to drop): a block that leaves its input
unchanged scores 0 and is the one a squeeze drops, for a traced CNN and for a Hugging
Face decoder captured with torch.export."""

from __future__ import annotations

import pytest
import torch

import elastigraph as eg
from elastigraph.errors import ConfigError, StrategyError
from elastigraph.influence import block_influence, influence_mapping
from elastigraph.models import create


def _silence(model, prefix: str, names: tuple[str, ...]) -> None:
    """Zero the last layer of a residual branch: the block's output is its input."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith(prefix) and any(n.endswith(s) for s in names):
                p.zero_()


def test_an_identity_block_scores_zero_and_is_dropped():
    torch.manual_seed(0)
    src, dst = create("cifar_resnet_32"), create("cifar_resnet_20")
    _silence(src, "layer1.3.", ("bn2.weight", "bn2.bias"))  # relu(x + 0) = x: x is post-ReLU
    x = [torch.randn(4, 3, 32, 32)]
    scores = block_influence(src, x)
    assert len(scores) == 3 and [len(s) for s in scores] == [5, 5, 5]
    assert scores[0][3] == pytest.approx(0.0, abs=1e-6)
    assert min(v for v in scores[0] if v == v) == scores[0][3] and all(v > 1e-3 for i, v in enumerate(scores[0]) if i != 3)
    mapping = influence_mapping(src, dst, x)
    stage0 = mapping.split("|")[0]
    keep = [int(part.split(":")[0]) for part in stage0.split(";")]
    assert keep[0] == 0 and 3 not in keep and len(keep) == 3
    ticket = eg.transfer(src, eg.masks.full_mask(src), dst, mapping=mapping)
    assert 3 not in ticket.plan.stages[0].sources and ticket.plan.stages[0].sources[0] == 0


def test_influence_on_a_torch_export_capture():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, vocab_size=256)
    src, dst = create("hf:llama", num_hidden_layers=4, **cfg), create("hf:llama", num_hidden_layers=2, **cfg)
    _silence(src, "model.layers.2.", ("o_proj.weight", "down_proj.weight"))  # both residual branches add 0
    ids = [torch.randint(0, 256, (2, 16))]
    scores = block_influence(src, ids)
    assert eg.analyze(src).traced.capture == "torch.export"
    assert scores[0][2] == pytest.approx(0.0, abs=1e-6) and all(v > 1e-4 for i, v in enumerate(scores[0]) if i != 2)
    mapping = influence_mapping(src, dst, ids)
    keep = [int(p.split(":")[0]) for p in mapping.split(";")]
    assert keep[0] == 0 and 2 not in keep and len(keep) == 2


def test_influence_refuses_a_stretch_and_no_data():
    src, dst = create("cifar_resnet_20"), create("cifar_resnet_32")
    with pytest.raises(StrategyError, match="grows from 3 to 5"):
        influence_mapping(src, dst, [torch.randn(2, 3, 32, 32)])
    with pytest.raises(ConfigError, match="no batches"):
        block_influence(src, [])


def test_influence_is_a_squeeze_strategy_of_transfer():
    torch.manual_seed(0)
    src, dst = create("cifar_resnet_32"), create("cifar_resnet_20")
    _silence(src, "layer1.3.", ("bn2.weight", "bn2.bias"))
    x = [torch.randn(4, 3, 32, 32)]
    ticket = eg.transfer(src, eg.masks.full_mask(src), dst, strategy="influence", calibration=x)
    assert ticket.plan.stages[0].sources == [int(p.split(":")[0]) for p in influence_mapping(src, dst, x).split("|")[0].split(";")]
    assert 3 not in ticket.plan.stages[0].sources and ticket.plan.strategy == "append+influence"
    with pytest.raises(StrategyError, match="calibration="):
        eg.transfer(src, eg.masks.full_mask(src), dst, strategy="influence")


def test_a_recipe_squeezes_by_influence_scored_on_the_trained_source(tmp_path):
    from elastigraph.recipes import load_recipe, run_recipe

    data = {"name": "influence", "dataset": {"name": "synthetic", "train_limit": 64, "test_limit": 32, "val_fraction": 0.25},
            "source": "mlp?depth=4&width=16", "prune": {"rounds": 1, "rewind_step": 1},
            "train": {"steps": 3, "batch_size": 16, "augment": False},
            "targets": [{"model": "mlp?depth=2&width=16", "strategy": "influence", "label": "M2"},
                        {"model": "mlp?depth=2&width=16", "strategy": "even", "label": "M2-even"}],
            "baselines": ["random"], "seeds": [0], "device": "cpu"}
    run_recipe(load_recipe(data), tmp_path, workers=1)
    plans = {}
    for d in (tmp_path / "steps").iterdir():
        if d.name.startswith("transfer-"):
            import json

            plan = json.loads((d / "plan.json").read_text())
            plans[plan["strategy"]] = plan["stages"][0]["sources"]
    assert set(plans) == {"mapping", "append+even"} and plans["mapping"][0] == 0 and len(plans["mapping"]) == 2
