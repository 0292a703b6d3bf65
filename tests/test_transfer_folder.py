"""Issue 23 §folders: a checkpoint folder stretched into a new folder, streamed tensor by
tensor from safetensors shards (meta-device planning), equals the in-memory path."""

from __future__ import annotations

import json
import sys

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
    sp = ticket.sparsity()
    assert info["sparsity"]["source"] == pytest.approx(sp["src"]) and info["sparsity"]["target"] == pytest.approx(sp["dst"])
    head = masks.mask_metadata(out / hf_folder.MASK_FILE)  # the streamed header, rewritten at the end
    assert head["sparsity"] == pytest.approx(sp["dst"]) and head["metadata"]["run"] == "t"
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


def _stream_and_compare(src_folder, out, layers, mask, **kw):
    """transfer_folder(mask=...) against the in-memory transfer of the same mask."""
    transfer_folder(src_folder, out, num_hidden_layers=layers, mask=mask, **kw)
    src = transformers.AutoModelForCausalLM.from_pretrained(str(src_folder), torch_dtype=torch.bfloat16)
    given = masks.load_mask(mask) if not isinstance(mask, dict) else mask
    cfg = transformers.AutoConfig.from_pretrained(str(src_folder))
    cfg.num_hidden_layers = layers
    dst = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    ticket = eg.transfer(src, given, dst)
    want = ticket.apply(dst, dense=True).state_dict()
    model, got_mask = hf_folder.load_pretrained(out)
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert got_mask.keys() == ticket.mask.keys() and all(torch.equal(got_mask[k], ticket.mask[k]) for k in got_mask)
    return ticket, got_mask


def test_a_wanda_2_4_mask_file_streams_into_a_deeper_folder(src_folder, tmp_path):
    """Wanda needs the model and data, so it is computed in memory; its mask file then
    drives the streamed transfer (read one tensor at a time), and every copied layer
    keeps the 2:4 pattern."""
    from elastigraph.train.data import load_dataset

    ds = load_dataset("pystdlib?seq_len=32", split="train", limit=8)
    src = transformers.AutoModelForCausalLM.from_pretrained(str(src_folder), torch_dtype=torch.float32)
    m = prune.wanda(src, [(ds.x[:4].long(), ds.y[:4].long())], n_m="2:4")
    masks.save_mask(m, tmp_path / "wanda.safetensors")
    _t, got = _stream_and_compare(src_folder, tmp_path / "out", 6, tmp_path / "wanda.safetensors", shard_bytes=1)
    assert all(_core.is_n_m(v, 2, 4) for v in got.values())
    # shard_bytes=1: one tensor a shard, each still whole
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) == len(
        json.loads((tmp_path / "out" / INDEX_FILE).read_text())["weight_map"])


def test_a_given_mask_dict_squeezes(src_folder, tmp_path):
    src = transformers.AutoModelForCausalLM.from_pretrained(str(src_folder), torch_dtype=torch.bfloat16)
    m = prune.random(src, 0.7, seed=3)
    ticket, _ = _stream_and_compare(src_folder, tmp_path / "out", 2, m)
    info = json.loads((tmp_path / "out" / hf_folder.INFO_FILE).read_text())
    assert info["num_hidden_layers"] == 2 and info["sparsity"]["source"] == pytest.approx(masks.sparsity(m))
    assert info["sparsity"]["target"] == pytest.approx(ticket.sparsity()["dst"])


