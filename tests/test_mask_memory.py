"""Issue 23 §masks that cost little: installed masks are bool buffers (not a float copy of
the model) with the same training numbers as a float 0/1 mask, and a ticket can be
applied as a plain dense-with-zeros model (no hooks, no extra memory)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from elastigraph import masks, prune
from elastigraph.errors import ConfigError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _steps(net, n=5):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {k: v.clone() for k, v in masks.plain_state(net.state_dict()).items()}


def test_installed_mask_is_bool_and_trains_like_a_float_mask():
    ref, net = _net(), _net()
    mask = prune.random(net, 0.6, seed=0)
    for name, b in mask.items():  # torch's own float 0/1 mask buffers: the previous behaviour
        mod, _, attr = name.rpartition(".")
        tprune.custom_from_mask(ref.get_submodule(mod), attr, b.float())
    masks.install(net, mask)
    bufs = {n: b for n, b in net.named_buffers() if n.endswith("_mask")}
    assert len(bufs) == 3 and all(b.dtype == torch.bool for b in bufs.values())
    assert sum(b.nbytes for b in bufs.values()) == sum(m.numel() for m in mask.values())  # 1 byte an entry
    assert all(ref.get_buffer(n).dtype == torch.float32 for n in bufs)
    # the effective weight's autograd graph holds the bool buffer itself, not a float copy
    saved = net[0].weight.grad_fn
    assert saved._saved_self is None and saved._saved_other.dtype == torch.bool
    assert saved._saved_other.data_ptr() == net[0].weight_mask.data_ptr()
    assert ref[0].weight.grad_fn._saved_self.dtype == torch.float32  # torch's: a float copy of the mask
    a, b = _steps(ref), _steps(net)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert all(torch.equal(masks.from_model(net)[n], mask[n]) for n in mask)
    # replacing an installed mask, and removing it, work on the bool buffer
    new = prune.magnitude(net, sparsity=0.8)
    masks.install(net, new)
    assert all(torch.equal(masks.from_model(net)[n], new[n]) for n in new)
    masks.remove(net)
    assert not masks.from_model(net) and all((net.get_parameter(n)[~new[n]] == 0).all() for n in new)


def test_zero_pruned_is_in_place_without_hooks():
    net = _net()
    mask = prune.magnitude(net, sparsity=0.5)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in net.named_parameters()}
    masks.zero_pruned(net, mask)
    assert not masks.from_model(net) and not any(n.endswith("_mask") for n, _ in net.named_buffers())
    assert {n: p.data_ptr() for n, p in net.named_parameters()} == ptrs  # no copies
    for n, p in net.named_parameters():
        if n in mask:
            assert (p[~mask[n]] == 0).all() and torch.equal(p[mask[n]], before[n][mask[n]])
        else:
            assert torch.equal(p, before[n])
    # over an installed mask: made permanent, then zeroed
    other = _net()
    masks.install(other, prune.random(other, 0.3, seed=1))
    masks.zero_pruned(other, mask)
    assert not masks.from_model(other)
    assert all((other.get_parameter(n)[~mask[n]] == 0).all() for n in mask)


def test_ticket_apply_dense_gives_a_plain_model():
    pytest.importorskip("transformers")
    import elastigraph as eg

    kw = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
              max_position_embeddings=32)
    torch.manual_seed(0)
    src = eg.models.create("hf:llama", num_hidden_layers=2, **kw)
    dst = eg.models.create("hf:llama", num_hidden_layers=3, **kw)
    ticket = eg.transfer(src, prune.magnitude(src, sparsity=0.5), dst)
    hooked = ticket.apply(masks.copy_model(dst))
    plain = ticket.apply(masks.copy_model(dst), dense=True)
    assert not masks.from_model(plain) and set(plain.state_dict()) == set(dst.state_dict())
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, hooked(ids).logits)
    for n, keep in ticket.mask.items():
        assert (plain.get_parameter(n)[~keep] == 0).all()
    with pytest.raises(ConfigError, match="dense"):
        ticket.apply(masks.copy_model(dst), dense="yes")
