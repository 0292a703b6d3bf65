"""Ticket transfer: strategies, mapping strings, plans, tickets, and the model matrix."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import timm
import torchvision
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

from elastigraph import masks
from elastigraph.errors import MappingError, MaskError, SegmentMismatchError, StrategyError
from elastigraph.models import create
from elastigraph.transfer import (
    Plan, parse_mapping, squeeze_even, squeeze_keep_first, stretch_append, stretch_interpolate, strategies, transfer,
)


def rand_mask(model, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) < density for k, v in masks.full_mask(model).items()}


def seeded(fn, seed):
    torch.manual_seed(seed)
    return fn()


# ------------------------------------------------------------------ strategies & strings


def test_strategy_functions_known_answers():
    assert stretch_append(3, 5) == [0, 1, 2, 1, 2]
    assert stretch_append(3, 8) == [0, 1, 2, 1, 2, 1, 2, 1]
    assert stretch_append(5, 7) == [0, 1, 2, 3, 4, 1, 2]
    assert stretch_interpolate(5, 9) == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert stretch_interpolate(3, 4) == [0, 1, 1, 2]
    assert squeeze_keep_first(9, 3) == [0, 1, 2]
    assert squeeze_even(9, 3) == [0, 4, 8]
    assert squeeze_even(5, 4) == [0, 1, 3, 4]
    assert squeeze_even(4, 1) == [0]
    assert {"paper", "append", "interpolate", "keep-first", "even"} <= set(strategies())


def test_parse_mapping():
    assert parse_mapping("0:0;1:1,2;2:3,4", 2) == [{0: [0], 1: [1, 2], 2: [3, 4]}] * 2
    assert parse_mapping(" 0:0 ; 1:1 |0:0;1:1,2|", 3) == [{0: [0], 1: [1]}, {0: [0], 1: [1, 2]}, None]
    with pytest.raises(MappingError, match="2 stage entries.*3 stretchable"):
        parse_mapping("0:0|0:0", 3, ["a", "b", "c"])
    with pytest.raises(MappingError, match="malformed mapping entry 'x:1'"):
        parse_mapping("0:0;x:1", 1)
    with pytest.raises(MappingError, match="source block 1 appears twice"):
        parse_mapping("0:0;1:1;1:2", 1)


# ------------------------------------------------------------------ CIFAR ResNet, the paper's case


@pytest.fixture(scope="module")
def r20_r32():
    src, dst = seeded(lambda: create("cifar_resnet_20"), 0), seeded(lambda: create("cifar_resnet_32"), 1)
    for m in (src, dst):  # non-trivial BN statistics, so that buffers are checked too
        for b in m.buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 1.5)
    return src, dst


def test_cifar_stretch_default_is_append(r20_r32):
    src, dst = r20_r32
    mask = rand_mask(src)
    t = transfer(src, mask, dst)
    assert t.plan.strategy == "append+keep-first"
    assert t.plan.mapping_string() == "0:0;1:1,3;2:2,4"
    assert [s.sources for s in t.plan.stages] == [[0, 1, 2, 1, 2]] * 3
    # stage 1: block 0 identical to the rest, mapped 0:0; stages 2/3: downsampling block 0
    assert [s.block0 for s in t.plan.stages] == [None, "layer2.0", "layer3.0"]
    # mask and weights of the copies, by position in the block
    for i_dst, i_src in [(0, 0), (1, 1), (2, 2), (3, 1), (4, 2)]:
        for p in ("conv1.weight", "conv2.weight"):
            assert torch.equal(t.mask[f"layer1.{i_dst}.{p}"], mask[f"layer1.{i_src}.{p}"])
            assert torch.equal(t.weights[f"layer3.{i_dst}.{p}"], src.state_dict()[f"layer3.{i_src}.{p}"])
        for b in ("bn1.running_mean", "bn2.running_var", "bn1.num_batches_tracked", "bn2.bias"):
            assert torch.equal(t.weights[f"layer2.{i_dst}.{b}"], src.state_dict()[f"layer2.{i_src}.{b}"])
    # stem, shortcut and head carry over
    for k in ("conv.weight", "fc.weight", "fc.bias", "layer2.0.shortcut.0.weight", "bn.running_mean"):
        assert torch.equal(t.weights[k], src.state_dict()[k])
    assert set(t.mask) == set(masks.full_mask(dst))
    assert list(t.weights) == list(dst.state_dict())


def _same_ticket(a, b):
    assert a.plan.to_dict() == b.plan.to_dict() and list(a.mask) == list(b.mask) and list(a.weights) == list(b.weights)
    assert all(torch.equal(a.mask[k], b.mask[k]) for k in a.mask)
    # the source's own tensors, both ways
    assert all(a.weights[k].data_ptr() == b.weights[k].data_ptr() and torch.equal(a.weights[k], b.weights[k])
               for k in a.weights)


def test_transfer_takes_analysed_graphs(r20_r32, monkeypatch):
    """transfer(src_graph=, dst_graph=): the same ticket, and no model traced again; a
    graph of another model, of another input, or not a graph, is refused by name."""
    import importlib

    from elastigraph import analyze
    from elastigraph.errors import ModelTypeError, TraceError

    src, dst = r20_r32
    mask = rand_mask(src)
    sg, dg = analyze(src, name="source CifarResNet"), analyze(dst, name="target CifarResNet")
    want = transfer(src, mask, dst)
    mod = importlib.import_module("elastigraph.transfer")
    calls = []
    monkeypatch.setattr(mod, "analyze", lambda m, *a, **k: calls.append(m) or analyze(m, *a, **k))
    _same_ticket(transfer(src, mask, dst, src_graph=sg, dst_graph=dg), want)
    assert calls == []
    _same_ticket(transfer(src, mask, dst, src_graph=sg), want)
    assert calls == [dst]
    with pytest.raises(TraceError, match=r"dst_graph \(source CifarResNet\) is the analysis of another model than "
                                         r"the target CifarResNet"):
        transfer(src, mask, dst, src_graph=sg, dst_graph=sg)
    with pytest.raises(TraceError, match=r"dst_graph was traced with input shapes \[\(2, 3, 64, 64\)\], the source "
                                         r"with \[\(2, 3, 32, 32\)\]"):
        transfer(src, mask, dst, src_graph=sg, dst_graph=analyze(dst, (2, 3, 64, 64)))
    with pytest.raises(ModelTypeError, match="src_graph must be the ModelGraph .* got Traced"):
        transfer(src, mask, dst, src_graph=sg.traced)


def test_cifar_block_density_kept_global_drifts(r20_r32):
    src, dst = r20_r32
    mask = rand_mask(src)
    # make stage 3 sparser than the rest so that copying its blocks moves the global density
    for k in mask:
        if k.startswith("layer3.1") or k.startswith("layer3.2"):
            mask[k] = torch.zeros_like(mask[k])
    t = transfer(src, mask, dst)
    rows = {(r["stage"], r["dst_block"]): r for r in t.block_density()}
    for (stage, j), r in rows.items():
        src_block = f"{t.plan.stages[stage].label}.{r['src_block']}."
        src_d = masks.density({k: v for k, v in mask.items() if k.startswith(src_block)})
        assert r["density"] == pytest.approx(src_d)
    assert rows[(2, 3)]["density"] == 0.0
    sp = t.sparsity()
    assert sp["src"] == pytest.approx(masks.sparsity(mask))
    assert sp["dst"] == pytest.approx(masks.sparsity(t.mask))
    assert sp["dst"] > sp["src"]  # more all-zero copies in the deeper net


def test_cifar_interpolate_and_explicit_mapping(r20_r32):
    src, dst = r20_r32
    mask = rand_mask(src)
    t = transfer(src, mask, dst, strategy="interpolate")
    assert t.plan.mapping_string() == "0:0;1:1,2;2:3,4"
    t2 = transfer(src, mask, dst, mapping="0:0;1:1,2;2:3,4")
    assert t2.plan.strategy == "mapping"
    assert t2.plan.stages == t.plan.stages
    assert all(torch.equal(t.mask[k], t2.mask[k]) for k in t.mask)
    t3 = transfer(src, mask, dst, mapping="|0:0;1:1,2;2:3,4|")  # empty stage entry: the strategy
    assert [s.sources for s in t3.plan.stages] == [[0, 1, 2, 1, 2], [0, 1, 1, 2, 2], [0, 1, 2, 1, 2]]


def test_cifar_squeeze_keep_first_and_even():
    src, dst = create("cifar_resnet_56"), create("cifar_resnet_20")
    mask = rand_mask(src)
    t = transfer(src, mask, dst)
    assert t.plan.mapping_string() == "0:0;1:1;2:2"
    t = transfer(src, mask, dst, strategy="even")
    assert t.plan.mapping_string() == "0:0;4:1;8:2"
    assert torch.equal(t.mask["layer2.2.conv1.weight"], mask["layer2.8.conv1.weight"])
    assert torch.equal(t.weights["layer2.1.bn1.running_var"], src.state_dict()["layer2.4.bn1.running_var"])


def test_mapping_errors_name_stage_and_block(r20_r32):
    src, dst = r20_r32
    mask = rand_mask(src)
    with pytest.raises(MappingError, match=r"stage 0 \(layer1\): the mapping names source block 7 .* 3 block"):
        transfer(src, mask, dst, mapping="0:0;1:1,3;7:2,4")
    with pytest.raises(MappingError, match=r"target block\(s\) \[4\] are fed by no source"):
        transfer(src, mask, dst, mapping="0:0;1:1,3;2:2")
    with pytest.raises(MappingError, match="target block 3 is fed twice"):
        transfer(src, mask, dst, mapping="0:0;1:1,3;2:2,3,4")
    with pytest.raises(MappingError, match=r"stage 1 \(layer2\): block 0 changes the shape"):
        transfer(src, mask, dst, mapping="1:0;0:1,3;2:2,4")
    with pytest.raises(StrategyError, match=r"unknown transfer strategy 'best'; valid: stretch \['after-run', 'append', 'interpolate'\]"):
        transfer(src, mask, dst, strategy="best")


def test_identity_transfer_returns_the_ticket_unchanged(r20_r32):
    src, _ = r20_r32
    twin = copy.deepcopy(src)
    mask = rand_mask(src)
    t = transfer(src, mask, twin)
    assert t.mask.keys() == mask.keys() and all(torch.equal(t.mask[k], mask[k]) for k in mask)
    sd = src.state_dict()
    assert t.weights.keys() == sd.keys() and all(torch.equal(t.weights[k], sd[k]) for k in sd)
    assert all(s.kind == "same" for s in t.plan.stages)


def test_inputs_not_modified_and_deterministic(r20_r32):
    src, dst = r20_r32
    mask = {k: v.to(torch.float32) for k, v in rand_mask(src).items()}  # 0/1 floats are accepted
    sd_src = {k: v.clone() for k, v in src.state_dict().items()}
    sd_dst = {k: v.clone() for k, v in dst.state_dict().items()}
    mask_before = {k: v.clone() for k, v in mask.items()}
    t1 = transfer(src, mask, dst)
    t2 = transfer(src, mask, dst)
    for before, m in ((sd_src, src), (sd_dst, dst)):
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(mask_before[k], mask[k]) and mask[k].dtype == torch.float32 for k in mask)
    assert t1.plan.to_json() == t2.plan.to_json()
    assert all(torch.equal(t1.mask[k], t2.mask[k]) for k in t1.mask)
    assert all(t1.mask[k].dtype == torch.bool for k in t1.mask)
    assert all(torch.equal(t1.weights[k], t2.weights[k]) for k in t1.weights)


def test_apply_loads_weights_and_installs_mask(r20_r32):
    src, dst0 = r20_r32
    dst = copy.deepcopy(dst0)
    mask = rand_mask(src)
    t = transfer(src, mask, dst)
    out = t.apply(dst)
    assert out is dst
    got = masks.from_model(dst)
    assert got.keys() == t.mask.keys() and all(torch.equal(got[k], t.mask[k]) for k in got)
    w = dst.layer1.get_submodule("3").conv1
    assert torch.equal(w.weight_orig, src.layer1[1].conv1.weight)
    assert torch.equal(w.weight, src.layer1[1].conv1.weight * mask["layer1.1.conv1.weight"])
    assert torch.equal(dst.layer1[3].bn1.running_mean, src.layer1[1].bn1.running_mean)
    y = dst.eval()(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    t.apply(dst)  # applying again onto the now-pruned model works
    assert torch.equal(dst.layer1[3].conv1.weight_orig, src.layer1[1].conv1.weight)


def test_pruned_source_without_mask_dict():
    src, dst = create("cifar_resnet_20"), create("cifar_resnet_32")
    ref = rand_mask(src, seed=3)
    pruned = copy.deepcopy(src)
    for name, m in ref.items():
        mod = pruned.get_submodule(name.rpartition(".")[0])
        prune.custom_from_mask(mod, "weight", m)
    t = transfer(pruned, None, dst)
    t_ref = transfer(src, ref, dst)
    assert t.mask.keys() == t_ref.mask.keys() and all(torch.equal(t.mask[k], t_ref.mask[k]) for k in t.mask)
    assert list(t.weights) == list(dst.state_dict())  # plain names, no weight_orig / weight_mask
    assert torch.equal(t.weights["layer1.3.conv1.weight"], src.layer1[1].conv1.weight)  # the unmasked orig
    with pytest.raises(MaskError, match="no torch.nn.utils.prune masks"):
        transfer(src, None, dst)


def test_subset_masks_and_bad_masks(r20_r32):
    src, dst = r20_r32
    sub = {k: v for k, v in rand_mask(src).items() if k.startswith("layer2")}
    t = transfer(src, sub, dst)
    assert set(t.mask) == {k for k in masks.full_mask(dst) if k.startswith("layer2")}
    with pytest.raises(MaskError, match="'layer9.conv.weight' is not a parameter"):
        transfer(src, {"layer9.conv.weight": torch.ones(3)}, dst)
    with pytest.raises(MaskError, match="not binary"):
        transfer(src, {"conv.weight": torch.full((16, 3, 3, 3), 0.5)}, dst)
    with pytest.raises(MaskError, match="has shape"):
        transfer(src, {"conv.weight": torch.ones(3, 3)}, dst)


def test_plan_json_round_trip_and_reuse(r20_r32):
    src, dst = r20_r32
    t = transfer(src, rand_mask(src), dst, strategy="interpolate")
    p = Plan.from_json(t.plan.to_json())
    assert p == t.plan
    t2 = transfer(src, rand_mask(src), dst, mapping=p)
    assert [s.sources for s in t2.plan.stages] == [s.sources for s in t.plan.stages]
    with pytest.raises(MappingError, match="not a valid transfer plan"):
        Plan.from_json('{"src": "a"}')


def test_rich_output(r20_r32):
    from rich.console import Console

    src, dst = r20_r32
    c = Console(record=True, width=150)
    c.print(transfer(src, rand_mask(src), dst))
    text = c.export_text()
    assert "layer2.0" in text and "3 -> 5" in text and "stretch" in text and "global sparsity" in text


def test_different_families_name_the_first_mismatch():
    src = create("cifar_resnet_20")
    other = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(SegmentMismatchError, match="first mismatch is source CifarResNet region 1 \\(conv"):
        transfer(src, rand_mask(src), other)


# ------------------------------------------------------------------ the model matrix


def test_plan_names_each_sides_own_block0():
    """Stage block 0 sits at different places in source and target (VGG with 2 vs 4 convs
    per stage): each side's block list names its own modules (the target's block list once
    named the source's block 0, so the plan printed a target block that is another layer)."""
    src = create("cifar_vgg_11", depths=[2, 2, 2], widths=[8, 16, 32], in_chans=1)
    dst = create("cifar_vgg_11", depths=[4, 4, 4], widths=[8, 16, 32], in_chans=1)
    x = torch.randn(2, 1, 28, 28)
    t = transfer(src, rand_mask(src), dst, example_input=x)
    assert [s.dst_blocks[0] for s in t.plan.stages] == ["layers.0", "layers.5", "layers.10"]
    assert [s.src_blocks[0] for s in t.plan.stages] == ["layers.0", "layers.3", "layers.6"]
    names = dict(dst.named_modules())
    for s in t.plan.stages:  # every named target block is a conv block of the target
        assert all(hasattr(names[b], "conv") for b in s.dst_blocks)
    back = transfer(dst, rand_mask(dst), src, example_input=x)
    assert [s.src_blocks[0] for s in back.plan.stages] == ["layers.0", "layers.5", "layers.10"]
    assert [s.dst_blocks[0] for s in back.plan.stages] == ["layers.0", "layers.3", "layers.6"]


