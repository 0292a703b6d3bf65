"""How the graph is cut into units, segments and stages, and the plan check that keeps a
transfer from ever being silently wrong (issues 10 and 13). Every model here is tiny.

``check_blocks`` is the independent judge: it reads which source tensor each target
weight *is* (the ticket holds the source's tensors themselves) and checks, by names the
test knows, that every target block came whole from one source block of its stage, each
tensor from the same place, and that everything else came from the same name."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import timm
import torchvision

import elastigraph as eg
from elastigraph import masks
from elastigraph.errors import SegmentMismatchError
from elastigraph.graph import match as match_mod
from elastigraph.transfer import transfer


def rand_mask(model, density=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) < density for k, v in masks.full_mask(model).items()}


def sources_of(src_model, ticket):
    """Target state_dict key -> the source key whose tensor it holds (by storage)."""
    by_ptr = {}
    for k, v in src_model.state_dict().items():
        by_ptr.setdefault((v.data_ptr(), tuple(v.shape)), k)
    return {k: by_ptr[(v.data_ptr(), tuple(v.shape))] for k, v in ticket.weights.items()}


def check_blocks(src_model, dst_model, ticket, pattern, parity=False):
    """Assert the ticket's wiring: names matching ``pattern`` (groups: stage, block, rest)
    come from one source block of the same stage, tensor by tensor; all others by name.
    Returns {(stage, target block): source block}."""
    rx = re.compile(pattern)
    src_of = sources_of(src_model, ticket)
    missing = set(dst_model.state_dict()) - set(src_of)
    assert missing <= set(ticket.unmapped), "every target tensor gets a source or is reported unmapped"
    assert not missing & set(dict(dst_model.named_parameters())), "every parameter gets a source"
    blocks: dict[tuple[str, int], int] = {}
    for d, s in src_of.items():
        md, ms = rx.match(d), rx.match(s)
        if md is None:
            assert s == d, f"fixed tensor {d} filled from {s}"
            continue
        assert ms is not None, f"block tensor {d} filled from non-block tensor {s}"
        assert (ms["stage"], ms["rest"]) == (md["stage"], md["rest"]), f"{d} filled from {s}"
        key = (md["stage"], int(md["block"]))
        assert blocks.setdefault(key, int(ms["block"])) == int(ms["block"]), f"{key} stitched from two blocks"
        if parity:
            assert int(ms["block"]) % 2 == int(md["block"]) % 2, f"{d} from {s}: wrong kind of block"
    # masks travel with their tensors
    for k, v in ticket.mask.items():
        assert torch.equal(v, ticket.src_mask[src_of[k]])
    return blocks


# ---------------------------------------------------------------- issue 13 §1: unit phase


class Mlp(nn.Module):
    def __init__(s, d):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(s, x):
        return x + s.fc2(torch.relu(s.fc1(x)))


class Attn(nn.Module):
    def __init__(s, d):
        super().__init__()
        s.qkv, s.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(s, x):
        q, k, v = s.qkv(x).chunk(3, -1)
        return x + s.proj((q @ k.transpose(-1, -2)).softmax(-1) @ v)


class Block(nn.Module):
    def __init__(s, d):
        super().__init__()
        s.attn, s.mlp = Attn(d), Mlp(d)

    def forward(s, x):
        return s.mlp(s.attn(x))


class Down(nn.Module):
    def __init__(s):
        super().__init__()
        s.reduce = nn.Sequential(nn.Linear(16, 24))
        s.mlp = Mlp(24)

    def forward(s, x):
        return s.mlp(s.reduce(x))


class LevitLike(nn.Module):
    """A downsample ending in the same MLP residual the blocks end in (LeViT)."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.down, s.head = nn.Linear(8, 16), Down(), nn.Linear(24, 4)
        s.blocks = nn.Sequential(*[Block(24) for _ in range(n)])

    def forward(s, x):
        return s.head(s.blocks(s.down(s.stem(x))))


BLOCKS = r"^(?P<stage>blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"


@pytest.mark.parametrize("n,m", [(2, 3), (3, 2), (2, 5)])
def test_unit_phase_follows_the_module_hierarchy(n, m):
    torch.manual_seed(0)
    src, dst = LevitLike(n), LevitLike(m)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 5, 8))
    assert t.plan.stages[0].src_blocks == [f"blocks.{i}" for i in range(n)]
    got = check_blocks(src, dst, t, BLOCKS)
    assert [got[("blocks", j)] for j in range(m)] == t.plan.stages[0].sources