def test_mask_file_of_another_model_and_n_m_misfit_are_refused_before_writing(src_folder, tmp_path):
    from elastigraph.errors import MaskError

    masks.save_mask({"model.layers.0.mlp.up_proj.weight": torch.ones(3, 3, dtype=torch.bool)}, tmp_path / "m.safetensors")
    with pytest.raises(MaskError, match="up_proj"):
        transfer_folder(src_folder, tmp_path / "x", num_hidden_layers=6, mask=tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="not a multiple of M=5"):
        transfer_folder(src_folder, tmp_path / "y", num_hidden_layers=6, n_m="2:5")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def write_random_llama(path, layers, shard_bytes, seed=0, **config):
    """A random-init Llama checkpoint folder (config, bf16 safetensors shards, index),
    written from a meta-device model one tensor at a time: never the model in memory."""
    from safetensors.torch import save_file

    cfg = transformers.LlamaConfig(**config, num_hidden_layers=layers, torch_dtype="bfloat16")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    shards, shard, size, total = [], {}, 0, 0
    for k, t in model.state_dict().items():
        v = torch.ones(t.shape) if t.dim() == 1 else torch.randn(t.shape, generator=g) * 0.02
        v = v.to(torch.bfloat16)
        if shard and size + 2 * v.numel() > shard_bytes:
            shards.append(shard)
            shard, size = {}, 0
        shard[k] = v
        size += 2 * v.numel()
        total += 2 * v.numel()
    shards.append(shard)
    wmap = {}
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, str(path / name), metadata={"format": "pt"})
        wmap.update({k: name for k in sh})
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}))
    cfg.save_pretrained(str(path))
    return total // 2  # parameters


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA as Linux counts it, /proc, glibc")
def test_streams_a_checkpoint_larger_than_the_memory_limit(tmp_path):
    """Issue 23: a Llama checkpoint of 29.9 M parameters (114 MB in fp32, written here as
    57 MB of bf16 shards) is stretched 4 -> 6 layers, with a global magnitude mask and
    with a 2:4 mask, by a process whose data segment may grow by 56 MB only. After
    importing torch, transformers and elastigraph and running the same calls once on a
    tiny checkpoint (code loaded, nothing of this model), tests/_stream_limited.py sets
    RLIMIT_DATA (heap and private writable mappings: every tensor and Python object; not
    read-only file mappings nor the page cache) to its data size plus 56 MB, checks that
    the checkpoint's fp32 size can then not be allocated, and streams. (It needs about
    40 MB: the two meta models' plan, and a few copies of the largest tensor.) The
    results load with from_pretrained and carry their masks."""
    import os
    import subprocess
    from pathlib import Path

    big = dict(hidden_size=768, intermediate_size=2048, num_attention_heads=12, num_key_value_heads=12,
               vocab_size=1024, max_position_embeddings=256)
    params = write_random_llama(tmp_path / "src", 4, 16 << 20, **big)
    write_random_llama(tmp_path / "warm", 1, 1 << 16, **LLAMA)
    budget = 56 << 20
    assert 4 * params > 2 * budget and 2 * params > budget  # fp32 twice the limit; bf16 over it too
    script = Path(__file__).parent / "_stream_limited.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "warm"), str(tmp_path / "src"),
                          str(tmp_path / "out"), "6", str(budget), "magnitude", "2:4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["binds"] and report["limit_data"] - report["base_data"] == budget
    for kind in ("magnitude", "2:4"):
        out = tmp_path / "out" / kind
        model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
        assert model.config.num_hidden_layers == 6 and model.dtype == torch.bfloat16
        mask = masks.load_mask(out / hf_folder.MASK_FILE)
        weights = dict(model.named_parameters())
        assert all(not weights[n][~m].any() for n, m in mask.items())
        if kind == "2:4":
            assert all(_core.is_n_m(m, 2, 4) for m in mask.values())
        else:
            assert json.loads((out / hf_folder.INFO_FILE).read_text())["sparsity"]["source"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("kw", [dict(sparsity=0.5), dict(n_m="2:4")])
def test_gpt2_conv1d_and_tied_head_stream_like_in_memory(tmp_path, kw):
    """GPT-2: Conv1D weights stored (in, out), so N:M groups run down the columns; the
    LM head is the token embedding, stored once."""
    cfg = dict(n_embd=32, n_head=2, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, **cfg)).save_pretrained(str(tmp_path / "src"))
    out = transfer_folder(tmp_path / "src", tmp_path / "dst", num_hidden_layers=3, **kw)
    model, mask = hf_folder.load_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    src = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "src"))
    dst = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=3, **cfg)).eval()
    ticket = eg.transfer(src, prune.magnitude(src, **kw), dst)
    want = ticket.apply(dst, dense=True).state_dict()
    got = model.state_dict()
    assert mask.keys() == ticket.mask.keys() and all(torch.equal(mask[k], ticket.mask[k]) for k in mask)
    assert all(torch.equal(got[k], want[k]) for k in want)
    if "n_m" in kw:
        assert all(_core.is_n_m(m, 2, 4, _core.input_last(model, k)) for k, m in mask.items())


@pytest.mark.parametrize("kw", [dict(sparsity=0.3), dict(n_m="2:4")])
def test_prune_folder_streams_the_masks_of_prune_magnitude(src_folder, tmp_path, kw):
    from elastigraph.transfer_folder import prune_folder

    sp = prune_folder(src_folder, tmp_path / "m.safetensors", metadata={"k": 1}, **kw)
    got = masks.load_mask(tmp_path / "m.safetensors")
    src = transformers.AutoModelForCausalLM.from_pretrained(str(src_folder), torch_dtype=torch.bfloat16)
    want = prune.magnitude(src, **kw)
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    head = masks.mask_metadata(tmp_path / "m.safetensors")
    assert sp == pytest.approx(masks.sparsity(want)) and head["sparsity"] == pytest.approx(sp) and head["metadata"] == {"k": 1}
    with pytest.raises(ConfigError, match="exactly one"):
        prune_folder(src_folder, tmp_path / "x.safetensors")
