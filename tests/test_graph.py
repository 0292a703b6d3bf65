"""Unit/segment/stage detection from the traced graph, across the model matrix.

Ground truth: the models' own depth settings, and for timm models ``group_matcher``
(each detected unit's parameters lie in exactly one timm block group)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import timm
import torchvision
from timm.models._manipulate import group_parameters

from elastigraph.errors import TraceError
from elastigraph.graph import analyze
from elastigraph.models import create


def _stage_sizes(a):
    return [s.n_blocks for s in a.stages]


@pytest.mark.parametrize("depth,n", [(20, 3), (32, 5), (44, 7), (56, 9), (110, 18)])
def test_cifar_resnet_stages(depth, n):
    a = analyze(create(f"cifar_resnet_{depth}"))
    assert _stage_sizes(a) == [n, n, n]
    assert [s.label for s in a.stages] == ["layer1", "layer2", "layer3"]
    # stage 1: every block identical (no block 0); stages 2-3: the downsampling block 0
    assert [s.block0_label for s in a.stages] == [None, "layer2.0", "layer3.0"]
    assert [u.label for u in a.stages[1].segment.units] == [f"layer2.{i}" for i in range(1, n)]
    u = a.stages[0].segment.units[0]
    # graph order of the ops, tensor names sorted inside each module
    assert [p for p, _ in u.params] == [f"layer1.0.{k}" for k in ("conv1.weight", "bn1.bias", "bn1.weight",
                                                                 "conv2.weight", "bn2.bias", "bn2.weight")]
    assert "layer1.0.bn1.running_mean" in [b for b, _ in u.buffers]


def test_graph_nodes_carry_shapes_and_params():
    a = analyze(create("cifar_resnet_20"))
    g = a.graph
    conv = g.nodes["conv"]
    assert conv["op"] == "call_module" and conv["kind"] == "Conv2d"
    assert conv["params"] == [("conv.weight", (16, 3, 3, 3))]
    assert conv["shape"] == (2, 16, 32, 32)
    assert g.has_edge("x", "conv")
    d = a.to_dict()
    json.dumps(d)
    assert d["input_shapes"] == [[2, 3, 32, 32]]
    assert [s["n_blocks"] for s in d["stages"]] == [3, 3, 3]


def test_analyze_does_not_modify_the_model():
    m = create("cifar_resnet_20")
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    analyze(m)
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats and counters untouched
    assert m.training


@pytest.mark.parametrize("name,sizes", [
    ("resnet50", [3, 4, 6, 3]), ("resnet101", [3, 4, 23, 3]), ("resnet152", [3, 8, 36, 3]),
])
def test_torchvision_bottleneck_resnets(name, sizes):
    a = analyze(getattr(torchvision.models, name)(num_classes=10))
    assert _stage_sizes(a) == sizes
    assert [s.block0_label for s in a.stages] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def test_torchvision_resnet18_stages_of_two():
    a = analyze(torchvision.models.resnet18(num_classes=10))
    assert _stage_sizes(a) == [2, 2, 2, 2]
    assert [s.block0_label for s in a.stages] == [None, "layer2.0", "layer3.0", "layer4.0"]


def test_vgg16_flat_stages():
    # conv/relu are each their own region; the unit is the period (conv, relu), anchored at the conv
    a = analyze(torchvision.models.vgg16(num_classes=10))
    assert _stage_sizes(a) == [3, 3, 3]
    assert a.stages[0].block0_label == "features.10..features.11"
    assert [u.label for u in a.stages[0].segment.units] == ["features.12..features.13", "features.14..features.15"]
    # the last stage's 3 convs are all 512->512: identical, no block 0
    assert a.stages[2].block0 is None
    abn = analyze(torchvision.models.vgg16_bn(num_classes=10))
    assert _stage_sizes(abn) == [3, 3, 3]
    assert [len(u.params) for u in abn.stages[0].segment.units] == [4, 4]  # conv w, b; bn w, b


def test_mobilenet_v2_inverted_residuals():
    a = analyze(torchvision.models.mobilenet_v2(num_classes=10))
    # settings n = 1,2,3,4,3,3,1: stages of >= 3 blocks repeat; a stage of 2 (block 0 + one
    # identical-shape block) is found as a sibling of the same type after its block 0
    assert _stage_sizes(a) == [2, 3, 4, 3, 3]
    assert [s.block0_label for s in a.stages] == ["features.2", "features.4", "features.7", "features.11", "features.14"]


def _timm_groups(model):
    groups = group_parameters(model, model.group_matcher())
    return {p: gid for gid, names in groups.items() for p in names}


def _check_against_group_matcher(model, a, depths):
    owner = _timm_groups(model)
    assert _stage_sizes(a) == list(depths)
    seen = set()
    for st in a.stages:
        for u in st.segment.units:
            gids = {owner[n] for n, _ in u.params}
            assert len(gids) == 1, (u.label, gids)
            seen |= gids
    assert len(seen) == sum(len(s.segment.units) for s in a.stages)


def test_timm_vit_units_match_group_matcher():
    m = timm.create_model("vit_tiny_patch16_224", depth=5, img_size=32, patch_size=8, num_classes=10)
    a = analyze(m)
    _check_against_group_matcher(m, a, [5])
    assert a.stages[0].label == "blocks" and a.stages[0].block0 is None
    # one unit = attention residual + MLP residual (two regions)
    assert all(u.stop - u.start == 2 for u in a.units)


def test_timm_convnext_units_match_group_matcher():
    m = timm.create_model("convnext_tiny", depths=(2, 2, 4, 2), dims=(8, 16, 32, 64), num_classes=10)
    a = analyze(m)
    _check_against_group_matcher(m, a, [2, 2, 4, 2])
    assert [s.label for s in a.stages] == [f"stages.{i}.blocks" for i in range(4)]


def test_timm_resnet_units_match_group_matcher():
    m = timm.create_model("resnet26", layers=[3, 4, 3, 3], num_classes=10)
    a = analyze(m)
    owner = _timm_groups(m)
    assert _stage_sizes(a) == [3, 4, 3, 3]
    for st in a.stages:
        b0 = {owner[n] for r in range(*st.block0) for n, _ in a.regions[r].params}
        assert len(b0) == 1
        for u in st.segment.units:
            assert len({owner[n] for n, _ in u.params}) == 1


def test_timm_efficientnet_stages():
    m = timm.create_model("efficientnet_b1", num_classes=10)
    a = analyze(m)
    assert _stage_sizes(a) == [2, 3, 3, 4, 4, 5, 2]  # b1's repeats
    owner = _timm_groups(m)
    for u in a.units:
        assert len({owner[n] for n, _ in u.params}) == 1


class _MLPBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x)))


class _TwoInputNet(nn.Module):
    """Defined only here: two inputs, a functional flatten, a python-level shape read."""

    def __init__(self, depth=4, d=16):
        super().__init__()
        self.embed = nn.Linear(12, d)
        self.aux = nn.Linear(3, d)
        self.body = nn.Sequential(*[_MLPBlock(d) for _ in range(depth)])
        self.head = nn.Linear(d, 5)

    def forward(self, x, y):
        h = self.embed(torch.flatten(x, 1)) + self.aux(y)
        h = self.body(h)
        return self.head(h.reshape(h.shape[0], -1))


def test_model_defined_in_test_with_two_inputs():
    m = _TwoInputNet(depth=4)
    a = analyze(m, example_input=[(2, 3, 4), (2, 3)])
    assert _stage_sizes(a) == [4]
    assert [u.label for u in a.units] == [f"body.{i}" for i in range(4)]
    assert a.stages[0].label == "body"


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return x
        return -x


class _WithBranchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.odd = _Branchy()

    def forward(self, x):
        return self.odd(self.conv(x))


def test_untraceable_module_names_it_and_leaf_modules_fix_it():
    m = _WithBranchy()
    with pytest.raises(TraceError) as e:
        analyze(m)
    msg = str(e.value)
    assert "'odd' (_Branchy)" in msg and "leaf_modules=(_Branchy,)" in msg
    a = analyze(m, leaf_modules=(_Branchy,))
    assert any(d.get("kind") == "_Branchy" for _, d in a.graph.nodes(data=True))


def test_bad_example_input_is_a_clear_error():
    with pytest.raises(TraceError, match="example_input"):
        analyze(create("cifar_resnet_20"), example_input="big")
    with pytest.raises(TraceError, match="shape propagation"):
        analyze(create("cifar_resnet_20"), example_input=(2, 5, 32, 32))


def test_rich_rendering_lists_stages():
    from rich.console import Console

    c = Console(record=True, width=120)
    c.print(analyze(create("cifar_resnet_20")))
    text = c.export_text()
    assert "stage 1 layer2: 3 blocks, block 0 = layer2.0" in text
    assert "layer3.2" in text


class _WithConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * torch.tensor([2.0])  # fx turns this into a tensor constant


def test_tracing_leaves_no_attributes_on_the_model():
    m = _WithConstant()
    before = set(m.__dict__)
    a = analyze(m)
    assert set(m.__dict__) == before  # fx's _tensor_constant0 lives with the graph, not the model
    consts = [d for _, d in a.graph.nodes(data=True) if d["op"] == "get_attr"]
    assert [(d["target"], d["shape"]) for d in consts] == [("_tensor_constant0", (1,))]


class _RootBranch(nn.Module):
    """Data-dependent control flow in the model's own forward: neither torch.fx nor
    torch.export can capture it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_root_forward_does_not_suggest_marking_the_model_a_leaf():
    """Issue 13 section 6: a suggested fix must be one that works; marking the whole
    model a leaf leaves nothing to analyse."""
    with pytest.raises(TraceError) as e:
        analyze(_RootBranch(), (2, 4))
    msg = str(e.value)
    assert "the forward of _RootBranch" in msg
    assert "leaf_modules=(_RootBranch,)" not in msg and "cannot help" in msg