def test_stitched_blocks_are_refused_by_verification():
    """Force the phase the period alone would pick (MLP of block i + attention of i+1):
    the plan check must refuse it, naming the block."""
    src, dst = LevitLike(2), LevitLike(3)
    sg, dg = eg.analyze(src, (2, 5, 8)), eg.analyze(dst, (2, 5, 8))
    mt = match_mod.match(sg, dg)
    sm = mt.stages[0]
    shift = lambda mg, units: [match_mod.make_unit(mg.graph, mg.regions, u.start - 1, u.stop - 1) for u in units]
    sm.src_units, sm.dst_units = shift(sg, sm.src_units), shift(dg, sm.dst_units)
    with pytest.raises(SegmentMismatchError, match=r"block down\.mlp\.fc1\.\.blocks\.0\.attn\.proj .* is not one "
                                                   r"block: it takes only part of module `down`"):
        match_mod.verify(sg, dg, mt, [[0, 1], [0, 1, 1]])


class Res(nn.Module):
    def __init__(s, d=16):
        super().__init__()
        s.fc = nn.Linear(d, d)

    def forward(s, x):
        return x + s.fc(x)


class TwoStages(nn.Module):
    """Two stages of identical blocks with nothing between them (VOLO's network.2/3)."""

    def __init__(s, n1, n2):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(16, 4)
        s.s1 = nn.Sequential(*[Res() for _ in range(n1)])
        s.s2 = nn.Sequential(*[Res() for _ in range(n2)])

    def forward(s, x):
        return s.head(s.s2(s.s1(s.stem(x))))


TWO = r"^(?P<stage>s\d)\.(?P<block>\d+)\.(?P<rest>.*)$"


@pytest.mark.parametrize("a,b", [((2, 2), (2, 4)), ((3, 2), (2, 3)), ((1, 2), (1, 3))])
def test_module_stages_split_segments(a, b):
    torch.manual_seed(0)
    src, dst = TwoStages(*a), TwoStages(*b)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
    assert [(s.label, len(s.src_blocks), len(s.dst_blocks)) for s in t.plan.stages] == [
        ("s1", a[0], b[0]), ("s2", a[1], b[1])]
    check_blocks(src, dst, t, TWO)


def test_stage_mixing_plan_is_refused(monkeypatch):
    """Without the split, the merged segment mixes stages: the plan check refuses."""
    monkeypatch.setattr(match_mod, "_tokenize", lambda ids, patterns, key_of=None, whole=None: _merge(ids, patterns))
    from elastigraph.graph import units
    monkeypatch.setattr(units, "stage_key", lambda g, regions, a, b: ())
    src, dst = TwoStages(2, 2), TwoStages(2, 3)
    with pytest.raises(SegmentMismatchError, match=r"would hold blocks of two modules: s1\.0 \(in `s1`\) and s2\.0"):
        transfer(src, rand_mask(src), dst, example_input=(2, 8))


_tokenize = match_mod._tokenize


def _merge(ids, patterns):
    return _tokenize(ids, patterns, None)


# ------------------------------------------------- issue 10 §1: third-party classes as built


def _levit(d):
    return timm.models.levit.Levit(img_size=64, num_classes=4, embed_dim=(32, 48, 64), key_dim=8,
                                   num_heads=(2, 2, 2), depth=d, attn_ratio=2., mlp_ratio=2.)


def _volo(layers):
    return timm.models.volo.VOLO(layers=layers, img_size=64, embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2),
                                 stem_hidden_dim=16, num_classes=4)


def _shvit(d):
    return timm.models.shvit.SHViT(depth=d, embed_dim=(32, 48, 64), partial_dim=(8, 8, 8), qk_dim=(8, 8, 8),
                                   num_classes=4)


def _msra(d):
    return timm.models.efficientvit_msra.EfficientVitMsra(
        img_size=64, depth=d, embed_dim=(32, 48, 64), key_dim=(8, 8, 8), num_heads=(2, 2, 2),
        window_size=(4, 4, 4), num_classes=4)


def _maxvit(d):
    return torchvision.models.MaxVit(input_size=(64, 64), stem_channels=8, partition_size=2, block_channels=[16, 32],
                                     block_layers=d, head_dim=8, stochastic_depth_prob=0.0, num_classes=4)


THIRD_PARTY = {
    "levit": (_levit, (2, 2, 2), (3, 3, 4), r"^(?P<stage>stages\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"),
    "volo": (_volo, (1, 1, 2, 1), (1, 1, 3, 1), r"^(?P<stage>network\.\d+)\.(?P<block>\d+)\.(?P<rest>.*)$"),
    "shvit": (_shvit, (1, 2, 3), (1, 2, 2), r"^(?P<stage>stages\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"),
    "efficientvit_msra": (_msra, (1, 2, 3), (1, 2, 2), r"^(?P<stage>stages\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"),
    "maxvit": (_maxvit, [2, 3], [2, 2], r"^(?P<stage>blocks\.\d+\.layers)\.(?P<block>\d+)\.(?P<rest>.*)$"),
}


