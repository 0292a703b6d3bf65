"""Example inputs (issue 10 section 4, issue 13 section 5): optional forward arguments
bound to their defaults, the input channels the model declares, and input sizes retried
from the model's declared / pretrained sizes; the size used is reported."""

import re

import pytest
import torch
from torch import nn

import elastigraph as eg
from elastigraph.graph.capture import optional_inputs
from elastigraph.graph.shapes import default_inputs

timm = pytest.importorskip("timm")


def _source_of(ticket, src):
    by_ptr = {}
    for name, p in src.state_dict().items():
        by_ptr.setdefault((p.data_ptr(), tuple(p.shape)), name)
    return {k: by_ptr[(v.data_ptr(), tuple(v.shape))] for k, v in ticket.weights.items()}


def _check_stage(ticket, src, stage_index, prefix):
    """Target blocks ``prefix.j.*`` hold source block ``prefix.sources[j].*``."""
    sources = ticket.plan.stages[stage_index].sources
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.(.*)")
    n = 0
    for key, src_key in _source_of(ticket, src).items():
        m = pat.fullmatch(key)
        if m:
            assert src_key == f"{prefix}.{sources[int(m.group(1))]}.{m.group(2)}", key
            n += 1
    assert n


class _Masked(nn.Module):
    """A forward with an optional input that defaults to None (Hiera's ``mask``)."""

    def __init__(self, n):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(n))
        self.head = nn.Linear(8, 2)

    def forward(self, x, mask=None, scale: float = 1.0):
        x = self.stem(x)
        if mask is not None:
            x = x * mask.view(x.shape[0], 1)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x) * scale


def test_optional_inputs_are_bound_to_their_defaults():
    assert optional_inputs(_Masked(2)) == {"mask": None, "scale": 1.0}
    assert optional_inputs(_Masked(2), n_inputs=2) == {"scale": 1.0}
    # traced as if ``mask`` were given, shape propagation would call None.view and fail
    g = eg.analyze(_Masked(3), (2, 4))
    assert [s.n_blocks for s in g.stages] == [3] and g.traced.capture == "torch.fx"
    src = _Masked(2)
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}
    t = eg.transfer(src, mask, _Masked(4), example_input=(2, 4))
    assert t.plan.stages[0].sources == [0, 1, 1, 1]
    for j, i in enumerate(t.plan.stages[0].sources):
        assert torch.equal(t.mask[f"blocks.{j}.weight"], mask[f"blocks.{i}.weight"])


def test_declared_in_chans_beats_the_first_conv():
    m = timm.create_model("tresnet_m", layers=[1, 2, 2, 1], num_classes=10, in_chans=1)
    assert next(x for x in m.modules() if isinstance(x, nn.Conv2d)).in_channels == 16  # after space-to-depth
    assert default_inputs(m)[0] == (2, 1, 32, 32)
    g = eg.analyze(m)
    assert g.traced.input_shapes == ((2, 1, 32, 32),) and g.traced.rejected == []


def test_tresnet_stretch_and_squeeze():
    small = timm.create_model("tresnet_m", layers=[1, 2, 2, 1], num_classes=10)
    deep = timm.create_model("tresnet_m", layers=[1, 3, 2, 1], num_classes=10)
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(small).items()}
    up = eg.transfer(small, mask, deep)
    stage = next(i for i, s in enumerate(up.plan.stages) if s.label == "body.layer2")
    assert up.plan.stages[stage].sources == [0, 1, 1]
    _check_stage(up, small, stage, "body.layer2")
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(deep).items()}
    down = eg.transfer(deep, mask, small)
    assert down.plan.stages[stage].sources == [0, 1]
    _check_stage(down, deep, stage, "body.layer2")


def test_hiera_optional_mask_and_declared_size():
    def hiera(stages):
        return timm.create_model("hiera_tiny_224", stages=stages, embed_dim=16, num_heads=1, num_classes=10)

    g = eg.analyze(hiera((1, 2, 2, 1)))
    # 32 px is rejected (the model's token grid is declared for 224), 224 is used and reported
    assert g.traced.input_shapes == ((2, 3, 224, 224),)
    assert g.traced.rejected and g.to_dict()["inputs_rejected"] == g.traced.rejected
    assert "after 1 rejected" in str(g.__rich__().label)
    small, deep = hiera((1, 2, 2, 1)), hiera((1, 3, 2, 1))
    t = eg.transfer(small, {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(small).items()}, deep)
    assert [s.sources for s in t.plan.stages] == [[0, 1, 1], [0, 1]]


