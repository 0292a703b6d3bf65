"""A transferred ticket of an ``hf:`` model as a Hugging Face folder (issue 18):
``save_pretrained`` writes what ``AutoModelForCausalLM.from_pretrained`` loads, with the
new depth in the config, zeros where the mask prunes and the mask beside it; the logits
of the loaded model are those of the ticket applied in memory. Tiny configs, nothing
downloaded."""

from __future__ import annotations

import json

import pytest
import torch

import elastigraph as eg
from elastigraph import cli, masks
from elastigraph.errors import ModelTypeError, OutputPathError, SegmentMismatchError
from elastigraph.models import hf_folder

T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()

LLAMA = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
             max_position_embeddings=64)
GPT2 = dict(n_embd=32, n_head=2, vocab_size=256, n_positions=64)
IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def _llama(n: int, seed: int = 0):
    torch.manual_seed(seed)
    return eg.models.create("hf:llama", num_hidden_layers=n, **LLAMA)


def _gpt2(n: int, seed: int = 0):
    torch.manual_seed(seed)
    return eg.models.create("hf:gpt2", n_layer=n, **GPT2)


def _ticket(src, dst, sparsity=0.6):
    # full_mask: every prunable weight of the model (GPT-2's Conv1D layers included once
    # masks.prunable_parameters knows them; its tied LM head / token embedding either way)
    mask = eg.prune.random(src, sparsity, seed=1, mask=masks.full_mask(src))
    return eg.transfer(src, mask, dst)


@pytest.fixture(scope="module")
def llama_up():
    src, dst = _llama(2, seed=1), _llama(4, seed=2)
    return _ticket(src, dst), dst


@pytest.fixture(scope="module")
def llama_down():
    src, dst = _llama(4, seed=3), _llama(2, seed=4)
    return _ticket(src, dst), dst


@pytest.fixture(scope="module")
def gpt2_up():
    src, dst = _gpt2(2, seed=5), _gpt2(3, seed=6)
    return _ticket(src, dst, 0.5), dst


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_folder(ticket, dst, path, layers):
    """Everything the folder promises, against the ticket applied to ``dst`` in memory."""
    before = _state(dst)
    out = eg.save_pretrained(ticket, dst, path, metadata={"run": "test"})
    assert out == path and path.is_dir()
    after = _state(dst)  # the caller's model is not touched: same tensors, no masks installed
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not masks.from_model(dst)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary sibling left

    loaded = T.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert type(loaded) is type(dst) and not loaded.training
    assert loaded.config.num_hidden_layers == layers
    ref = masks.copy_model(dst)
    ticket.apply(ref)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, ref(IDS).logits)

    # the mask beside the weights, the same as the ticket's; pruned weights exactly zero
    mask = masks.load_mask(path / hf_folder.MASK_FILE)
    assert list(mask) == list(ticket.mask) and all(torch.equal(mask[k], ticket.mask[k]) for k in mask)
    params = dict(loaded.named_parameters())
    for name, keep in mask.items():
        assert not params[name][~keep].any(), name
        assert torch.equal(params[name][keep], ticket.weights[name][keep]), name
    info = json.loads((path / hf_folder.INFO_FILE).read_text())
    assert info["plan"] == ticket.plan.to_dict() and info["num_hidden_layers"] == layers
    assert info["metadata"] == {"run": "test"}
    sp = info["sparsity"]
    assert sp["target"] == pytest.approx(masks.sparsity(mask)) and sp["source"] == pytest.approx(ticket.sparsity()["src"])
    zeros = sum(int((params[n] == 0).sum()) for n in mask) / sum(m.numel() for m in mask.values())
    assert sp["weights"] == pytest.approx(zeros) and zeros >= sp["target"] - 1e-12 and sp["target"] > 0.3  # not dropped

    model2, mask2 = eg.load_pretrained(path)
    assert type(model2) is type(dst) and all(torch.equal(mask2[k], mask[k]) for k in mask)
    return loaded, info


def test_llama_stretch_2_to_4_loads_with_from_pretrained(llama_up, tmp_path):
    ticket, dst = llama_up
    assert ticket.plan.stages[0].sources == [0, 1, 1, 1]
    _, info = _check_folder(ticket, dst, tmp_path / "llama4", 4)
    assert info["mapping"] == "0:0;1:1,2,3" and info["architecture"] == "LlamaForCausalLM"