@pytest.mark.parametrize("family", sorted(THIRD_PARTY))
@pytest.mark.parametrize("direction", ["stretch", "squeeze"])
def test_third_party_transfers_are_right_or_refused(family, direction):
    """The classes behind issue 10's silent wrong transfers, both ways: the ticket must
    put every target block together from one source block (or refuse with a clear error)."""
    make, a, b, pattern = THIRD_PARTY[family]
    if (direction == "stretch") != (sum(b) > sum(a)):
        a, b = b, a
    torch.manual_seed(0)
    src, dst = make(a), make(b)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 64, 64))
    blocks = check_blocks(src, dst, t, pattern)
    assert any(s.kind != "same" for s in t.plan.stages)
    assert len(blocks) >= sum(b) - len(b)


ISSUE20 = {
    # adjacent stages of identical blocks with equal depths (network.3 and .4 of the shallow
    # model were once one stage of two-block units: a silent wrong squeeze)
    "volo": (_volo, (2, 2, 2, 2), (3, 3, 4, 3), THIRD_PARTY["volo"][3]),
    # every MaxViT layer holds window then grid attention, siblings of one type: once taken
    # for a stage of their own, which hid the layers' single-block stages
    "maxvit": (_maxvit, [2, 2], [3, 4], THIRD_PARTY["maxvit"][3]),
}


@pytest.mark.parametrize("family", sorted(ISSUE20))
@pytest.mark.parametrize("direction", ["stretch", "squeeze"])
def test_issue20_volo_and_maxvit_transfer_both_ways(family, direction):
    make, a, b, pattern = ISSUE20[family]
    if direction == "squeeze":
        a, b = b, a
    torch.manual_seed(0)
    src, dst = make(a), make(b)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 64, 64))
    blocks = check_blocks(src, dst, t, pattern)
    assert len(blocks) >= sum(b) - len(b)
    if family == "volo":  # stages network.0/2/3/4 each change depth on their own
        assert [(len(s.src_blocks), len(s.dst_blocks)) for s in t.plan.stages
                if s.label.startswith("network")] == list(zip(a, b))
    else:  # each stage's layer 0 downsamples (fixed); the layers after it change depth
        assert [(len(s.src_blocks), len(s.dst_blocks)) for s in t.plan.stages] == [(x - 1, y - 1) for x, y in zip(a, b)]


# ------------------------------------- issue 13 §2: shape side-values do not erase cut points