def test_torchvision_resnet18_to_34_stages_of_one_unit():
    src, dst = torchvision.models.resnet18(num_classes=10), torchvision.models.resnet34(num_classes=10)
    t = transfer(src, rand_mask(src), dst)
    assert [(len(s.src_blocks), len(s.dst_blocks)) for s in t.plan.stages] == [(2, 3), (2, 4), (2, 6), (2, 3)]
    assert t.plan.mapping_string() == "0:0;1:1,2|0:0;1:1,2,3|0:0;1:1,2,3,4,5|0:0;1:1,2"
    assert [s.block0 for s in t.plan.stages] == [None, "layer2.0", "layer3.0", "layer4.0"]
    back = transfer(dst, rand_mask(dst), src)  # and squeezing 3,4,6,3 -> 2,2,2,2
    assert [s.sources for s in back.plan.stages] == [[0, 1]] * 4
    assert back.plan.mapping_string() == "0:0;1:1"  # one string when every stage agrees


def _vgg(cfg: str, bn: bool) -> nn.Module:
    """torchvision's VGG feature stacks (configs A/B/D/E = VGG-11/13/16/19) at 1/8 width
    with a small head: same structure, fast to build."""
    from torchvision.models.vgg import cfgs, make_layers

    layers = [v if v == "M" else v // 8 for v in cfgs[cfg]]
    return nn.Sequential(make_layers(layers, batch_norm=bn), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def test_vgg_with_and_without_bn():
    v16, v19 = _vgg("D", True), _vgg("E", True)
    t = transfer(v16, rand_mask(v16), v19)
    assert [(len(s.src_blocks), len(s.dst_blocks)) for s in t.plan.stages] == [(3, 4)] * 3
    assert t.plan.mapping_string() == "0:0;1:1,3;2:2"
    assert [s.block0 for s in t.plan.stages][:2] == ["0.14..0.16", "0.24..0.26"]  # conv, bn, relu
    v11, v13 = _vgg("A", False), _vgg("B", False)
    down = transfer(v13, rand_mask(v13), v11)  # 2 convs -> 1 in the first two stages: squeeze to block 0
    # the last stage (two identical 512->512 convs in both) matches as is
    assert [(len(s.src_blocks), len(s.dst_blocks)) for s in down.plan.stages] == [(2, 1), (2, 1), (2, 2)]
    with pytest.raises(SegmentMismatchError, match="nothing to stretch from"):
        transfer(v11, rand_mask(v11), v13)  # vgg11's first stages have a single conv


def test_mobilenet_v2_deeper_and_shallower():
    base = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 2, 2]]
    deep = [[1, 16, 1, 1], [6, 24, 4, 2], [6, 32, 3, 2], [6, 64, 3, 2]]
    mk = lambda s: torchvision.models.mobilenet_v2(num_classes=10, inverted_residual_setting=s, width_mult=0.5)
    src, dst = mk(base), mk(deep)
    t = transfer(src, rand_mask(src), dst)
    assert [(len(s.src_blocks), len(s.dst_blocks)) for s in t.plan.stages] == [(2, 4), (3, 3), (2, 3)]
    assert [s.block0 for s in t.plan.stages] == ["features.2", "features.4", "features.7"]  # source names
    back = transfer(dst, rand_mask(dst), src)
    assert back.plan.mapping_string() == "0:0;1:1|0:0;1:1;2:2|0:0;1:1"
    t.apply(dst)
    assert dst.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenet_v3_deeper():
    setting, last = _mobilenet_v3_conf("mobilenet_v3_small")
    deeper = copy.deepcopy(setting)
    deeper.insert(5, copy.deepcopy(setting[5]))  # one more 40->40 block (3 -> 4 in that stage)
    src, dst = MobileNetV3(setting, last, num_classes=10), MobileNetV3(deeper, last, num_classes=10)
    t = transfer(src, rand_mask(src), dst)
    assert [(len(s.src_blocks), len(s.dst_blocks)) for s in t.plan.stages] == [(2, 2), (3, 4), (2, 2), (3, 3)]
    assert t.plan.stages[1].sources == [0, 1, 2, 1]


