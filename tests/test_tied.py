"""Tied and shared parameters (issue 13 section 4): one tensor under several names is
named, masked and copied once, as the tie says."""

import pytest
import torch
from torch import nn

import elastigraph as eg
from elastigraph.errors import MaskError


def _tied_lm() -> nn.Sequential:
    lm = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
    lm[1].weight = lm[0].weight
    return lm


def test_full_mask_of_a_tied_model_names_the_tensor_once():
    lm = _tied_lm()
    fm = eg.masks.full_mask(lm)
    assert list(fm) == ["0.weight"]  # the Linear's weight is the embedding's
    assert eg.masks.tied_names(lm) == {"0.weight": ["0.weight", "1.weight"]}
    assert eg.masks.canonical_names(lm) == {"1.weight": "0.weight"}


def test_mask_under_the_other_name_of_a_tied_tensor_is_accepted_once():
    lm = _tied_lm()
    m = torch.rand(10, 8) > 0.5
    assert list(eg.masks.check_mask(lm, {"1.weight": m})) == ["0.weight"]
    with pytest.raises(MaskError, match="one tied parameter"):
        eg.masks.check_mask(lm, {"0.weight": m, "1.weight": m})


def test_install_masks_every_user_of_a_tied_tensor_and_remove_keeps_the_tie():
    lm = _tied_lm()
    m = torch.rand(10, 8) > 0.5
    eg.masks.install(lm, {"0.weight": m})
    assert torch.equal(lm[0].weight != 0, m & (lm[0].weight_orig != 0))
    assert torch.equal(lm[0].weight, lm[1].weight)  # the head sees the masked weight too
    assert list(eg.masks.from_model(lm)) == ["0.weight"]
    with torch.no_grad():
        lm[0].weight_orig.add_(1.0)  # training the shared orig moves both users
    lm(torch.tensor([[1, 2]]))
    assert torch.equal(lm[0].weight, lm[1].weight)
    eg.masks.remove(lm)
    assert lm[0].weight is lm[1].weight
    assert int((lm[0].weight == 0).sum()) >= int((~m).sum())


class _Block(nn.Module):
    def __init__(self, shared: nn.Module):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.shared = shared

    def forward(self, x):
        return x + self.fc(self.shared(x))


class _SharedNet(nn.Module):
    """A module used by every block (CoaT's shared positional convolution)."""

    def __init__(self, n: int):
        super().__init__()
        self.stem, self.pos, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.blocks = nn.Sequential(*[_Block(self.pos) for _ in range(n)])

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@pytest.mark.parametrize("n_src,n_dst", [(2, 4), (4, 2)])
def test_module_shared_by_every_block_is_carried_once(n_src, n_dst):
    src, dst = _SharedNet(n_src), _SharedNet(n_dst)
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}
    assert "pos.weight" in mask and not any(".shared." in k for k in mask)
    t = eg.transfer(src, mask, dst, example_input=(2, 8))
    assert [p.device.type for p in src.parameters()] == ["cpu"] * len(list(src.parameters()))
    sources = t.plan.stages[0].sources
    assert len(sources) == n_dst
    assert torch.equal(t.mask["pos.weight"], mask["pos.weight"])  # masked once, copied as is
    for j, i in enumerate(sources):  # each target block from the block the plan names
        assert torch.equal(t.mask[f"blocks.{j}.fc.weight"], mask[f"blocks.{i}.fc.weight"])
        assert t.weights[f"blocks.{j}.fc.weight"].data_ptr() == src.blocks[i].fc.weight.data_ptr()
    t.apply(dst)
    assert all(b.shared is dst.pos for b in dst.blocks)
    assert torch.equal(dst.pos.weight, src.pos.weight * mask["pos.weight"])
    dst(torch.zeros(2, 8))


class _TiedLM(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16)) for _ in range(n)])
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def test_tied_embedding_and_head_transfer_by_the_tie():
    src, dst = _TiedLM(2), _TiedLM(3)
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}
    assert "head.weight" not in mask and "emb.weight" in mask
    t = eg.transfer(src, mask, dst)  # token ids inferred for a model that starts with an embedding
    assert t.plan.stages[0].sources == [0, 1, 1]
    assert torch.equal(t.mask["emb.weight"], mask["emb.weight"]) and "head.weight" not in t.mask
    t.apply(dst)
    assert dst.head.weight_orig is dst.emb.weight_orig  # still one tensor, masked in both users
    assert torch.equal(dst.head.weight, src.emb.weight * mask["emb.weight"])
    assert dst(torch.tensor([[1, 2, 3]])).shape == (1, 3, 20)


def test_ticket_weights_load_strictly_with_tied_aliases():
    """Ticket.weights has every state_dict key of the target, a tied head's too (issue 20)."""
    T = pytest.importorskip("transformers")
    T.logging.set_verbosity_error()

    def gpt2(n):
        return T.GPT2LMHeadModel(T.GPT2Config(n_layer=n, n_embd=32, n_head=2, vocab_size=100, n_positions=64))

    torch.manual_seed(0)
    src, dst = gpt2(2), gpt2(3)
    mask = {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}
    t = eg.transfer(src, mask, dst)
    assert set(t.weights) == set(dst.state_dict()) and not t.unmapped
    assert t.weights["lm_head.weight"].data_ptr() == t.weights["transformer.wte.weight"].data_ptr()
    dst.load_state_dict(t.weights, strict=True)
    assert dst.lm_head.weight is dst.transformer.wte.weight  # the tie survives the load
    assert torch.equal(dst.transformer.h[2].mlp.c_fc.weight, src.transformer.h[1].mlp.c_fc.weight)
    assert torch.equal(dst.lm_head.weight, src.lm_head.weight)
    fresh = gpt2(3)
    t.apply(fresh)  # apply() copies a tied tensor once, under its canonical name
    assert torch.equal(fresh.lm_head.weight, src.transformer.wte.weight * mask["transformer.wte.weight"])


def test_ticket_weights_load_strictly_with_a_shared_module():
    src, dst = _SharedNet(2), _SharedNet(3)
    t = eg.transfer(src, {k: torch.rand(v.shape) > 0.5 for k, v in eg.masks.full_mask(src).items()}, dst,
                    example_input=(2, 8))
    assert set(t.weights) == set(dst.state_dict())  # blocks.j.shared.* included
    dst.load_state_dict(t.weights, strict=True)
    assert all(b.shared is dst.pos for b in dst.blocks) and torch.equal(dst.pos.weight, src.pos.weight)