class ShapeStage(nn.Module):
    def __init__(s, n):
        super().__init__()
        s.blocks = nn.Sequential(*[Res() for _ in range(n)])

    def forward(s, x):
        B, C, H, W = x.shape
        x = s.blocks(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(B, C, H, W)


class ShapeNet(nn.Module):
    """``B, C, H, W = x.shape`` before the blocks, ``reshape(B, C, H, W)`` after them (PVT-v2 ...)."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.stage, s.head = nn.Conv2d(3, 16, 4, 4), ShapeStage(n), nn.Linear(16, 4)

    def forward(s, x):
        return s.head(s.stage(s.stem(x)).mean((2, 3)))


class SideInputBlock(nn.Module):
    """Blocks that read H and W computed once before the stage (PVT, Twins)."""

    def __init__(s):
        super().__init__()
        s.fc = nn.Linear(16, 16)

    def forward(s, x, H, W):
        return x + s.fc(x).reshape(x.shape[0], H, W, -1).flatten(1, 2)


class SideInputNet(nn.Module):
    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Conv2d(3, 16, 4, 4), nn.Linear(16, 4)
        s.blocks = nn.ModuleList([SideInputBlock() for _ in range(n)])

    def forward(s, x):
        x = s.stem(x)
        H, W = x.size(2), x.size(3)
        x = x.flatten(2).transpose(1, 2)
        for b in s.blocks:
            x = b(x, H, W)
        return s.head(x.mean(1))


def test_shape_read_before_a_stage_keeps_its_blocks():
    mg = eg.analyze(ShapeNet(4), (2, 3, 32, 32))
    assert [(st.label, [u.label for u in st.segment.units]) for st in mg.stages] == [
        ("stage.blocks", [f"stage.blocks.{i}" for i in range(4)])]


@pytest.mark.parametrize("cls", [ShapeNet, SideInputNet])
def test_shape_side_values_transfer(cls):
    torch.manual_seed(0)
    src, dst = cls(2), cls(4)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 32, 32))
    assert t.plan.stages[0].sources == [0, 1, 1, 1]
    check_blocks(src, dst, t, r"^(?P<stage>(stage\.)?blocks)\.(?P<block>\d+)\.(?P<rest>.*)$")
    back = transfer(dst, rand_mask(dst), src, example_input=(2, 3, 32, 32))
    assert back.plan.stages[0].sources == [0, 1]


# ------------------------------------------ issue 13 §3: no tracer artefacts in signatures


class AssertBlock(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc = nn.Linear(16, 16)

    def forward(s, x):
        torch._assert(x.dim() == 3, f"Expected (batch, seq, hidden) got {x.shape}")
        return x + s.fc(x)


class AssertNet(nn.Module):
    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(16, 4)
        s.layers = nn.Sequential(*[AssertBlock() for _ in range(n)])

    def forward(s, x):
        return s.head(s.layers(s.stem(x)))


def test_fstring_of_a_proxy_does_not_split_identical_blocks():
    mg = eg.analyze(AssertNet(4), (2, 5, 8))
    assert [[u.label for u in st.segment.units] for st in mg.stages] == [[f"layers.{i}" for i in range(4)]]
    assert len({u.sig_id for u in mg.units}) == 1


def _tv_vit(n):
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=n, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=4)


def test_torchvision_vit_3_to_5_final_norm_is_not_a_block():
    """issue 10 §2: the encoder's final LayerNorm does not make the last layer special."""
    torch.manual_seed(0)
    src, dst = _tv_vit(3), _tv_vit(5)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 32, 32))
    assert [(s.label, s.block0, s.sources) for s in t.plan.stages] == [("encoder.layers", None, [0, 1, 2, 1, 2])]
    pat = r"^(?P<stage>encoder\.layers)\.encoder_layer_(?P<block>\d+)\.(?P<rest>.*)$"
    check_blocks(src, dst, t, pat)
    back = transfer(dst, rand_mask(dst), src, example_input=(2, 3, 32, 32))
    assert back.plan.stages[0].sources == [0, 1, 2]
    check_blocks(dst, src, back, pat)


# ---------------------------------------- issue 10 §2: alternating and single-period stages


def _swin(d):
    return timm.models.swin_transformer.SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=16,
                                                        depths=d, num_heads=(1, 2), num_classes=4)


@pytest.mark.parametrize("a,b", [((2, 2), (4, 6)), ((4, 6), (2, 2)), ((2, 4), (4, 2))])
def test_swin_alternating_blocks_move_in_pairs(a, b):
    """Swin alternates regular and shifted-window blocks: a target block always comes from
    a source block of its own kind, also when the source stage holds a single pair."""
    torch.manual_seed(0)
    src, dst = _swin(a), _swin(b)
    assert src.layers[1].blocks[1].shift_size != src.layers[1].blocks[0].shift_size  # the stages alternate
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 64, 64))
    got = check_blocks(src, dst, t, r"^(?P<stage>layers\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$", parity=True)
    assert sorted(got) == [(f"layers.{s}.blocks", i) for s in range(2) for i in range(b[s])]


class Pair(nn.Module):
    """A stage whose unit is two different blocks (a conv block, then an MLP block)."""

    def __init__(s, n):
        super().__init__()
        layers = []
        for _ in range(n):
            layers += [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())]
        s.stem, s.body, s.head = nn.Conv2d(3, 8, 3), nn.Sequential(*layers), nn.Linear(8, 4)

    def forward(s, x):
        return s.head(s.body(s.stem(x)).mean((2, 3)))


def test_single_period_stage_is_stretched_by_repeating_it():
    torch.manual_seed(0)
    src, dst = Pair(1), Pair(3)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 16, 16))
    assert t.plan.stages[0].sources == [0, 0, 0]
    blocks = check_blocks(src, dst, t, r"^(?P<stage>body)\.(?P<block>\d+)\.(?P<rest>.*)$", parity=True)
    assert blocks == {("body", j): j % 2 for j in range(6)}


# ------------------------------------ issue 13 §6: refusals name the cause; their fixes work