def test_timm_vit_depth():
    # drop_path_rate: per-block stochastic-depth rates (and Identity for block 0) must not
    # break the segment
    mk = lambda d: timm.create_model("vit_tiny_patch16_224", depth=d, img_size=32, patch_size=8, num_classes=10,
                                     drop_path_rate=0.1)
    src, dst = mk(4), mk(6)
    mask = rand_mask(src)
    t = transfer(src, mask, dst)
    assert t.plan.stages[0].sources == [0, 1, 2, 3, 1, 2]
    assert torch.equal(t.mask["blocks.5.attn.qkv.weight"], mask["blocks.2.attn.qkv.weight"])
    assert torch.equal(t.weights["blocks.4.norm1.weight"], src.state_dict()["blocks.1.norm1.weight"])
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight", "norm.bias"):
        assert torch.equal(t.weights[k], src.state_dict()[k])
    t.apply(dst)
    x = torch.randn(2, 3, 32, 32)
    assert dst.eval()(x).shape == (2, 10)
    one = transfer(src, mask, mk(1))  # squeezing to a single block works
    assert one.plan.stages[0].sources == [0]


def test_timm_convnext_depths():
    mk = lambda d: timm.create_model("convnext_tiny", depths=d, dims=(8, 16, 32, 64), num_classes=10)
    src, dst = mk((2, 2, 3, 2)), mk((2, 2, 6, 2))
    t = transfer(src, rand_mask(src), dst, strategy="interpolate")
    assert [s.sources for s in t.plan.stages] == [[0, 1], [0, 1], [0, 1, 1, 1, 2, 2], [0, 1]]