def test_llama_squeeze_4_to_2(llama_down, tmp_path):
    ticket, dst = llama_down
    assert ticket.plan.stages[0].sources == [0, 1]
    loaded, _ = _check_folder(ticket, dst, tmp_path / "llama2", 2)
    # the usual flow: the ticket already applied to the target in memory, then saved
    applied = ticket.apply(masks.copy_model(dst)).eval()
    eg.save_pretrained(ticket, applied, tmp_path / "applied")
    assert set(masks.from_model(applied)) == set(ticket.mask)  # still masked: not baked in place
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "applied", local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(again(IDS).logits, loaded(IDS).logits)
        torch.testing.assert_close(again(IDS).logits, applied(IDS).logits)


def test_gpt2_stretch_with_tied_head(gpt2_up, tmp_path):
    ticket, dst = gpt2_up
    assert ticket.plan.stages[0].sources == [0, 1, 1]
    assert "transformer.wte.weight" in ticket.mask and "lm_head.weight" not in ticket.mask
    loaded, _ = _check_folder(ticket, dst, tmp_path / "gpt2", 3)
    assert loaded.config.n_layer == 3
    # the tie survives the round trip: the LM head is the (pruned) token embedding
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert not loaded.lm_head.weight[~ticket.mask["transformer.wte.weight"]].any()