class CspLike(nn.Module):
    """Half the channels bypass the blocks (CSPNet): a tensor flows around every block."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 32), nn.Linear(32, 4)
        s.blocks = nn.Sequential(*[Res() for _ in range(n)])

    def forward(s, x):
        a, b = s.stem(x).chunk(2, -1)
        return s.head(torch.cat([a, s.blocks(b)], -1))


def test_blocks_a_tensor_goes_around_transfer_both_ways():
    """issue 20: the half that bypasses CSPNet's blocks is a context of the stage, not data
    flow through it: the blocks stay separable and move whole (they were one region)."""
    torch.manual_seed(0)
    pat = r"^(?P<stage>blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"
    src, dst = CspLike(2), CspLike(3)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
    assert t.plan.stages[0].sources == [0, 1, 1]
    assert check_blocks(src, dst, t, pat) == {("blocks", 0): 0, ("blocks", 1): 1, ("blocks", 2): 1}
    back = transfer(dst, rand_mask(dst), src, example_input=(2, 8))
    assert check_blocks(dst, src, back, pat) == {("blocks", 0): 0, ("blocks", 1): 1}


class DenseLike(nn.Module):
    """Every block's output is read at the end (DenseNet's concatenation, summed here)."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(16, 4)
        s.blocks = nn.ModuleList([Res() for _ in range(n)])

    def forward(s, x):
        feats = [s.stem(x)]
        for b in s.blocks:
            feats.append(b(feats[-1]))
        return s.head(sum(feats))


def test_blocks_whose_outputs_flow_around_later_blocks_are_named_without_a_false_fix():
    src, dst = DenseLike(2), DenseLike(3)
    with pytest.raises(SegmentMismatchError) as e:
        transfer(src, rand_mask(src), dst, example_input=(2, 8))
    msg = str(e.value)
    assert "`blocks` (2 blocks, blocks.1 .. blocks.2) is one region of target DenseLike" in msg
    assert "a value computed before its first block is used after its last one" in msg
    assert "Use " not in msg and "leaf" not in msg  # no fix is suggested, since none would work


class PyramidLike(nn.Module):
    """Stages whose outputs are all read at the end, each through a norm of its own
    (EfficientViM's hidden states): the norms are siblings too, but the stages are the
    blocks that cannot be told apart."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(16, 4)
        s.stages = nn.ModuleList([nn.Sequential(*[Res() for _ in range(n)]) for _ in range(3)])
        s.norm = nn.ModuleList([nn.Sequential(nn.LayerNorm(16)) for _ in range(3)])

    def forward(s, x):
        x = s.stages[0](s.stem(x))
        out = s.norm[0](x)
        for st, nm in zip(s.stages[1:], s.norm[1:]):
            x = st(x)
            out = out + nm(x)
        return s.head(out)


def test_outputs_read_at_the_end_name_the_stages_and_no_head_fix():
    src, dst = PyramidLike(2), PyramidLike(3)
    with pytest.raises(SegmentMismatchError) as e:
        transfer(src, rand_mask(src), dst, example_input=(2, 8))
    msg = str(e.value)
    assert "`stages` (" in msg and "`norm` (" not in msg
    assert "head='reinit'" not in msg  # the heads are equal: the last region differs for another reason


class StreamBlock(nn.Module):
    """Takes and returns two tensors (TNT's inner and outer streams)."""

    def __init__(s):
        super().__init__()
        s.inner, s.outer, s.proj = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(s, a, b):
        a = a + s.inner(a)
        b = b + s.proj(a)
        return a, b + s.outer(b)


class TwoStreams(nn.Module):
    def __init__(s, n):
        super().__init__()
        s.stem_a, s.stem_b, s.head = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)
        s.blocks = nn.ModuleList([StreamBlock() for _ in range(n)])

    def forward(s, x):
        a, b = s.stem_a(x), s.stem_b(x)
        for blk in s.blocks:
            a, b = blk(a, b)
        return s.head(b)


def test_blocks_that_hand_each_other_two_tensors_are_traced_as_calls_and_transfer():
    """issue 20 (TNT): no single node lies between two blocks that pass two tensors on, so
    they fused into one region; such blocks are traced as single calls and transfer."""
    mg = eg.analyze(TwoStreams(4), (2, 8))
    # block 0 reads the two stems, not one node: it stays with them, fixed
    assert [u.label for u in mg.units] == ["blocks.1", "blocks.2", "blocks.3"]
    pat = r"^(?P<stage>blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"
    for a, b in ((2, 4), (4, 2)):
        torch.manual_seed(0)
        src, dst = TwoStreams(a), TwoStreams(b)
        t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
        assert sorted(check_blocks(src, dst, t, pat)) == [("blocks", j) for j in range(b)]


class ClsStage(nn.Module):
    """A stage that takes and returns (tokens, class token), with a chain of its own blocks
    (PiT): the stages hand each other two tensors, but their blocks are the units."""

    def __init__(s, n):
        super().__init__()
        s.blocks = nn.Sequential(*[Res() for _ in range(n)])
        s.cls_fc = nn.Linear(16, 16)

    def forward(s, x, cls):
        x = s.blocks(x + cls)
        return x, s.cls_fc(cls)


