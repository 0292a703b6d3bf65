"""Recipe schema, model-spec parser, overrides and the step cache (no training here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from elastigraph.errors import ModelNameError, RecipeError
from elastigraph.recipes import cache
from elastigraph.recipes.schema import (
    DEFAULT_SMOKE,
    ModelSpec,
    apply_set,
    format_model_spec,
    load_recipe,
    parse_model_spec,
    validate_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
HAVE_FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file() or bool(
    os.environ.get("FASHION_MNIST_ROOT")
)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _minimal(**over):
    base = {"name": "t", "dataset": {"name": "synthetic"}, "source": "cifar_resnet_20", "targets": [{"model": "cifar_resnet_32"}]}
    base.update(over)
    return base


# ----------------------------------------------------------------------------- model specs


def test_parse_model_spec_values_are_yaml():
    name, ov = parse_model_spec("timm:vit_tiny_patch16_224?depth=6&img_size=32&qkv_bias=false&drop_rate=0.1")
    assert name == "timm:vit_tiny_patch16_224"
    assert ov == {"depth": 6, "img_size": 32, "qkv_bias": False, "drop_rate": 0.1}
    name, ov = parse_model_spec("timm:convnext_atto?depths=[3,3,27,3]")
    assert ov == {"depths": [3, 3, 27, 3]}
    assert parse_model_spec("cifar_resnet_56") == ("cifar_resnet_56", {})


@pytest.mark.parametrize("bad", ["", "?depth=3", "m?depth", "m?9x=1", "m?depth=[1,2"])
def test_parse_model_spec_rejects_malformed(bad):
    with pytest.raises(ModelNameError):
        parse_model_spec(bad)


def test_format_model_spec_round_trips():
    for s in ["cifar_resnet_20", "timm:convnext_atto?depths=[2,2,6,2]&patch_size=1", "tv:resnet18?width_per_group=32"]:
        name, ov = parse_model_spec(s)
        assert parse_model_spec(format_model_spec(name, ov)) == (name, ov)
    assert ModelSpec.model_validate("timm:x?b=2&a=1").label == "timm:x?a=1&b=2"  # canonical key order
    assert ModelSpec.model_validate({"name": "timm:x", "overrides": {"a": 1, "b": 2}}).label == "timm:x?a=1&b=2"


def test_model_spec_builds_with_overrides_on_meta():
    m = ModelSpec.model_validate("cifar_vgg_11?widths=[8,8,16,16,16]").build(in_chans=1, num_classes=7, device="meta")
    assert next(m.parameters()).device.type == "meta"
    assert m.fc.out_features == 7
    first = next(p for n, p in m.named_parameters() if p.dim() == 4)
    assert tuple(first.shape) == (8, 1, 3, 3)


# ----------------------------------------------------------------------------- recipes


@needs_fmnist
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate_full_and_smoke(path):
    full = load_recipe(path)
    # a shipped recipe is an experiment, not a smoke run: mean and spread over seeds,
    # and at least 4 IMP levels to compare methods at matched sparsities
    # ... on data every machine has (Fashion-MNIST, or a class split of it), targets included
    # (a language model on the interpreter's own sources: at least 2 levels, it costs more)
    datasets = [full.dataset] + [t.dataset for t in full.targets if t.dataset is not None]
    text = full.dataset.name.partition("?")[0] == "pystdlib"
    assert len(full.seeds) >= 2 and full.prune.rounds >= (2 if text else 4)
    assert all(d.name.partition("?")[0] in ("fashion_mnist", "pystdlib") for d in datasets)
    smoke = load_recipe(path, smoke=True)
    assert smoke.seeds == full.seeds[:1]
    assert smoke.prune.rounds <= 2 and smoke.train.steps <= 3
    for d in [smoke.dataset] + [t.dataset for t in smoke.targets if t.dataset is not None]:
        assert d.train_limit <= 64 and d.test_limit <= 64


def test_expected_recipe_families_are_present():
    names = {p.stem for p in RECIPES}
    assert {"cifar_resnet_stretch", "cifar_resnet_squeeze", "cifar_vgg_depth", "cifar_mobilenet_v2_depth",
            "timm_vit_depth", "timm_convnext_depth"} <= names


def test_smoke_merges_defaults_then_recipe_section():
    data = _minimal(seeds=[3, 4, 5], train={"steps": 900, "lr": 0.05}, smoke={"train": {"steps": 3}})
    r = load_recipe(data, smoke=True)
    assert r.train.steps == 3  # the recipe's own smoke section wins
    assert r.train.lr == 0.05  # untouched fields stay
    assert r.train.batch_size == DEFAULT_SMOKE["train"]["batch_size"]
    assert r.seeds == [3]
    assert r.prune.rounds == 1


def test_set_overrides_sections_lists_and_new_keys():
    data = _minimal(targets=[{"model": "cifar_resnet_32"}, {"model": "cifar_resnet_56"}])
    out = apply_set(data, "dataset.name=cifar10")
    assert out["dataset"]["name"] == "cifar10" and data["dataset"]["name"] == "synthetic"  # input untouched
    out = apply_set(out, "targets.1.mapping=0:0;1:1,2")
    assert out["targets"][1]["mapping"] == "0:0;1:1,2"
    out = apply_set(out, "train.milestones=[0.3, 0.6]")
    assert out["train"]["milestones"] == [0.3, 0.6]
    with pytest.raises(RecipeError, match="no item 5"):
        apply_set(data, "targets.5.strategy=x")
    with pytest.raises(RecipeError, match="dotted.path=value"):
        apply_set(data, "dataset.name")


def test_bad_recipe_lists_every_invalid_field_by_path():
    data = {
        "name": "bad name",
        "dataset": {"name": "synthetic"},
        "source": "cifar_resnet_21",
        "prune": {"rounds": 0, "fraction": 1.5},
        "train": {"steps": -1, "lrr": 0.1},
        "targets": [
            {"model": "cifar_resnet_32"},
            {"model": "timm:vit_tiny_patch16_224?depth=6&bogus=3", "strategy": "append", "mapping": "0:0"},
            {"model": "no_such_net"},
        ],
        "baselines": ["random", "foo"],
        "seeds": [0, 0],
    }
    with pytest.raises(RecipeError) as ei:
        validate_recipe(data, source="bad.yaml")
    msg = str(ei.value)
    lines = [ln.strip() for ln in msg.splitlines()[1:]]
    paths = [ln.split(":", 1)[0] for ln in lines]
    assert msg.startswith("bad.yaml: 11 invalid field(s):")
    assert set(paths) == {
        "name", "source", "prune.rounds", "prune.fraction", "train.steps", "train.lrr",
        "targets[1]", "targets[1].model", "targets[2].model", "baselines[1]", "seeds",
    }
    assert ("baselines[1]: 'foo' is not one of 'imp', 'imp-matched', 'reinit', 'random', 'random-global', "
            "'magnitude', 'permuted', 'snip', 'grasp', 'synflow' or 'dense'") in lines
    assert any(ln.startswith("source: CIFAR ResNet depth must be 6n+2") for ln in lines)
    assert any(ln.startswith("targets[2].model: unknown model 'no_such_net'") for ln in lines)


def test_transfer_strategies_are_checked_by_path():
    data = _minimal(targets=[
        {"model": "cifar_resnet_32", "strategy": "interpolate+even"},
        {"model": "cifar_resnet_56", "strategy": "foo"},
    ])
    with pytest.raises(RecipeError) as ei:
        validate_recipe(data)
    lines = str(ei.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith("targets[1].strategy: unknown transfer strategy 'foo'")


def test_missing_dataset_fails_validation(tmp_path):
    data = _minimal(dataset={"name": "cifar10", "root": str(tmp_path)})
    with pytest.raises(RecipeError, match=r"dataset\.name: cifar10 train files|dataset\.name: cifar10 test files"):
        validate_recipe(data)


def test_levels_must_lie_within_rounds():
    with pytest.raises(RecipeError, match=r"prune: levels \[4\] are outside 1..rounds=3"):
        validate_recipe(_minimal(prune={"rounds": 3, "levels": [1, 4]}))
    assert validate_recipe(_minimal(prune={"rounds": 3, "levels": [3, 1]})).prune.transfer_levels() == [1, 3]


# ----------------------------------------------------------------------------- step cache


def test_step_id_depends_on_kind_settings_and_inputs():
    a = cache.step_id("train", {"lr": 0.1, "seed": 0}, {"mask": "imp-1"})
    assert a == cache.step_id("train", {"seed": 0, "lr": 0.1}, {"mask": "imp-1"})  # key order irrelevant
    assert a.startswith("train-") and len(a) == len("train-") + 16
    assert a != cache.step_id("train", {"lr": 0.2, "seed": 0}, {"mask": "imp-1"})
    assert a != cache.step_id("train", {"lr": 0.1, "seed": 0}, {"mask": "imp-2"})
    assert a != cache.step_id("retrain", {"lr": 0.1, "seed": 0}, {"mask": "imp-1"})


def test_step_is_done_only_after_its_marker(tmp_path):
    c = cache.StepCache(tmp_path)
    sid = cache.step_id("x", {"a": 1}, {})
    cache.save_tensors(c.dir(sid) / "w.safetensors", {"w": torch.arange(6.0).view(2, 3).t()})  # non-contiguous
    assert not c.done(sid)
    rec = c.finish(sid, "x", {"a": 1}, {}, {"acc": 0.5})
    assert c.done(sid) and rec.result == {"acc": 0.5}
    again = c.load(sid)
    assert again.cached and again.result == {"acc": 0.5}
    assert torch.equal(cache.load_tensors(again.file("w.safetensors"))["w"], torch.arange(6.0).view(2, 3).t())
    assert json.loads((c.dir(sid) / "done.json").read_text())["settings"] == {"a": 1}
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "r.json"
    cache.write_json(p, {"v": 1})

    def failing(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache._atomic(p, failing)
    assert json.loads(p.read_text()) == {"v": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]


def test_img_size_follows_the_dataset_unless_the_spec_sets_it():
    vit = ModelSpec.model_validate("timm:vit_tiny_patch16_224?depth=1&patch_size=4")
    m = vit.build(in_chans=1, num_classes=10, img_size=28, device="meta")
    assert tuple(m.patch_embed.img_size) == (28, 28)
    m = vit.build(in_chans=3, num_classes=10, img_size=32, device="meta")
    assert tuple(m.patch_embed.img_size) == (32, 32)
    pinned = ModelSpec.model_validate("timm:vit_tiny_patch16_224?depth=1&patch_size=4&img_size=16")
    assert tuple(pinned.build(in_chans=3, num_classes=10, img_size=32, device="meta").patch_embed.img_size) == (16, 16)
    # size-agnostic models ignore it
    conv = ModelSpec.model_validate("timm:convnext_atto?depths=[1,1,1,1]")
    assert conv.build(in_chans=1, num_classes=10, img_size=28, device="meta").num_classes == 10


def test_training_settings_are_checked_by_trainconfig_all_at_once():
    """recipes.validate asks TrainConfig.problems (the one place hyper-parameters are
    checked) about every training field at once, each reported by its recipe path."""
    data = _minimal(train={"schedule": "zigzag", "milestones": [0.5]}, device="abacus")
    with pytest.raises(RecipeError) as ei:
        validate_recipe(data, source="t.yaml")
    paths = [ln.strip().split(":", 1)[0] for ln in str(ei.value).splitlines()[1:]]
    assert "train.schedule" in paths and "device" in paths
    assert any("'zigzag' is not one of" in ln for ln in str(ei.value).splitlines())