def test_timm_resnet_layers():
    src = timm.create_model("resnet18", layers=[2, 2, 2, 2], num_classes=10)
    dst = timm.create_model("resnet18", layers=[3, 1, 2, 4], num_classes=10)
    t = transfer(src, rand_mask(src), dst)
    assert [s.label for s in t.plan.stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert [s.sources for s in t.plan.stages] == [[0, 1, 1], [0], [0, 1], [0, 1, 1, 1]]


def test_timm_efficientnet_b0_b1():
    b0, b1 = timm.create_model("efficientnet_b0", num_classes=10), timm.create_model("efficientnet_b1", num_classes=10)
    down = transfer(b1, rand_mask(b1), b0)
    assert [(len(s.src_blocks), len(s.dst_blocks)) for s in down.plan.stages] == [
        (2, 1), (3, 2), (3, 2), (4, 3), (4, 3), (5, 4), (2, 1)]
    with pytest.raises(SegmentMismatchError, match=r"stage 0 \(blocks.0\): the source stage has a single block "
                                                   r"\(block 0 = blocks.0.0"):
        transfer(b0, rand_mask(b0), b1)


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(torch.relu(self.norm(x)))


class _TinyNet(nn.Module):
    """Known to no zoo: a stem, two stages of residual MLP blocks with a width change."""

    def __init__(self, n1, n2):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.s1 = nn.Sequential(*[_Block(16) for _ in range(n1)])
        self.proj = nn.Linear(16, 32)
        self.s2 = nn.Sequential(*[_Block(32) for _ in range(n2)])
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.s2(self.proj(self.s1(self.stem(x)))))