def test_load_pretrained_finds_weights_changed_without_the_mask(llama_up, tmp_path):
    from safetensors.torch import load_file, save_file

    ticket, dst = llama_up
    path = eg.save_pretrained(ticket, dst, tmp_path / "f")
    name = next(iter(ticket.mask))
    weights = load_file(path / "model.safetensors")
    weights[name] = torch.ones_like(weights[name])  # "fine-tuned" without the mask
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(eg.errors.MaskError, match=name.replace(".", r"\.")):
        eg.load_pretrained(path)
    with pytest.raises(ModelTypeError, match="folder's path"):
        eg.load_pretrained(None)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        eg.load_pretrained(path / "model.safetensors")
    (path / "mask.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="mask.safetensors"):
        eg.load_pretrained(path)


def test_destination_rules(llama_up, tmp_path):
    ticket, dst = llama_up
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputPathError, match="existing file"):
        eg.save_pretrained(ticket, dst, a_file)
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        eg.save_pretrained(ticket, dst, a_file / "sub")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):  # never deletes a folder elastigraph did not write
        with pytest.raises(OutputPathError, match="not empty"):
            eg.save_pretrained(ticket, dst, foreign, overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (eg.save_pretrained(ticket, dst, empty) / "model.safetensors").is_file()
    with pytest.raises(OutputPathError, match="overwrite=True"):
        eg.save_pretrained(ticket, dst, empty)
    eg.save_pretrained(ticket, dst, empty, overwrite=True, metadata={"second": True})
    assert json.loads((empty / "elastigraph.json").read_text())["metadata"] == {"second": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "foreign"]


def test_nothing_half_written_on_failure(llama_up, tmp_path, monkeypatch):
    ticket, dst = llama_up
    first = eg.save_pretrained(ticket, dst, tmp_path / "out", metadata={"n": 1})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf_folder._masks, "save_mask", boom)  # after transformers wrote the weights
    with pytest.raises(OSError, match="No space"):
        eg.save_pretrained(ticket, dst, tmp_path / "new")
    with pytest.raises(OSError, match="No space"):
        eg.save_pretrained(ticket, dst, first, overwrite=True, metadata={"n": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or half-written folder
    assert json.loads((first / "elastigraph.json").read_text())["metadata"] == {"n": 1}  # the earlier output intact


def test_errors_non_hf_model_other_model_bad_metadata(llama_up, gpt2_up, tmp_path):
    ticket, dst = llama_up
    mlp_src, mlp_dst = eg.models.create("mlp", depth=2, width=8), eg.models.create("mlp", depth=3, width=8)
    mlp_ticket = eg.transfer(mlp_src, masks.full_mask(mlp_src), mlp_dst)
    with pytest.raises(ModelTypeError, match="not a Hugging Face transformers model"):
        eg.save_pretrained(mlp_ticket, mlp_dst, tmp_path / "mlp")
    with pytest.raises(SegmentMismatchError, match="planned for"):
        eg.save_pretrained(ticket, _llama(3), tmp_path / "l3")  # a 4-layer ticket on a 3-layer model
    with pytest.raises(SegmentMismatchError, match="planned for"):
        eg.save_pretrained(gpt2_up[0], dst, tmp_path / "g")
    with pytest.raises(eg.errors.ConfigError, match="JSON"):
        eg.save_pretrained(ticket, dst, tmp_path / "m", metadata={"x": object()})
    with pytest.raises(ModelTypeError, match="Ticket"):
        eg.save_pretrained({"mask": {}}, dst, tmp_path / "t")
    assert not any(tmp_path.iterdir())


def test_config_that_does_not_describe_the_model_is_refused(tmp_path):
    """A target whose layers were edited after it was built: config says 4 layers, the
    model has 3. from_pretrained would fill the 4th layer at random with a warning."""
    src, dst = _llama(2), _llama(4)
    del dst.model.layers[3]
    ticket = _ticket(src, dst)
    with pytest.raises(SegmentMismatchError, match="num_hidden_layers=4"):
        eg.save_pretrained(ticket, dst, tmp_path / "x")
    assert not any(tmp_path.iterdir())


SPEC = ("hf:llama?hidden_size=32&intermediate_size=64&num_attention_heads=2&num_key_value_heads=2&vocab_size=256"
        "&max_position_embeddings=64")


def test_cli_transfer_out_hf(capsys, tmp_path):
    from elastigraph.recipes.cache import save_tensors

    src_spec, dst_spec = f"{SPEC}&num_hidden_layers=2", f"{SPEC}&num_hidden_layers=4"
    src_mask = tmp_path / "l2.safetensors"
    assert cli.main(["prune", src_spec, "-m", "magnitude", "-s", "0.5", "--out", str(src_mask)]) == 0
    src = cli._model(src_spec, 3, 10, seed=7)  # its "trained" weights: another init than the CLI's seed 0
    w = tmp_path / "l2.weights.safetensors"
    save_tensors(w, src.state_dict())
    folder = tmp_path / "hf4"
    capsys.readouterr()
    args = ["transfer", "--src", src_spec, "--dst", dst_spec, "--mask", str(src_mask), "--out-hf", str(folder)]
    assert cli.main([*args, "--src-weights", str(w), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files"] == {"hf_folder": str(folder)}
    model, mask = eg.load_pretrained(folder)
    assert model.config.num_hidden_layers == 4
    sm = masks.load_mask(src_mask)
    sw = src.state_dict()
    for dst_layer, src_layer in ((0, 0), (1, 1), (3, 1)):  # append: 0,1,1,1
        name = f"model.layers.{dst_layer}.mlp.up_proj.weight"
        src_name = f"model.layers.{src_layer}.mlp.up_proj.weight"
        assert torch.equal(mask[name], sm[src_name])
        assert torch.equal(model.state_dict()[name], sw[src_name] * sm[src_name])
    meta = json.loads((folder / "elastigraph.json").read_text())["metadata"]
    assert meta["source_weights"] == str(w) and meta["source"] == src_spec

    # an existing folder: refused before any work, replaced with --overwrite; without
    # --src-weights the weights are those of the source model as built (seed 0)
    assert cli.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite", "--out", str(tmp_path / "l4.safetensors")]) == 0
    capsys.readouterr()
    model, _ = eg.load_pretrained(folder)
    built = cli._model(src_spec, 3, 10, seed=0).state_dict()
    name = "model.layers.2.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[name], built["model.layers.1.self_attn.q_proj.weight"] * mask[name])
    assert (tmp_path / "l4.safetensors").is_file() and (tmp_path / "l4.plan.json").is_file()


def test_cli_transfer_out_hf_errors(capsys, tmp_path):
    src_mask = tmp_path / "m.safetensors"
    assert cli.main(["prune", "mlp?depth=2&width=8", "-m", "random", "-s", "0.5", "--out", str(src_mask)]) == 0
    capsys.readouterr()
    base = ["transfer", "--src", "mlp?depth=2&width=8", "--dst", "mlp?depth=3&width=8", "--mask", str(src_mask)]
    assert cli.main([*base, "--out-hf", str(tmp_path / "hf")]) == 2
    assert "not a Hugging Face transformers model" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert cli.main([*base, "--out-hf", str(tmp_path / "f")]) == 2
    assert "existing file" in capsys.readouterr().err
    assert cli.main(base) == 2  # neither --out nor --out-hf
    assert "--out-hf" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "m.safetensors"]