class ClsNet(nn.Module):
    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(16, 4)
        s.cls = nn.Parameter(torch.zeros(1, 16))
        s.stages = nn.ModuleList([ClsStage(n) for _ in range(2)])

    def forward(s, x):
        x, cls = s.stem(x), s.cls.expand(x.shape[0], -1)
        for st in s.stages:
            x, cls = st(x, cls)
        return s.head(x + cls)


def test_stages_that_hand_on_two_tensors_keep_their_inner_blocks_as_units():
    torch.manual_seed(0)
    src, dst = ClsNet(2), ClsNet(3)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
    got = check_blocks(src, dst, t, r"^(?P<stage>stages\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$")
    assert sorted(got) == [(f"stages.{i}.blocks", j) for i in range(2) for j in range(3)]


class CtxBlock(nn.Module):
    """A local or a global block (GCViT): the global one also reads a query made once per stage."""

    def __init__(s, use_global):
        super().__init__()
        s.use_global = use_global
        s.fc = nn.Linear(16, 16)

    def forward(s, x, q):
        y = s.fc(x)
        return x + (y * torch.sigmoid(q) if s.use_global else torch.relu(y))


class ContextStage(nn.Module):
    """Local and global blocks alternating; the global ones read ``q = glob(x)``, made
    before the first block: a value that goes past every local block to reach them."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.glob, s.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        s.blocks = nn.ModuleList([CtxBlock(i % 2 == 1) for i in range(n)])

    def forward(s, x):
        x = s.stem(x)
        q = s.glob(x)
        for b in s.blocks:
            x = b(x, q)
        return s.head(x)


def test_value_made_once_per_stage_and_read_by_blocks_keeps_them_apart():
    """issue 20 (GCViT): a context read by every other block made the blocks one region, and
    2 -> 3 blocks was refused as a 'single block' stage. Now the blocks are units, the
    refusal names the alternating kinds, and whole periods transfer both ways."""
    mg = eg.analyze(ContextStage(4), (2, 8))
    assert [[u.label for u in st.segment.units] for st in mg.stages] == [["blocks.0.fc..blocks.1.fc", "blocks.2.fc..blocks.3.fc"]]
    with pytest.raises(SegmentMismatchError, match=r"come in 2 kinds that alternate.*multiple of 2"):
        transfer(ContextStage(2), rand_mask(ContextStage(2)), ContextStage(3), example_input=(2, 8))
    pat = r"^(?P<stage>blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"
    for a, b in ((2, 4), (4, 2), (4, 6)):
        torch.manual_seed(0)
        src, dst = ContextStage(a), ContextStage(b)
        t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
        assert sorted(check_blocks(src, dst, t, pat, parity=True)) == [("blocks", j) for j in range(b)]
        assert sources_of(src, t)["glob.weight"] == "glob.weight"


class SizeBlock(nn.Module):
    """Returns its output and the feature size it leaves (MViTv2's ``x, feat_size = blk(x,
    feat_size)``): a side value each block hands to the next."""

    def __init__(s):
        super().__init__()
        s.fc = nn.Linear(16, 16)

    def forward(s, x, size):
        B, N, C = x.shape
        y = x.reshape(B, size[0], size[1], C)
        return x + s.fc(y.flatten(1, 2)), y.shape[1:3]


class SizeNet(nn.Module):
    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Conv2d(3, 16, 4, 4), nn.Linear(16, 4)
        s.blocks = nn.ModuleList([SizeBlock() for _ in range(n)])

    def forward(s, x):
        x = s.stem(x)
        size = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        for b in s.blocks:
            x, size = b(x, size)
        H, W = size  # unpacked after the last block, by the stage
        return s.head(x.reshape(x.shape[0], H, W, -1).mean((1, 2)))


def test_side_value_a_block_hands_on_does_not_make_the_last_block_special():
    """issue 20 (MViTv2): the unpacking of the last block's feature size, read after the
    stage, was counted into the last block, so it differed from the others."""
    mg = eg.analyze(SizeNet(3), (2, 3, 32, 32))
    assert [(st.block0_label, [u.label for u in st.segment.units]) for st in mg.stages] == [
        (None, ["blocks.0", "blocks.1", "blocks.2"])]
    pat = r"^(?P<stage>blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"
    torch.manual_seed(0)
    src, dst = SizeNet(2), SizeNet(4)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 32, 32))
    assert t.plan.stages[0].sources == [0, 1, 1, 1]
    check_blocks(src, dst, t, pat)
    back = transfer(dst, rand_mask(dst), src, example_input=(2, 3, 32, 32))
    assert check_blocks(dst, src, back, pat) == {("blocks", 0): 0, ("blocks", 1): 1}


class Alt(nn.Module):
    """Blocks of two kinds alternating in one stage (Swin, RepViT with/without SE)."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(16, 4)
        s.blocks = nn.Sequential(*[AltBlock(i % 2 == 0) for i in range(n)])

    def forward(s, x):
        return s.head(s.blocks(s.stem(x)))


