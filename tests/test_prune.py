"""Known answers on tiny models for every pruning method: exact counts, nested masks,
deterministic ties, inputs left untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elastigraph import masks, models, prune
from elastigraph.prune import _core
from elastigraph.errors import ConfigError, MaskError, StrategyError


def _linear(*rows, bias=False) -> nn.Linear:
    w = torch.tensor(rows, dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


def _two_layer() -> nn.Sequential:
    # |w|: 1 5 3 0.5 | 2 4
    return nn.Sequential(_linear([1.0, -5.0], [3.0, 0.5]), _linear([-2.0, 4.0]))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k


def _nested(inner: masks.Mask, outer: masks.Mask) -> bool:
    return all(not bool((inner[k] & ~outer[k]).any()) for k in inner)


def _kept(m: masks.Mask) -> int:
    return sum(int(t.sum()) for t in m.values())


# ------------------------------------------------------------------ registry


def test_registry():
    assert set(prune.METHODS) == {"imp", "random", "snip", "grasp", "synflow", "magnitude", "wanda"}
    assert prune.by_name("snip") is prune.snip
    with pytest.raises(StrategyError, match="'snp'.*grasp, imp, magnitude, random, snip, synflow"):
        prune.by_name("snp")


# ------------------------------------------------------------------ selection


def test_top_k_equals_stable_sort_with_many_ties(monkeypatch):
    monkeypatch.setattr(_core, "CHUNK", 16)  # the radix selection reads chunks: ties span them
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 300):
        for _ in range(30):
            x = torch.randint(0, 5, (n,), generator=g).double()
            k = int(torch.randint(0, n + 1, (1,), generator=g))
            ref = torch.sort(x, descending=True, stable=True).indices[:k]
            keep = _core.select({"x": x}, {"x": torch.ones(n, dtype=torch.bool)}, scope="global",
                                density=k / n, method="t")["x"]
            assert sorted(keep.nonzero().squeeze(1).tolist()) == sorted(ref.tolist())


# ------------------------------------------------------------------ magnitude


def test_magnitude_known_answer_global_and_layerwise():
    model = _two_layer()
    before = _state(model)
    m = prune.magnitude(model, sparsity=0.5)  # keep 3 of 6: 5, 4, 3
    assert torch.equal(m["0.weight"], torch.tensor([[False, True], [True, False]]))
    assert torch.equal(m["1.weight"], torch.tensor([[False, True]]))
    one_round = prune.magnitude(model)  # fraction 0.2 of 6 -> keep round(4.8) = 5: drops 0.5
    assert torch.equal(one_round["0.weight"], torch.tensor([[True, True], [True, False]]))
    assert bool(one_round["1.weight"].all())
    lw = prune.magnitude(model, sparsity=0.5, scope="layerwise")  # 2 of 4, 1 of 2
    assert torch.equal(lw["0.weight"], torch.tensor([[False, True], [True, False]]))
    assert torch.equal(lw["1.weight"], torch.tensor([[False, True]]))
    _unchanged(model, before)


def test_magnitude_nested_and_from_state_dict():
    model = _two_layer()
    cur = {"0.weight": torch.tensor([[1, 0], [1, 1]]), "1.weight": torch.tensor([[1, 1]])}  # 5 pruned
    m = prune.magnitude(model.state_dict(), cur, fraction=0.4)  # keep round(5 * .6) = 3 of 1,3,.5,2,4
    assert torch.equal(m["0.weight"], torch.tensor([[False, False], [True, False]]))
    assert torch.equal(m["1.weight"], torch.tensor([[True, True]]))
    assert _nested(m, masks.check_mask(model, cur))
    assert cur["0.weight"].dtype == torch.int64  # input mask untouched
    same = prune.magnitude(model, cur, fraction=0.4)
    assert all(torch.equal(same[k], m[k]) for k in m)
    with pytest.raises(ConfigError, match="never regrows"):
        prune.magnitude(model, cur, sparsity=0.0)  # wants all 6 kept, the mask keeps 5
    with pytest.raises(ConfigError, match="names=.*full_mask"):
        prune.magnitude(model.state_dict(), sparsity=0.5)
    by_names = prune.magnitude(model.state_dict(), names=["0.weight"], sparsity=0.5)
    assert list(by_names) == ["0.weight"] and _kept(by_names) == 2


def test_magnitude_ties_are_deterministic_by_order():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-0.7)
    m = prune.magnitude(model, sparsity=0.6)  # 10 weights, keep 4: the first four in order
    assert torch.equal(m["0.weight"], torch.tensor([[True, True, True], [True, False, False]]))
    assert not bool(m["1.weight"].any())


def test_magnitude_respects_installed_masks_and_options():
    model = _two_layer()
    masks.install(model, {"0.weight": torch.tensor([[1, 0], [1, 1]])})  # prunes the 5
    before = _state(model)
    m = prune.magnitude(model, sparsity=0.5)
    assert not bool(m["0.weight"][0, 1])
    assert _kept(m) == 3
    m2 = prune.magnitude(model.state_dict(), sparsity=0.5, names=["0.weight", "1.weight"])
    assert all(torch.equal(m[k], m2[k]) for k in m)
    _unchanged(model, before)
    net = models.create("cifar_resnet_8")
    keys = list(prune.magnitude(net, include_first=False, include_last=False))
    assert keys == masks.prunable_parameters(net)[1:-1]
    with pytest.raises(ConfigError, match="not both"):
        prune.magnitude(net, fraction=0.2, sparsity=0.5)
    with pytest.raises(ConfigError, match="scope"):
        prune.magnitude(net, scope="local")
    with pytest.raises(ConfigError, match="sparsity must be a number in"):
        prune.magnitude(net, sparsity=1.5)
    with pytest.raises(MaskError, match="not parameters of CifarResNet"):
        prune.magnitude(net, names=["nope.weight"])


def test_magnitude_extra_mask_entries_are_carried_through():
    model = _two_layer()
    cur = {"1.weight": torch.tensor([[0, 1]])}
    m = prune.magnitude(model, cur, names=["0.weight"], sparsity=0.75)
    assert torch.equal(m["0.weight"], torch.tensor([[False, True], [False, False]]))
    assert torch.equal(m["1.weight"], torch.tensor([[False, True]]))


# ------------------------------------------------------------------ random


def test_random_exact_reproducible_nested():
    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))
    total = 30 * 20 + 20 * 10
    a = prune.random(net, 0.7, seed=1)
    assert _kept(a) == round(total * 0.3) == 240
    b = prune.random(net, 0.7, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = prune.random(net, 0.7, seed=2)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    d = prune.random(net, 0.9, seed=3, mask=a)
    assert _kept(d) == 80 and _nested(d, a)
    lw = prune.random(net, 0.75, scope="layerwise", generator=torch.Generator().manual_seed(0))
    assert [int(t.sum()) for t in lw.values()] == [150, 50]
    with pytest.raises(ConfigError, match="not both"):
        prune.random(net, 0.5, seed=1, generator=torch.Generator())


def test_random_keeps_each_weight_with_probability_density():
    net = nn.Linear(5, 2, bias=False)
    freq = torch.zeros(2, 5)
    for s in range(400):
        freq += prune.random(net, 0.7, seed=s)["weight"].float()
    freq /= 400
    assert float((freq - 0.3).abs().max()) < 0.09


# ------------------------------------------------------------------ SNIP


def _softmax_ce_grad(w, b, x, y):
    """dL/dW for L = mean CE(x W^T + b, y), by hand: (softmax - onehot)^T x / N."""
    p = torch.softmax(x @ w.T + b, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y)


def test_snip_matches_hand_computed_scores():
    torch.manual_seed(0)
    net = nn.Linear(4, 3).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g))
               for _ in range(2)]
    w, b = net.weight.detach(), net.bias.detach()
    grad = sum(_softmax_ce_grad(w, b, x, y) for x, y in batches)
    score = (w * grad).abs().flatten()
    keep = torch.zeros(12, dtype=torch.bool)
    keep[torch.argsort(score, descending=True)[:5]] = True  # sparsity 7/12
    before = _state(net)
    m = prune.snip(net, batches, 7 / 12)
    assert list(m) == ["weight"]
    assert torch.equal(m["weight"].flatten(), keep)
    _unchanged(net, before)
    # nested: weights already pruned stay pruned, even the best-scoring one
    best = torch.zeros(12, dtype=torch.bool)
    best[int(torch.argmax(score))] = True
    cur = {"weight": (~best).view(3, 4)}
    m2 = prune.snip(net, batches, 0.5, mask=cur)
    assert _kept(m2) == 6 and _nested(m2, cur)


def test_snip_on_model_with_installed_masks_keeps_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    cur = prune.random(net, 0.5, seed=0)
    masks.install(net, cur)
    before = _state(net)
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    m = prune.snip(net, batches, 0.75)
    assert _kept(m) == round(45 * 0.25) and _nested(m, cur)
    assert masks.from_model(net).keys() == cur.keys()  # still installed, untouched
    _unchanged(net, before)


# ------------------------------------------------------------------ GraSP


def test_grasp_matches_hand_computed_hessian_gradient_product():
    torch.manual_seed(0)
    net = nn.Linear(4, 3, bias=False).double()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
               for _ in range(2)]
    T = 200.0
    w = net.weight.detach()
    # By hand for logits z = x W^T / T and mean CE: grad = (p - onehot)^T x / (N T);
    # the Hessian-vector product with V is sum_n (diag(p_n) - p_n p_n^T)(V x_n) x_n^T / (N T^2).
    grad = sum(_softmax_ce_grad(w / T, torch.zeros(3, dtype=torch.float64), x, y) / T for x, y in batches)
    hg = torch.zeros_like(w)
    for x, _ in batches:
        p = torch.softmax(x @ w.T / T, dim=1)
        for n in range(len(x)):
            J = torch.diag(p[n]) - torch.outer(p[n], p[n])
            hg += torch.outer(J @ (grad @ x[n]), x[n]) / (len(x) * T**2)
    expected = -w * hg
    scores = prune.grasp_scores(net, batches, {"weight": torch.ones(3, 4, dtype=torch.bool)})
    torch.testing.assert_close(scores["weight"], expected, rtol=1e-9, atol=0)
    # GraSP removes the highest scores: keep the 4 lowest
    keep = torch.zeros(12, dtype=torch.bool)
    keep[torch.argsort(expected.flatten())[:4]] = True
    m = prune.grasp(net, batches, 8 / 12)
    assert torch.equal(m["weight"].flatten(), keep)


def test_grasp_on_conv_net_exact_and_nested():
    torch.manual_seed(0)
    net = models.create("cifar_resnet_8", in_chans=1)
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    before = _state(net)
    m = prune.grasp(net, batches, 0.8)
    total = sum(t.numel() for t in m.values())
    assert _kept(m) == round(total * 0.2)
    m2 = prune.grasp(net, batches, 0.9, mask=m)
    assert _kept(m2) == round(total * 0.1) and _nested(m2, m)
    _unchanged(net, before)


# ------------------------------------------------------------------ SynFlow


def test_synflow_one_iteration_matches_hand_computation():
    w1 = torch.tensor([[1.0, -2.0, 0.5], [-0.1, 0.3, 4.0]])
    w2 = torch.tensor([[2.0, -1.0], [0.2, 0.7]])
    net = nn.Sequential(_linear(*w1.tolist()), _linear(*w2.tolist()))
    # R = 1^T |W2| |W1| 1: dR/dW1[i, j] = sum_k |W2[k, i]|, dR/dW2[k, i] = sum_j |W1[i, j]|
    s1 = w1.abs() * w2.abs().sum(0)[:, None]
    s2 = w2.abs() * w1.abs().sum(1)[None, :]
    flat = torch.cat([s1.flatten(), s2.flatten()])
    keep = torch.zeros(10, dtype=torch.bool)
    keep[torch.argsort(flat, descending=True)[:4]] = True
    before = _state(net)
    m = prune.synflow(net, 0.6, iterations=1)
    assert torch.equal(torch.cat([m["0.weight"].flatten(), m["1.weight"].flatten()]), keep)
    _unchanged(net, before)  # signs and values of the original untouched


def test_synflow_avoids_layer_collapse_where_magnitude_does_not():
    # Bias-free, where SynFlow's conservation law holds (with biases, R can be dominated by
    # bias paths that bypass the early layers, as in the reference implementation).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 100, bias=False), nn.ReLU(), nn.Linear(100, 100, bias=False), nn.ReLU(),
                        nn.Linear(100, 100, bias=False), nn.ReLU(), nn.Linear(100, 10, bias=False))
    with torch.no_grad():
        net[2].weight.mul_(1e-3)  # a layer of small weights
    mag = prune.magnitude(net, sparsity=0.99)
    assert int(mag["2.weight"].sum()) == 0  # collapsed: the network is cut
    sf = prune.synflow(net, 0.99, iterations=100)
    total = sum(t.numel() for t in sf.values())
    assert _kept(sf) == round(total * 0.01)
    assert all(int(t.sum()) > 0 for t in sf.values())


def test_synflow_conv_net_input_shape_and_nesting():
    net = models.create("cifar_resnet_8", in_chans=1)
    assert prune.infer_input_shape(net) == (1, 32, 32)
    net.train()
    m = prune.synflow(net, 0.5, iterations=3, input_shape=(1, 8, 8))
    total = sum(t.numel() for t in m.values())
    assert _kept(m) == round(total * 0.5)
    m2 = prune.synflow(net, 0.8, iterations=2, input_shape=(1, 8, 8), mask=m)
    assert _kept(m2) == round(total * 0.2) and _nested(m2, m)
    assert net.training  # the input model's mode is untouched
    with pytest.raises(ConfigError, match="input_shape"):
        prune.synflow(net, 0.5, iterations=1, input_shape=(3, 8, 8))


# ------------------------------------------------------------------ IMP


class _Trainer:
    """A few real SGD steps on fixed random data under the mask; records what it was given."""

    def __init__(self, rewind_step: int = 1):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 10, generator=g)
        self.y = torch.randint(0, 10, (32,), generator=g)
        self.rewind_step = rewind_step
        self.seen: list[tuple[dict[str, torch.Tensor], masks.Mask]] = []

    def __call__(self, model, mask):
        self.seen.append((_state(model), {k: v.clone() for k, v in mask.items()}))
        masks.install(model, mask)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        rewind = _state(masks.remove(masks.copy_model(model))) if self.rewind_step == 0 else None
        for step in range(1, 4):
            opt.zero_grad()
            F.cross_entropy(model(self.x), self.y).backward()
            opt.step()
            if step == self.rewind_step:
                rewind = _state(masks.remove(masks.copy_model(model)))
        return model.state_dict(), rewind, {"kept": _kept(mask)}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, 10))  # 1000 prunable weights


def test_imp_levels_exact_nested_rewound():
    model = _mlp()
    before = _state(model)
    trainer = _Trainer(rewind_step=1)
    seen_levels = []
    levels = prune.imp(model, trainer, rounds=3, on_level=seen_levels.append)
    assert [lv.level for lv in levels] == [0, 1, 2, 3] == [lv.level for lv in seen_levels]
    assert [_kept(lv.mask) for lv in levels] == [1000, 800, 640, 512]
    assert [lv.sparsity for lv in levels] == pytest.approx([0.0, 0.2, 0.36, 0.488], abs=1e-12)
    assert [lv.result for lv in levels] == [{"kept": 1000}, {"kept": 800}, {"kept": 640}, {"kept": 512}]
    for a, b in zip(levels, levels[1:]):
        assert _nested(b.mask, a.mask)
        # mask_n is one magnitude round on the weights trained at level n-1
        expect = prune.magnitude(a.trained_state, a.mask, fraction=0.2)
        assert all(torch.equal(expect[k], b.mask[k]) for k in expect)
    rewind = levels[0].rewind_state
    assert not torch.equal(rewind["0.weight"], before["0.weight"])  # step 1, not init
    # level 0 starts from the initial weights; later levels from the rewind point, masked
    assert all(torch.equal(trainer.seen[0][0][k], before[k]) for k in before)
    for lv, (start, got_mask) in zip(levels[1:], trainer.seen[1:]):
        assert all(torch.equal(got_mask[k], lv.mask[k]) for k in lv.mask)
        for k in rewind:
            m = lv.mask.get(k)
            expected = rewind[k] if m is None else rewind[k] * m
            assert torch.equal(start[k], expected), k
        assert lv.rewind_state is rewind
    # trained states are the effective (masked) weights, as plain state_dict keys
    assert set(levels[2].trained_state) == set(before)
    assert bool((levels[2].trained_state["0.weight"][~levels[2].mask["0.weight"]] == 0).all())
    _unchanged(model, before)


def test_imp_resume_reproduces_the_run():
    model = _mlp()
    full = prune.imp(model, _Trainer(rewind_step=0), rounds=3, scope="layerwise")
    assert [int(lv.mask["2.weight"].sum()) for lv in full] == [500, 400, 320, 256]
    lv1 = full[1]
    resumed = prune.imp(model, _Trainer(rewind_step=0), rounds=3, scope="layerwise",
                        start=(1, lv1.mask, lv1.trained_state, lv1.rewind_state))
    assert [lv.level for lv in resumed] == [1, 2, 3]
    for a, b in zip(full[1:], resumed):
        assert all(torch.equal(a.mask[k], b.mask[k]) for k in a.mask)
        assert all(torch.equal(a.trained_state[k], b.trained_state[k]) for k in a.trained_state)
    # rewind at step 0 is the original LTH: the rewind point is the initialisation
    assert all(torch.equal(full[0].rewind_state[k], v) for k, v in model.state_dict().items())


def test_imp_bad_train_fn_and_args():
    model = _mlp()
    with pytest.raises(ConfigError, match="must return"):
        prune.imp(model, lambda m, k: m.state_dict(), rounds=1)
    with pytest.raises(ConfigError, match="rewind state_dict"):
        prune.imp(model, lambda m, k: (m.state_dict(), None), rounds=1)
    with pytest.raises(ConfigError, match="rounds"):
        prune.imp(model, _Trainer(), rounds=-1)
    with pytest.raises(ConfigError, match="start level"):
        prune.imp(model, _Trainer(), rounds=1, start=(5, masks.full_mask(model), {}, {}))


def test_imp_on_a_batchnorm_resnet_rewinds_buffers_too():
    net = models.create("cifar_resnet_8", in_chans=1)
    starts = []

    def no_training(model, mask):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            model.bn.running_mean.add_(1.0)  # "training" moves BN statistics
        return model.state_dict(), model.state_dict()

    levels = prune.imp(net, no_training, rounds=2, include_first=False)
    total = sum(t.numel() for t in levels[0].mask.values())
    assert "conv.weight" not in levels[0].mask
    assert [_kept(lv.mask) for lv in levels] == [total, round(total * 0.8), round(round(total * 0.8) * 0.8)]
    # later levels start from the rewind point (the level-0 run's returned state), BN buffers included
    assert torch.equal(starts[1]["bn.running_mean"], torch.ones(16))
    assert torch.equal(starts[2]["bn.running_mean"], torch.ones(16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_method_on_a_cuda_model_returns_exact_cpu_masks():
    torch.manual_seed(0)
    net = models.create("cifar_resnet_8", in_chans=1).cuda()
    batches = [(torch.randn(4, 1, 8, 8, device="cuda"), torch.randint(0, 10, (4,), device="cuda"))]
    total = sum(p.numel() for n, p in net.named_parameters() if n in masks.prunable_parameters(net))
    results = [
        prune.magnitude(net, sparsity=0.8),
        prune.random(net, 0.8, seed=0),
        prune.snip(net, batches, 0.8),
        prune.grasp(net, batches, 0.8),
        prune.synflow(net, 0.8, iterations=3, input_shape=(1, 8, 8)),
    ]
    for m in results:
        assert all(t.device.type == "cpu" and t.dtype == torch.bool for t in m.values())
        assert _kept(m) == round(total * 0.2)
    cpu = prune.magnitude(net.cpu(), sparsity=0.8)
    assert all(torch.equal(cpu[k], results[0][k]) for k in cpu)


def test_input_shape_follows_the_models_own_channels_and_size():
    """timm's pretrained_cfg says (3, 224, 224) whatever in_chans/img_size the model was
    built with; SynFlow must use what the model actually takes."""
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", depth=1, in_chans=1, img_size=28, patch_size=4,
                            embed_dim=32, num_heads=2, num_classes=10)
    assert prune.infer_input_shape(vit) == (1, 28, 28)
    m = prune.synflow(vit, 0.5, iterations=2)
    assert masks.sparsity(m) == pytest.approx(0.5, abs=1e-4)


# ------------------------------------------------------------------ BatchNorm mode while scoring


def _bn_net() -> nn.Sequential:
    """Linear -> BatchNorm1d (non-trivial running statistics) -> Linear, float64."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5), nn.Linear(5, 3, bias=False)).double()
    with torch.no_grad():
        net[1].running_mean.copy_(torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))
        net[1].running_var.copy_(torch.linspace(0.5, 3.0, 5, dtype=torch.float64))
        net[1].weight.copy_(torch.linspace(0.2, 1.4, 5, dtype=torch.float64))
        net[1].bias.copy_(torch.linspace(-0.3, 0.3, 5, dtype=torch.float64))
    return net