def test_model_defined_in_test():
    src, dst = _TinyNet(3, 2), _TinyNet(5, 4)
    t = transfer(src, rand_mask(src), dst)
    assert [s.label for s in t.plan.stages] == ["s1", "s2"]
    assert [s.sources for s in t.plan.stages] == [[0, 1, 2, 1, 2], [0, 1, 1, 1]]
    t.apply(dst)
    assert dst(torch.randn(4, 8)).shape == (4, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transfer_and_apply_on_cuda():
    src, dst = create("cifar_resnet_20").cuda(), create("cifar_resnet_32").cuda()
    mask = {k: v.cuda() for k, v in rand_mask(src).items()}
    t = transfer(src, mask, dst)
    assert t.weights["layer1.3.conv1.weight"].device.type == "cuda"
    assert torch.equal(t.mask["layer1.3.conv1.weight"], mask["layer1.1.conv1.weight"].cpu())
    t.apply(dst)
    assert torch.equal(dst.layer1[3].conv1.weight_orig, src.layer1[1].conv1.weight)
    assert dst.layer1[3].conv1.weight_mask.device.type == "cuda"
    assert dst.eval()(torch.randn(2, 3, 32, 32, device="cuda")).shape == (2, 10)


# ------------------------------------------------------------------ families beyond the matrix


def _assert_block_copied(src, dst, ticket, src_prefix, dst_prefix):
    """Every tensor under ``dst_prefix`` in the ticket equals the source's under ``src_prefix``."""
    src_sd = src.state_dict()
    keys = [k for k in ticket.weights if k.startswith(dst_prefix + ".")]
    assert keys, dst_prefix
    for k in keys:
        assert torch.equal(ticket.weights[k], src_sd[src_prefix + k[len(dst_prefix):]]), k


def test_mlp_mixer_depth_stretch():
    """MLP-Mixer: every block identical, no block 0 -> one stage, the paper's append plan."""
    from timm.models.mlp_mixer import MlpMixer

    kw = dict(num_classes=10, img_size=32, patch_size=8, embed_dim=32)
    src, dst = seeded(lambda: MlpMixer(num_blocks=4, **kw), 0), seeded(lambda: MlpMixer(num_blocks=7, **kw), 1)
    mask = rand_mask(src)
    ticket = transfer(src, mask, dst, example_input=torch.randn(2, 3, 32, 32))
    assert ticket.plan.mapping_string() == "0:0;1:1,4;2:2,5;3:3,6"
    _assert_block_copied(src, dst, ticket, "blocks.1", "blocks.4")
    assert torch.equal(ticket.mask["blocks.6.mlp_channels.fc1.weight"], mask["blocks.3.mlp_channels.fc1.weight"])


def test_regnet_depth_change_keeps_shape_changing_blocks():
    """timm RegNet (depth 13 -> 16 changes only the last stage: 7 -> 10 blocks)."""
    from timm.models.regnet import RegNet, RegNetCfg

    cfg = dict(w0=24, wa=36.44, wm=2.49, group_size=8)
    src = seeded(lambda: RegNet(RegNetCfg(depth=13, **cfg), num_classes=10), 0)
    dst = seeded(lambda: RegNet(RegNetCfg(depth=16, **cfg), num_classes=10), 1)
    ticket = transfer(src, rand_mask(src), dst, example_input=torch.randn(2, 3, 32, 32))
    assert [(len(s.src_blocks), len(s.dst_blocks)) for s in ticket.plan.stages] == [(4, 4), (7, 10)]
    assert ticket.plan.stages[1].sources == [0, 1, 2, 3, 4, 5, 6, 1, 2, 3]
    _assert_block_copied(src, dst, ticket, "s4.b1", "s4.b1")  # block 0 carried over
    _assert_block_copied(src, dst, ticket, "s4.b2", "s4.b8")  # stage-local 1 -> 7
    net = ticket.apply(dst)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