class AltBlock(nn.Module):
    def __init__(s, gate):
        super().__init__()
        s.fc = nn.Linear(16, 16)
        s.gate = nn.Linear(16, 16) if gate else None

    def forward(s, x):
        y = s.fc(x)
        if s.gate is not None:
            y = y * torch.sigmoid(s.gate(x))
        return x + y


@pytest.mark.parametrize("make,a,bad,good,pattern", [
    (Alt, 2, 3, 4, r"^(?P<stage>blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"),
    (lambda d: timm.models.repvit.RepVit(embed_dim=(16, 24), depth=d, num_classes=4, img_size=64),
     (2, 2), (3, 2), (4, 2), r"^(?P<stage>stages\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$"),
])
def test_alternating_kinds_error_and_its_fix(make, a, bad, good, pattern):
    inp = (2, 8) if make is Alt else (2, 3, 64, 64)
    torch.manual_seed(0)
    src = make(a)
    with pytest.raises(SegmentMismatchError, match=r"of the same kind as `(stages\.0\.)?blocks\.0`.* come in 2 kinds "
                                                   r"that alternate.*differ by a multiple of 2"):
        transfer(src, rand_mask(src), make(bad), example_input=inp)
    dst = make(good)  # the suggested fix
    t = transfer(src, rand_mask(src), dst, example_input=inp)
    check_blocks(src, dst, t, pattern, parity=True)


class Blk(nn.Module):
    def __init__(s, din, dout):
        super().__init__()
        s.fc = nn.Linear(din, dout)
        s.proj = nn.Linear(din, dout) if din != dout else None

    def forward(s, x):
        return (x if s.proj is None else s.proj(x)) + torch.relu(s.fc(x))


class Staged(nn.Module):
    """A stage of n1 identical blocks, then one whose block 0 changes the width (ResNet)."""

    def __init__(s, n1, n2):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(24, 4)
        s.s1 = nn.Sequential(*[Res(16) for _ in range(n1)])
        s.s2 = nn.Sequential(Blk(16, 24), *[Blk(24, 24) for _ in range(n2)])

    def forward(s, x):
        return s.head(s.s2(s.s1(s.stem(x))))


STAGED = r"^(?P<stage>s\d)\.(?P<block>\d+)\.(?P<rest>.*)$"


def test_block0_only_stage_error_and_its_fixes():
    src = Staged(2, 0)
    with pytest.raises(SegmentMismatchError, match=r"single block \(block 0 = s2\.0, which changes the shape\).*"
                                                   r"Use a source with at least 2 blocks in that stage"):
        transfer(src, rand_mask(src), Staged(2, 2), example_input=(2, 8))
    for a, b in ((1, 3), (2, 0)):  # the fixes it names: 2 blocks in the source, or squeezing to 1
        src, dst = Staged(2, a), Staged(2, b)
        t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
        assert len(t.plan.stages[-1].dst_blocks) == b + 1
        check_blocks(src, dst, t, STAGED)


def test_stage_missing_from_the_source_error_and_its_fix():
    src = Staged(0, 2)
    with pytest.raises(SegmentMismatchError, match=r"the target has 2 block\(s\) here \(s1\.0, s1\.1\) and the "
                                                   r"source has none.*Use a source that has at least one such block"):
        transfer(src, rand_mask(src), Staged(2, 2), example_input=(2, 8))
    src, dst = Staged(1, 2), Staged(2, 2)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
    check_blocks(src, dst, t, STAGED)


def test_verification_refuses_fixed_parts_that_do_not_pair_one_to_one():
    src, dst = Staged(2, 2), Staged(2, 2)
    sg, dg = eg.analyze(src, (2, 8)), eg.analyze(dst, (2, 8))
    mt = match_mod.match(sg, dg)
    good = list(mt.fixed)
    mt.fixed = [(a, good[-1][1]) if k == 0 else (a, b) for k, (a, b) in enumerate(good)]  # stem <- head
    srcs = [list(range(len(s.dst_labels))) for s in mt.stages]
    with pytest.raises(SegmentMismatchError, match="would be filled from .* which is not the same computation"):
        match_mod.verify(sg, dg, mt, srcs)
    head = next(k for k, (a, b) in enumerate(good) if "head" in dg.regions[b].modules)
    mt.fixed = good[:head] + good[head + 1:]  # the head left out
    with pytest.raises(SegmentMismatchError, match=r"region \d+ \(head.*gets no source"):
        match_mod.verify(sg, dg, mt, srcs)