def _bn_eval_scores(net, batches):
    """SNIP scores |w * dL/dw| by hand, BatchNorm in eval mode written out as the affine
    map (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    w1 = net[0].weight.detach().clone().requires_grad_(True)
    w2 = net[2].weight.detach().clone().requires_grad_(True)
    bn = net[1]
    total = 0.0
    for x, y in batches:
        h = x @ w1.T
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight.detach() + bn.bias.detach()
        total = total + F.cross_entropy(h @ w2.T, y)
    g1, g2 = torch.autograd.grad(total, [w1, w2])
    return {"0.weight": (w1 * g1).abs().detach(), "2.weight": (w2 * g2).abs().detach()}


def test_snip_scores_with_batchnorm_in_eval_mode_by_default():
    net = _bn_net()
    net.train()
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))]
    hand = _bn_eval_scores(net, batches)
    flat = torch.cat([hand["0.weight"].flatten(), hand["2.weight"].flatten()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, descending=True)[:12]] = True  # 35 weights, keep 12
    before = _state(net)
    m = prune.snip(net, batches, 23 / 35)
    got = torch.cat([m["0.weight"].flatten(), m["2.weight"].flatten()])
    assert torch.equal(got, keep)
    _unchanged(net, before)  # running statistics untouched
    assert net.training  # the caller's mode is untouched
    # train mode (batch statistics) is an option and scores differently here
    mt = prune.snip(net, batches, 23 / 35, train_mode=True)
    assert not all(torch.equal(mt[k], m[k]) for k in m)
    _unchanged(net, before)


def test_grasp_scores_with_batchnorm_in_eval_mode_by_default():
    net = _bn_net()
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))]
    cur = {"0.weight": torch.ones(5, 4, dtype=torch.bool), "2.weight": torch.ones(3, 5, dtype=torch.bool)}
    ref = net.eval()  # eval-mode scores equal the scores of a model already in eval mode ...
    expected = prune.grasp_scores(masks.copy_model(ref), batches, cur, train_mode=False)
    net.train()
    got = prune.grasp_scores(net, batches, cur)
    for k in cur:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)
    # ... and the running statistics enter them: a BN layer with other statistics scores differently
    other = masks.copy_model(net)
    with torch.no_grad():
        other[1].running_var.mul_(4.0)
    assert not torch.allclose(prune.grasp_scores(other, batches, cur)["0.weight"], got["0.weight"])
    trained = prune.grasp_scores(net, batches, cur, train_mode=True)
    assert not torch.allclose(trained["0.weight"], got["0.weight"])


# ------------------------------------------------------------------ shuffle (layerwise random, permuted copies)


def _authors_shuffle_state_dict(sd, seed):
    """ElasticLTH utils/tensor_utils.shuffle_state_dict, restated."""
    out = {}
    for i, k in enumerate(sorted(sd)):
        gen = torch.Generator().manual_seed(seed + i)
        n = sd[k].numel()
        perm = torch.argsort(torch.normal(torch.zeros(n), torch.ones(n), generator=gen))
        out[k] = sd[k].reshape(-1)[perm].reshape(sd[k].shape)
    return out


def test_shuffle_keeps_exact_per_tensor_counts_and_matches_the_authors_code():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))
    ticket = prune.magnitude(net, sparsity=0.8)
    counts = {k: int(t.sum()) for k, t in ticket.items()}
    a = prune.shuffle(ticket, seed=7)
    assert {k: int(t.sum()) for k, t in a.items()} == counts
    assert all(t.dtype == torch.bool and t.shape == ticket[k].shape for k, t in a.items())
    assert any(not torch.equal(a[k], ticket[k]) for k in a)
    ref = _authors_shuffle_state_dict(ticket, 7)
    assert all(torch.equal(a[k], ref[k]) for k in a)
    assert all(torch.equal(a[k], prune.shuffle(ticket, seed=7)[k]) for k in a)  # deterministic
    assert any(not torch.equal(a[k], prune.shuffle(ticket, seed=8)[k]) for k in a)
    # only the named tensors change
    b = prune.shuffle(ticket, seed=7, names=["2.weight"])
    assert torch.equal(b["0.weight"], ticket["0.weight"]) and torch.equal(b["2.weight"], a["2.weight"])
    with pytest.raises(MaskError, match="not entries"):
        prune.shuffle(ticket, seed=0, names=["nope.weight"])
    with pytest.raises(ConfigError, match="seed"):
        prune.shuffle(ticket, seed=None)
