"""Issue 23 §folders: a checkpoint folder stretched into a new folder, streamed tensor by
tensor from safetensors shards (meta-device planning), equals the in-memory path."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import elastigraph as eg
from elastigraph import masks, prune
from elastigraph.errors import ConfigError, OutputPathError
from elastigraph.models import create, hf_folder
from elastigraph.prune import _core
from elastigraph.transfer_folder import INDEX_FILE, transfer_folder

LLAMA = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
             max_position_embeddings=64)
IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def src_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = create("hf:llama", num_hidden_layers=4, **LLAMA).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("src") / "llama4"
    model.save_pretrained(str(path), max_shard_size="40KB")  # several shards
    assert (path / INDEX_FILE).is_file()
    return path


def _reference(src_folder, layers, **prune_kw):
    src = transformers.AutoModelForCausalLM.from_pretrained(str(src_folder), torch_dtype=torch.bfloat16)
    mask = prune.magnitude(src, **prune_kw) if prune_kw else masks.full_mask(src)
    cfg = transformers.AutoConfig.from_pretrained(str(src_folder))
    cfg.num_hidden_layers = layers
    dst = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    ticket = eg.transfer(src, mask, dst)
    return ticket, ticket.apply(dst, dense=True)


@pytest.mark.parametrize("kw", [dict(sparsity=0.5), dict(n_m="2:4"), {}])
def test_streamed_stretch_equals_the_in_memory_transfer(src_folder, tmp_path, kw):
    out = transfer_folder(src_folder, tmp_path / "llama6", num_hidden_layers=6, shard_bytes=50_000,
                          metadata={"run": "t"}, **kw)
    ticket, ref = _reference(src_folder, 6, **kw)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert loaded.config.num_hidden_layers == 6 and loaded.dtype == torch.bfloat16
    assert len(json.loads((out / INDEX_FILE).read_text())["weight_map"]) == len(loaded.state_dict())
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    want = ref.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    mask = masks.load_mask(out / hf_folder.MASK_FILE)
    assert mask.keys() == ticket.mask.keys() and all(torch.equal(mask[k], ticket.mask[k]) for k in mask)
    if "n_m" in kw:
        assert all(_core.is_n_m(m, 2, 4) for m in mask.values())
    info = json.loads((out / hf_folder.INFO_FILE).read_text())
    assert info["metadata"] == {"run": "t"} and info["plan"] == ticket.plan.to_dict()
    model, m2 = hf_folder.load_pretrained(out)  # the library's own reader checks the zeros
    assert all(torch.equal(m2[k], mask[k]) for k in mask)
    with torch.no_grad():  # (ref itself was cast to bf16 whole, its rotary buffer too: not comparable)
        assert torch.equal(model(IDS).logits, loaded(IDS).logits)


def test_bad_arguments(src_folder, tmp_path):
    with pytest.raises(ConfigError, match="one of"):
        transfer_folder(src_folder, tmp_path / "x", num_hidden_layers=6, sparsity=0.5, n_m="2:4")
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        transfer_folder(src_folder, tmp_path / "x", num_hidden_layers=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("x")
    with pytest.raises(OutputPathError):
        transfer_folder(src_folder, tmp_path / "full", num_hidden_layers=6)