SINGLE_PERIOD = {
    "efficientformer": (lambda d: timm.models.efficientformer.EfficientFormer(
        depths=d, embed_dims=(16, 24, 32, 48), num_vit=1, num_classes=4), (1, 1, 1, 2), (2, 2, 3, 3), (1, 3, 224, 224)),
    "edgenext": (lambda d: timm.models.edgenext.EdgeNeXt(dims=(16, 24, 32, 48), depths=d, heads=(2,) * 4, num_classes=4),
                 (2, 2, 2, 2), (3, 3, 4, 3), (2, 3, 64, 64)),
    "swiftformer": (lambda d: timm.create_model("swiftformer_xs", layers=d, embed_dims=[16, 24, 32, 48], num_classes=4),
                    (2, 2, 2, 2), (3, 3, 4, 3), (2, 3, 64, 64)),
}


@pytest.mark.parametrize("family", sorted(SINGLE_PERIOD))
def test_third_party_single_period_stages(family):
    """issue 10 §2: stages whose source holds one block of their repeating kind (the
    last block of these stages is of another kind) stretch by repeating it."""
    make, a, b, inp = SINGLE_PERIOD[family]
    for x, y in ((a, b), (b, a)):
        torch.manual_seed(0)
        src, dst = make(x), make(y)
        t = transfer(src, rand_mask(src), dst, example_input=inp)
        check_blocks(src, dst, t, r"^(?P<stage>stages\.\d+\.blocks)\.(?P<block>\d+)\.(?P<rest>.*)$")
        assert sum(len(s.dst_blocks) for s in t.plan.stages) >= sum(y) - len(y)


class GammaStage(nn.Module):
    """Per-block scales kept by the stage in a ParameterList (a container, not a block)."""

    def __init__(s, n):
        super().__init__()
        s.stem, s.head = nn.Linear(8, 16), nn.Linear(16, 4)
        s.blocks = nn.ModuleList([Res() for _ in range(n)])
        s.gammas = nn.ParameterList([nn.Parameter(torch.full((16,), 0.5)) for _ in range(n)])

    def forward(s, x):
        x = s.stem(x)
        for b, gamma in zip(s.blocks, s.gammas):
            x = x + gamma * b.fc(x)
        return s.head(x)


def test_units_may_take_entries_of_a_parameter_list():
    torch.manual_seed(0)
    src, dst = GammaStage(2), GammaStage(3)
    t = transfer(src, rand_mask(src), dst, example_input=(2, 8))
    src_of = sources_of(src, t)
    assert [src_of[f"gammas.{j}"] for j in range(3)] == ["gammas.0", "gammas.1", "gammas.1"]
    assert [src_of[f"blocks.{j}.fc.weight"] for j in range(3)] == [f"blocks.{i}.fc.weight" for i in (0, 1, 1)]


def _twins(d):
    return timm.models.twins.Twins(img_size=64, embed_dims=(16, 32), num_heads=(1, 2), mlp_ratios=(2, 2), depths=d,
                                   sr_ratios=(2, 1), wss=(2, 2), num_classes=4)


def test_stage_of_alternating_kinds_names_the_period_not_a_single_block():
    """Twins alternates local and global attention blocks: 2 -> 3 blocks in a stage is
    refused for that cause (it used to say the source stage had a single block), and the
    fix it names (whole periods) works (issue 20 §3)."""
    torch.manual_seed(0)
    src = _twins((2, 2))
    with pytest.raises(SegmentMismatchError, match=r"target Twins has block `blocks\.0\.2` in stage `blocks\.0`, of "
                                                   r"the same kind as `blocks\.0\.0`.*differ by a multiple of 2"):
        transfer(src, rand_mask(src), _twins((3, 2)), example_input=(2, 3, 64, 64))
    # the fix: whole periods, from a source holding one (block 0 and the position conv
    # after it are fixed, then local/global pairs: a source of depth 4 has one pair)
    src, dst = _twins((4, 2)), _twins((6, 2))
    t = transfer(src, rand_mask(src), dst, example_input=(2, 3, 64, 64))
    check_blocks(src, dst, t, r"^(?P<stage>blocks\.\d+)\.(?P<block>\d+)\.(?P<rest>.*)$", parity=True)
