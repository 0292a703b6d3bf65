"""Issue 23: Wanda checked against its reference code, and N:M (2:4, 4:8) masks from
magnitude and Wanda kept exact through a depth transfer and through training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import elastigraph as eg
from elastigraph import masks, prune
from elastigraph.errors import ConfigError
from elastigraph.models import create
from elastigraph.prune import _core
from elastigraph.train import TrainConfig, train
from elastigraph.train.data import load_dataset

LLAMA = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
             max_position_embeddings=64)


@pytest.fixture(scope="module")
def corpus():
    return load_dataset("pystdlib?seq_len=64", split="train", limit=64)


def _calib(ds, n=3, bs=4):
    return [(ds.x[i * bs:(i + 1) * bs].long(), ds.y[i * bs:(i + 1) * bs].long()) for i in range(n)]


def _llama(layers=2, seed=0):
    torch.manual_seed(seed)
    return create("hf:llama", num_hidden_layers=layers, **LLAMA)


# ---- the reference: github.com/locuslab/wanda at 8e8fc87 ---------------------------------
class WrappedGPT:  # lib/layerwrapper.py lines 5-35 (the parts prune_wanda uses)
    def __init__(self, layer):
        self.layer = layer
        self.dev = self.layer.weight.device
        self.rows = layer.weight.data.shape[0]
        self.columns = layer.weight.data.shape[1]
        self.scaler_row = torch.zeros((self.columns), device=self.dev)
        self.nsamples = 0

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def reference_masks(model, batches, sparsity_ratio, prune_n=0, prune_m=0):
    """lib/prune.py prune_wanda, lines 146-200: hooks, W_metric, the N:M loop and the
    unstructured sort; every linear layer wrapped at once (see wanda.py's docstring).
    Returns the PRUNED entries (the reference's W_mask) by parameter name."""
    subset = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    wrapped_layers = {name: WrappedGPT(subset[name]) for name in subset}

    def add_batch(name):
        def tmp(_, inp, out):
            wrapped_layers[name].add_batch(inp[0].data, out.data)
        return tmp

    handles = [subset[name].register_forward_hook(add_batch(name)) for name in wrapped_layers]
    model.eval()
    for x, _ in batches:
        with torch.no_grad():
            model(x)
    for h in handles:
        h.remove()
    out, metrics = {}, {}
    for name in subset:
        W_metric = torch.abs(subset[name].weight.data) * torch.sqrt(wrapped_layers[name].scaler_row.reshape((1, -1)))
        W_mask = (torch.zeros_like(W_metric) == 1)
        if prune_n != 0:
            for ii in range(W_metric.shape[1]):
                if ii % prune_m == 0:
                    tmp = W_metric[:, ii:(ii + prune_m)].float()
                    W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
        else:
            sort_res = torch.sort(W_metric, dim=-1, stable=True)
            indices = sort_res[1][:, :int(W_metric.shape[1] * sparsity_ratio)]
            W_mask.scatter_(1, indices, True)
        out[name + ".weight"] = W_mask
        metrics[name + ".weight"] = W_metric
    return out, metrics


def test_wanda_matches_the_reference_scores_and_masks(corpus):
    model = _llama()
    batches = _calib(corpus)
    ref_pruned, ref_metric = reference_masks(masks.copy_model(model), batches, 0.5)
    names = masks.prunable_parameters(model)
    assert set(names) == set(ref_pruned)  # every linear layer, lm_head included
    scores = prune.wanda_scores(model, batches, names)
    for n in names:
        assert torch.equal(scores[n], ref_metric[n]), n
    for sparsity in (0.5, 0.3):
        want, _ = reference_masks(masks.copy_model(model), batches, sparsity)
        got = prune.wanda(model, batches, sparsity)
        for n in names:
            assert torch.equal(got[n], ~want[n]), n
            assert (got[n].sum(1) == got[n].shape[1] - int(got[n].shape[1] * sparsity)).all()  # per output row
    for nm, (pn, pm) in (("2:4", (2, 4)), ((4, 8), (4, 8))):
        want, _ = reference_masks(masks.copy_model(model), batches, 0, prune_n=pn, prune_m=pm)
        got = prune.wanda(model, batches, n_m=nm)
        assert all(torch.equal(got[n], ~want[n]) for n in names)
    assert prune.by_name("wanda") is prune.wanda
    # it is not magnitude: the input norms reorder the weights
    assert any(not torch.equal(prune.wanda(model, batches, 0.5)[n], prune.magnitude(model, sparsity=0.5, scope="layerwise")[n])
               for n in names)


def test_wanda_keeps_pruned_weights_pruned_and_leaves_the_model(corpus):
    model = _llama()
    batches = _calib(corpus, n=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = prune.wanda(model, batches, 0.3)
    second = prune.wanda(model, batches, 0.6, mask=first)
    for n in first:
        assert not (second[n] & ~first[n]).any(), n
        assert (second[n].sum(1) == second[n].shape[1] - int(second[n].shape[1] * 0.6)).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not masks.from_model(model)
    assert model.training == create("hf:llama", num_hidden_layers=1, **LLAMA).training


def test_wanda_on_gpt2_conv1d_is_per_output_column(corpus):
    torch.manual_seed(0)
    model = create("hf:gpt2", n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
    m = prune.wanda(model, _calib(corpus, n=2), 0.5)
    w = model.transformer.h[0].attn.c_attn.weight  # Conv1D: (in, out)
    keep = m["transformer.h.0.attn.c_attn.weight"]
    assert keep.shape == w.shape and (keep.sum(0) == w.shape[0] // 2).all()
    nm = prune.wanda(model, _calib(corpus, n=2), n_m="2:4")
    assert all(_core.is_n_m(nm[n], 2, 4, _core.input_last(model, n)) for n in nm)
    assert not _core.is_n_m(nm["transformer.h.0.attn.c_attn.weight"], 2, 4, True)  # groups run along inputs


def test_bad_wanda_and_n_m_arguments(corpus):
    model = _llama(1)
    b = _calib(corpus, n=1)
    with pytest.raises(ConfigError, match="exactly one"):
        prune.wanda(model, b)
    with pytest.raises(ConfigError, match="exactly one"):
        prune.wanda(model, b, 0.5, n_m="2:4")
    for bad in ("4:2", "2-4", (0, 4), (2, 4, 8), "a:b", (True, 4)):
        with pytest.raises(ConfigError, match="n_m"):
            prune.magnitude(model, n_m=bad)
    with pytest.raises(ConfigError, match="n_m"):
        prune.magnitude(model, sparsity=0.5, n_m="2:4")
    with pytest.raises(ConfigError, match="multiple of M=8"):
        prune.magnitude({"w": torch.randn(4, 12)}, names=["w"], n_m="4:8")
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ConfigError, match="Conv2d"):
        prune.wanda(conv, [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))], 0.5)
    m = prune.wanda(conv, [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))], 0.5, include_first=False)
    assert list(m) == ["2.weight"]


