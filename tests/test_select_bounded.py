"""Issue 23: the bounded-memory radix selection of prune._core.select keeps exactly the
entries that the previous implementation (concatenate all scores in float64, kthvalue,
ties to the lowest flat index) kept: the reference is that code, copied here verbatim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elastigraph import prune
from elastigraph.errors import ConfigError
from elastigraph.prune import _core


def _top_k_stable_ref(x, k):
    n = x.numel()
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    if k >= n:
        return torch.arange(n)
    thr = torch.kthvalue(x, n - k + 1).values
    above = (x > thr).nonzero().squeeze(1)
    ties = (x == thr).nonzero().squeeze(1)[: k - above.numel()]
    return torch.cat([above, ties])


def select_ref(scores, current, *, scope, density=None, keep_remaining=None, clamp=False):
    """prune/_core.py select() at 0ed01e0 (before issue 23)."""
    names = list(current)
    groups = [names] if scope == "global" else [[n] for n in names]
    out = {}
    for group in groups:
        alive = torch.cat([current[n].flatten() for n in group])
        kept = int(alive.sum())
        k = _core.round_half_up(alive.numel() * density) if density is not None else _core.round_half_up(kept * keep_remaining)
        if k > kept:
            assert clamp
            k = kept
        flat = torch.cat([scores[n].detach().to("cpu", torch.float64).flatten() for n in group])
        idx = alive.nonzero().squeeze(1)
        cand = flat[idx]
        keep = torch.zeros(alive.numel(), dtype=torch.bool)
        keep[idx[_top_k_stable_ref(cand, k)]] = True
        for n, part in zip(group, torch.split(keep, [current[n].numel() for n in group])):
            out[n] = part.view(current[n].shape).clone()
    return out


def _scores(gen, kind, dtype, shapes):
    out = {}
    for i, shape in enumerate(shapes):
        if kind == "ties":  # few distinct values: most entries tie, across tensors too
            s = torch.randint(-3, 4, shape, generator=gen).to(dtype) * 0.5
        elif kind == "zeros":  # signed zeros and subnormals mixed with a few values
            s = torch.randint(-2, 3, shape, generator=gen).to(dtype) * torch.finfo(dtype).tiny
            s[s == 0] = -0.0 if i % 2 else 0.0
        elif kind == "inf":
            s = torch.randn(shape, generator=gen).to(dtype)
            s.view(-1)[:: 7] = float("inf")
            s.view(-1)[3:: 11] = float("-inf")
        else:
            s = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        out[f"t{i}"] = s
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("kind", ["ties", "zeros", "inf", "randn"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_select_equals_the_sort_based_reference(dtype, kind, scope, monkeypatch):
    monkeypatch.setattr(_core, "CHUNK", 37)  # many chunks, boundaries inside ties
    gen = torch.Generator().manual_seed(hash((str(dtype), kind, scope)) % 2**31)
    shapes = [(13, 7), (50,), (4, 3, 5), (1, 1)]
    scores = _scores(gen, kind, dtype, shapes)
    current = {n: torch.rand(s.shape, generator=gen) < 0.8 for n, s in scores.items()}
    for density in (0.0, 0.013, 0.25, 0.5, 0.77, 0.8):
        want = select_ref(scores, current, scope=scope, density=density, clamp=True)
        got = _core.select(scores, current, scope=scope, density=density, clamp=True, method="t")
        for n in scores:
            assert torch.equal(got[n], want[n]), (n, density)
            assert got[n].dtype == torch.bool and got[n].shape == scores[n].shape
    for keep in (0.0, 0.31, 0.5, 1.0):
        want = select_ref(scores, current, scope=scope, keep_remaining=keep)
        got = _core.select(scores, current, scope=scope, keep_remaining=keep, method="t")
        assert all(torch.equal(got[n], want[n]) for n in scores)


def test_mixed_dtypes_and_transform(monkeypatch):
    monkeypatch.setattr(_core, "CHUNK", 64)
    gen = torch.Generator().manual_seed(1)
    w = {"a": torch.randn(40, 9, generator=gen).to(torch.bfloat16), "b": torch.randn(300, generator=gen),
         "c": torch.randn(17, 3, generator=gen, dtype=torch.float64)}
    w["b"][:50] = w["a"].float().view(-1)[:50]  # equal magnitudes across a bf16 and a float32 tensor
    current = {n: torch.ones(t.shape, dtype=torch.bool) for n, t in w.items()}
    for density in (0.1, 0.5, 0.9):
        want = select_ref({n: t.abs() for n, t in w.items()}, current, scope="global", density=density)
        got = _core.select(w, current, scope="global", density=density, method="t", transform=torch.abs,
                           nonnegative=density > 0.4)
        assert all(torch.equal(got[n], want[n]) for n in w)
        assert sum(int(m.sum()) for m in got.values()) == _core.round_half_up(sum(t.numel() for t in w.values()) * density)


def test_nan_scores_are_named():
    s = {"a": torch.ones(5), "b": torch.tensor([1.0, float("nan"), 2.0])}
    with pytest.raises(ConfigError, match="'b'"):
        _core.select(s, {n: torch.ones(t.shape, dtype=torch.bool) for n, t in s.items()}, scope="global",
                     density=0.5, method="t")
    # a NaN under the current mask is not a score
    got = _core.select(s, {"a": torch.ones(5, dtype=torch.bool), "b": torch.tensor([True, False, True])},
                       scope="global", density=0.25, method="t")
    assert int(got["a"].sum() + got["b"].sum()) == 2


def test_magnitude_on_a_model_with_many_ties_matches_the_reference(monkeypatch):
    monkeypatch.setattr(_core, "CHUNK", 100)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
    with torch.no_grad():
        for p in net.parameters():  # quantised weights: thousands of ties in |w|
            p.copy_(torch.round(p * 8) / 8)
    names = [n for n, p in net.named_parameters() if p.dim() == 2]
    for sparsity in (0.3, 0.5, 0.9):
        got = prune.magnitude(net, sparsity=sparsity)
        ones = {n: torch.ones(net.get_parameter(n).shape, dtype=torch.bool) for n in names}
        want = select_ref({n: net.get_parameter(n).detach().abs() for n in names}, ones, scope="global",
                          density=1 - sparsity)
        assert list(got) == names and all(torch.equal(got[n], want[n]) for n in names)
    # one IMP round from an existing mask, layerwise too
    m = prune.magnitude(net, sparsity=0.5)
    for scope in ("global", "layerwise"):
        got = prune.magnitude(net, m, fraction=0.2, scope=scope)
        want = select_ref({n: net.get_parameter(n).detach().abs() for n in names}, m, scope=scope, keep_remaining=0.8)
        assert all(torch.equal(got[n], want[n]) for n in names)


def test_magnitude_names_nan_weights_but_not_pruned_ones():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight[0, 1] = float("nan")
        net[0].weight[0, 0] = float("inf")
    with pytest.raises(ConfigError, match=r"\['1.weight'\]"):
        prune.magnitude(net, sparsity=0.5)
    mask = {"0.weight": torch.ones(4, 4, dtype=torch.bool), "1.weight": torch.ones(2, 4, dtype=torch.bool)}
    mask["1.weight"][0, 1] = False
    got = prune.magnitude(net, mask, sparsity=0.5)
    assert bool(got["0.weight"][0, 0]) and not bool(got["1.weight"][0, 1])  # inf is the largest, kept
    assert sum(int(m.sum()) for m in got.values()) == 12


def test_random_pruning_draws_one_tensor_at_a_time_with_the_same_numbers():
    net = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10))
    names = ["0.weight", "1.weight"]
    for seed in (0, 5):
        g = torch.Generator().manual_seed(seed)
        eager = {n: torch.rand(net.get_parameter(n).shape, generator=g, dtype=torch.float64) for n in names}
        ones = {n: torch.ones(t.shape, dtype=torch.bool) for n, t in eager.items()}
        want = select_ref(eager, ones, scope="global", density=0.3)
        got = prune.random(net, 0.7, seed=seed)
        assert all(torch.equal(got[n], want[n]) for n in names)
    # the global generator is advanced as the eager draws advanced it
    torch.manual_seed(3)
    prune.random(net, 0.5)
    after = torch.rand(1)
    torch.manual_seed(3)
    for n in names:
        torch.rand(net.get_parameter(n).shape, dtype=torch.float64)
    assert torch.equal(torch.rand(1), after)


@pytest.mark.parametrize("kind", ["ties", "randn", "zeros"])
def test_select_rule_gives_each_mask_alone_in_any_order(kind, monkeypatch):
    """The streamed folder path masks one tensor at a time, in the target's order (a
    source tensor several times, others never): each mask equals select()'s."""
    monkeypatch.setattr(_core, "CHUNK", 29)
    gen = torch.Generator().manual_seed(7)
    scores = _scores(gen, kind, torch.bfloat16, [(13, 7), (50,), (4, 3, 5), (1, 1)])
    current = {n: torch.rand(s.shape, generator=gen) < 0.9 for n, s in scores.items()}
    for density in (0.0, 0.2, 0.5, 0.85, 0.9):
        want = select_ref(scores, current, scope="global", density=density, clamp=True)
        if _core.round_half_up(sum(c.numel() for c in current.values()) * density) > sum(int(c.sum()) for c in current.values()):
            with pytest.raises(ConfigError, match="never regrows"):
                _core.select_rule(scores, current, density=density, method="t")
            continue
        rule = _core.select_rule(scores, current, density=density, method="t")
        assert rule.kept == sum(int(m.sum()) for m in want.values())
        for n in ["t2", "t0", "t2", "t3", "t1"]:
            got = rule.keep(n) if n != "t0" else rule.keep(n, scores[n].clone())
            assert torch.equal(got, want[n]), (n, density)