# ---------------------------------------------------------------------------- node schema


def _conforms(v, tp) -> bool:
    """``v`` is a value of the type hint ``tp`` (the forms the graph schema uses)."""
    import typing

    if tp is typing.Any:
        return True
    origin, targs = typing.get_origin(tp), typing.get_args(tp)
    if origin is None:
        if tp is int:
            return isinstance(v, int) and not isinstance(v, bool)
        return isinstance(v, tp)
    if not isinstance(v, origin):
        return False
    if origin is tuple and targs:
        if len(targs) == 2 and targs[1] is Ellipsis:
            return all(_conforms(x, targs[0]) for x in v)
        return len(v) == len(targs) and all(_conforms(x, t) for x, t in zip(v, targs))
    if origin in (list, set) and targs:
        return all(_conforms(x, targs[0]) for x in v)
    if origin is dict and targs:
        return all(_conforms(k, targs[0]) and _conforms(x, targs[1]) for k, x in v.items())
    return True


def _llama_tiny():
    pytest.importorskip("transformers")
    return create("hf:llama", num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=100)


@pytest.mark.parametrize("build, capture", [
    (lambda: create("cifar_resnet_20"), "torch.fx"),
    (lambda: timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=10), "torch.fx"),
    (_llama_tiny, "torch.export"),
], ids=["cifar_resnet_20", "timm_vit", "hf_llama"])
def test_built_graph_matches_the_declared_node_schema(build, capture):
    """Every node carries exactly the keys NodeAttrs declares, each of its declared type;
    the graph the GraphAttrs keys (underscore keys are caches)."""
    import typing

    from elastigraph.graph.build import SOURCE, GraphAttrs, NodeAttrs

    a = analyze(build())
    assert a.traced.capture == capture
    g = a.graph
    hints = typing.get_type_hints(NodeAttrs)
    assert set(hints) == set(NodeAttrs.__required_keys__) and len(hints) == 14
    ops = set()
    for n, attrs in g.nodes(data=True):
        assert set(attrs) == set(hints), (n, set(attrs) ^ set(hints))
        bad = {k: attrs[k] for k, tp in hints.items() if not _conforms(attrs[k], tp)}
        assert not bad, (n, bad)
        ops.add(attrs["op"])
    assert ops >= {"source", "placeholder", "output"} and g.nodes[SOURCE]["index"] == -1
    # the schema is not vacuous: real values on real nodes
    assert any(attrs["params"] for _, attrs in g.nodes(data=True)) and any(a_["weighted"] for _, a_ in g.nodes(data=True))
    assert any(isinstance(attrs["shape"], tuple) and attrs["shape"] for _, attrs in g.nodes(data=True))
    ghints = typing.get_type_hints(GraphAttrs)
    assert set(ghints) <= set(g.graph) and not {k for k in g.graph if k not in ghints and not str(k).startswith("_")}
    assert all(_conforms(g.graph[k], tp) for k, tp in ghints.items())


def test_schema_check_rejects_a_wrong_node():
    """The checker above fails on what it should (a key of the wrong type, a bool index)."""
    import typing

    from elastigraph.graph.build import NodeAttrs, node_attrs

    hints = typing.get_type_hints(NodeAttrs)
    good = node_attrs(op="call_module", target="fc", kind="Linear", index=3, params=[("fc.weight", (10, 4))])
    assert all(_conforms(good[k], tp) for k, tp in hints.items())
    assert not _conforms([("fc.weight", [10, 4])], hints["params"])  # a list shape, not a tuple
    assert not _conforms(True, hints["index"]) and not _conforms(("a", 1), hints["scope"])