def test_magnitude_n_m_is_the_top_n_of_each_group():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 16, generator=g)
    w[0, :4] = torch.tensor([1.0, -1.0, 1.0, 0.5])  # a tie: the lower indices are kept
    m = prune.magnitude({"w": w}, names=["w"], n_m="2:4")["w"]
    groups = w.abs().reshape(6, 4, 4)
    top2 = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :2]
    want = torch.zeros(6, 4, 4, dtype=torch.bool).scatter_(-1, top2, True).reshape(6, 16)
    assert torch.equal(m, want) and m[0, :4].tolist() == [True, True, False, False]
    assert _core.is_n_m(m, 2, 4) and int(m.sum()) == 48
    # nested: from an existing mask, no group regrows and each keeps at most 2
    cur = torch.rand(6, 16, generator=g) > 0.3
    m2 = prune.magnitude({"w": w}, {"w": cur}, n_m=(2, 4))["w"]
    assert not (m2 & ~cur).any() and _core.is_n_m(m2, 2, 4)
    per = cur.reshape(6, 4, 4).sum(-1).clamp(max=2)
    assert torch.equal(m2.reshape(6, 4, 4).sum(-1), per)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_n_m_survives_a_depth_transfer_and_training(method, corpus):
    src = _llama(2)
    if method == "magnitude":
        mask = prune.magnitude(src, n_m="2:4")
    else:
        mask = prune.wanda(src, _calib(corpus, n=2), n_m="2:4")
    assert all(_core.is_n_m(b, 2, 4) for b in mask.values())
    dst = _llama(3, seed=1)
    ticket = eg.transfer(src, mask, dst)
    # every copied layer keeps its source layer's exact pattern
    for n, keep in ticket.mask.items():
        assert _core.is_n_m(keep, 2, 4), n
    src_of = {f"model.layers.{i}.": f"model.layers.{j}." for i, j in enumerate(ticket.plan.stages[0].sources)}
    for n, keep in ticket.mask.items():
        pre = next((p for p in src_of if n.startswith(p)), None)
        sname = n.replace(pre, src_of[pre]) if pre else n
        assert torch.equal(keep, mask[sname]), n
    net = ticket.apply(dst)
    tr = load_dataset("pystdlib?seq_len=64", split="train", limit=64)
    te = load_dataset("pystdlib?seq_len=64", split="val", limit=16)
    cfg = TrainConfig(steps=4, batch_size=8, lr=3e-3, optimizer="adamw", weight_decay=0.0, task="causal_lm")
    res = train(net, tr, te, cfg)  # the installed mask is used
    for n, keep in ticket.mask.items():
        w = res.final_state[n]
        assert (w[~keep] == 0).all(), n
        assert _core.is_n_m(w != 0, 2, 4), n
    assert any(not torch.equal(res.final_state[n], ticket.weights[n]) for n in ticket.mask)  # it trained


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("low_first", [False, True])
def test_n_m_ranks_equal_a_stable_sort_with_ties(n, m, low_first, monkeypatch):
    monkeypatch.setattr(_core, "CHUNK", 8)  # several row chunks
    g = torch.Generator().manual_seed(n * 10 + m)
    s = torch.randint(0, 3, (37, 8 * m), generator=g).to(torch.bfloat16)  # many ties
    alive = torch.rand(s.shape, generator=g) > 0.2
    got = _core.n_m_keep(s, alive, n, m, name="s", method="t", prune_low_first=low_first)
    g3 = s.double().masked_fill(~alive, float("-inf")).reshape(37, -1, m)
    if low_first:
        order = torch.sort(g3, dim=-1, stable=True).indices[..., : m - n]
        want = torch.ones(g3.shape, dtype=torch.bool).scatter_(-1, order, False)
    else:
        order = torch.sort(g3, dim=-1, descending=True, stable=True).indices[..., :n]
        want = torch.zeros(g3.shape, dtype=torch.bool).scatter_(-1, order, True)
    assert torch.equal(got, (want & alive.reshape(g3.shape)).reshape(37, -1))