def test_caformer_and_gcvit_trace_with_an_input_they_accept():
    from timm.models.gcvit import GlobalContextVit
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv

    caf = MetaFormer(depths=(1, 2, 2, 1), dims=(32, 64, 96, 128), num_classes=10,
                     token_mixers=[SepConv, SepConv, Attention, Attention],
                     norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2)
    assert eg.analyze(caf).traced.input_shapes == ((2, 3, 32, 32),)
    # GCViT's windows (7) need its declared 224: smaller sizes are tried, rejected, reported
    gc = GlobalContextVit(depths=(1, 2, 2, 1), embed_dim=32, num_heads=(2, 2, 2, 2), num_classes=10)
    g = eg.analyze(gc)
    assert g.traced.input_shapes == ((2, 3, 224, 224),) and g.traced.capture == "torch.fx"


class _ItemAssign(nn.Module):
    """torch.fx cannot trace item assignment on a traced value; torch.export can."""

    def __init__(self, n):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(n)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        y = torch.zeros_like(x)
        y[:, :4] = x[:, :4]  # 'Proxy' object does not support item assignment
        y = y + x
        for b in self.blocks:
            y = y + torch.relu(b(y))
        return self.head(y)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)


def test_fx_failure_falls_back_to_torch_export():
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(_ItemAssign(2))
    g = eg.analyze(_ItemAssign(3), (2, 4))
    assert g.traced.capture == "torch.export" and [s.n_blocks for s in g.stages] == [3]
    src, dst = _ItemAssign(2), _ItemAssign(4)
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}
    t = eg.transfer(src, mask, dst, example_input=(2, 4))
    assert t.plan.stages[0].sources == [0, 1, 1, 1]
    for j, i in enumerate(t.plan.stages[0].sources):
        assert torch.equal(t.mask[f"blocks.{j}.weight"], mask[f"blocks.{i}.weight"])
        assert t.weights[f"blocks.{j}.weight"].data_ptr() == src.blocks[i].weight.data_ptr()


def test_when_both_captures_fail_the_error_says_why_for_each():
    with pytest.raises(eg.errors.TraceError, match=r"torch.fx cannot trace .*torch.export fallback failed too"):
        eg.analyze(_DataDependent(), (2, 4))


class _NeedsTwo(nn.Module):
    """Refuses a call without its second input (as T5Model without decoder inputs); torch.fx
    cannot trace it either (a Python float of a traced value)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, y=None):
        if y is None:
            raise ValueError("You must specify y")
        return self.fc(x) * float(y.sum())


def test_an_input_the_model_rejects_is_named_as_the_cause_before_torch_fx():
    """issue 20: T5Model's refusal led with torch.fx's failure (which every transformers
    model has) while the cause was its missing decoder inputs."""
    with pytest.raises(eg.errors.TraceError) as e:
        eg.analyze(_NeedsTwo(), (2, 4))
    msg = str(e.value)
    assert msg.startswith("_NeedsTwo rejects the example input: its own forward raised ([(2, 4)]: ValueError: "
                          "You must specify y)")
    assert "example_input=[tensor, ...]" in msg and "(torch.fx symbolic tracing had failed before: " in msg


class _Windowed(nn.Module):
    """Declares patch and window sizes but no image size: windows of 5 tokens after a
    patch embedding of 2 and 3 downsamplings need sides that are multiples of 80."""

    def __init__(self):
        super().__init__()
        self.patch_size, self.window_size = 2, 5
        self.embed = nn.Conv2d(3, 8, 2, 2)
        self.downs = nn.Sequential(*[nn.Conv2d(8, 8, 2, 2) for _ in range(3)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.downs(self.embed(x))
        b, c, h, w = x.shape
        x = x.view(b, c, h // self.window_size, self.window_size, w // self.window_size, self.window_size)
        if h % self.window_size:
            raise ValueError("the token grid must hold whole windows")
        return self.head(x.mean((2, 3, 4, 5)))


def test_input_size_from_declared_patch_and_window_sizes():
    shapes = default_inputs(_Windowed())
    assert shapes[1] == (2, 3, 80, 80)
    g = eg.analyze(_Windowed())
    assert g.traced.input_shapes == ((2, 3, 80, 80),) and len(g.traced.rejected) == 1
