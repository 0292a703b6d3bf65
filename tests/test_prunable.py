"""Which weights are prunable (issue 20 §2): decided by what a module computes, not by its
class: every weight used as a linear map or a convolution kernel (Hugging Face's Conv1D in
GPT-2 included), never an embedding used as a lookup table, a tied embedding/LM head as
the head it also is; a mask over nothing prunable is an error."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import elastigraph as eg
from elastigraph.errors import ConfigError, MaskError

T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()
CFG = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
BLOCK = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]


def test_gpt2_conv1d_layers_are_prunable():
    base = T.GPT2Model(T.GPT2Config(**CFG))
    assert eg.masks.prunable_parameters(base) == [f"h.{i}.{n}" for i in range(2) for n in BLOCK]
    lm = T.GPT2LMHeadModel(T.GPT2Config(**CFG))
    names = eg.masks.prunable_parameters(lm)
    # the LM head is the embedding's tensor (tied): prunable as the head, named once, last
    assert names == [f"transformer.h.{i}.{n}" for i in range(2) for n in BLOCK] + ["transformer.wte.weight"]
    assert eg.masks.prunable_parameters(lm, include_last=False) == names[:-1]
    assert "transformer.wpe.weight" not in names  # an embedding used only as a lookup table never is


def test_magnitude_pruning_prunes_gpt2_attention_and_mlp():
    torch.manual_seed(0)
    model = T.GPT2Model(T.GPT2Config(**CFG))
    mask = eg.prune.magnitude(model, sparsity=0.5)
    assert sorted(mask) == sorted(f"h.{i}.{n}" for i in range(2) for n in BLOCK)
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert abs(kept / total - 0.5) < 0.01
    eg.masks.install(model, mask)  # Conv1D works with an installed mask
    out = model(torch.tensor([[1, 2, 3]])).last_hidden_state
    assert out.shape == (1, 3, 32)
    assert torch.equal(model.h[0].attn.c_attn.weight == 0, ~mask["h.0.attn.c_attn.weight"]
                       | (model.h[0].attn.c_attn.weight_orig == 0))


class MatmulLayer(nn.Module):
    """A linear map of no known class (like transformers' Conv1D)."""

    def __init__(s, i, o):
        super().__init__()
        s.weight = nn.Parameter(torch.randn(i, o))
        s.bias = nn.Parameter(torch.zeros(o))

    def forward(s, x):
        return x @ s.weight + s.bias


class Table(nn.Module):
    """An embedding of no known class: its 2-D weight is looked up, not multiplied."""

    def __init__(s, n, d):
        super().__init__()
        s.weight = nn.Parameter(torch.randn(n, d))

    def forward(s, ids):
        return F.embedding(ids, s.weight)


class Mixed(nn.Module):
    def __init__(s):
        super().__init__()
        s.tab, s.emb = Table(10, 8), nn.Embedding(10, 8)
        s.mm, s.norm, s.attn = MatmulLayer(8, 8), nn.LayerNorm(8), nn.MultiheadAttention(8, 2)
        s.conv, s.head = nn.Conv1d(8, 8, 3), nn.Linear(8, 4)


def test_rule_by_what_the_module_computes():
    m = Mixed()
    assert eg.masks.prunable_parameters(m) == ["mm.weight", "attn.in_proj_weight", "attn.out_proj.weight",
                                               "conv.weight", "head.weight"]
    assert eg.masks.prunable_parameters(m, layer_types=(nn.Linear,)) == ["attn.out_proj.weight", "head.weight"]
    eg.masks.install(m, {"mm.weight": torch.rand(8, 8) > 0.5})  # already pruned: still found, by its public name
    assert "mm.weight" in eg.masks.prunable_parameters(m)


def test_nothing_prunable_is_an_error():
    only_lookups = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(MaskError, match="Sequential has no prunable weights"):
        eg.masks.full_mask(only_lookups)
    with pytest.raises(ConfigError, match="no tensors to prune"):
        eg.prune.magnitude(only_lookups, sparsity=0.5)
    assert list(eg.masks.full_mask(only_lookups, names=["0.weight"])) == ["0.weight"]  # chosen by name: allowed


def test_transfer_of_an_empty_mask_is_an_error():
    from test_units import TwoStages

    with pytest.raises(MaskError, match="src_mask for source TwoStages is empty"):
        eg.transfer(TwoStages(2, 2), {}, TwoStages(2, 3), example_input=(2, 8))
