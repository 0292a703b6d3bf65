"""Hugging Face transformers models (issue 10 section 3): torch.fx cannot trace them, the
graph is captured with torch.export; transfer stretches and squeezes them with every
target block holding the source block its plan names. Tiny configs, no weights."""

import re

import pytest
import torch

import elastigraph as eg
from elastigraph.errors import ModelNameError

T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()


def _gpt2(n):
    return T.GPT2LMHeadModel(T.GPT2Config(n_layer=n, n_embd=32, n_head=2, vocab_size=100, n_positions=64))


def _llama(n):
    return T.LlamaForCausalLM(T.LlamaConfig(num_hidden_layers=n, hidden_size=32, intermediate_size=64,
                                            num_attention_heads=2, num_key_value_heads=2, vocab_size=100,
                                            max_position_embeddings=64))


def _bert(n):
    return T.BertForSequenceClassification(T.BertConfig(num_hidden_layers=n, hidden_size=32, intermediate_size=64,
                                                        num_attention_heads=2, vocab_size=100,
                                                        max_position_embeddings=64))


BUILD = {"gpt2": (_gpt2, "transformer.h"), "llama": (_llama, "model.layers"), "bert": (_bert, "bert.encoder.layer")}


def _all_matrices(model):
    """A random mask over every 2-D weight (GPT-2's Conv1D layers are not nn.Linear)."""
    return {n: torch.rand(p.shape) > 0.5 for n, p in model.named_parameters() if p.dim() == 2}


def _check_blocks(ticket, src, dst, stage_module):
    """Every target tensor of block j of the stage is the source's tensor of block
    sources[j] at the same place; every other tensor is the source's of the same name."""
    sources = ticket.plan.stages[0].sources
    by_ptr = {}
    for name, p in src.state_dict().items():
        by_ptr.setdefault((p.data_ptr(), tuple(p.shape)), name)
    pat = re.compile(re.escape(stage_module) + r"\.(\d+)\.(.*)")
    checked = 0
    for key, value in ticket.weights.items():
        src_key = by_ptr[(value.data_ptr(), tuple(value.shape))]
        m = pat.fullmatch(key)
        if m:
            assert src_key == f"{stage_module}.{sources[int(m.group(1))]}.{m.group(2)}", key
            checked += 1
        else:
            assert eg.masks.canonical_names(src).get(src_key, src_key) == eg.masks.canonical_names(dst).get(key, key)
    for key, mk in ticket.mask.items():
        m = pat.fullmatch(key)
        if m:
            src_key = f"{stage_module}.{sources[int(m.group(1))]}.{m.group(2)}"
            assert torch.equal(mk, ticket.src_mask[src_key]), key
    assert checked and set(ticket.weights) == set(dst.state_dict())  # tied aliases too: strict loading works


@pytest.mark.parametrize("family", sorted(BUILD))
def test_stretch_and_squeeze_hf_model_built_from_config(family):
    build, stage = BUILD[family]
    torch.manual_seed(0)
    small, deep = build(2), build(4)
    g = eg.analyze(small)
    assert g.traced.capture == "torch.export" and g.to_dict()["capture"] == "torch.export"
    assert [s.label for s in g.stages] == [stage]
    up = eg.transfer(small, _all_matrices(small), deep)
    assert up.plan.stages[0].sources == [0, 1, 1, 1]  # SOLAR-style: the later layer duplicated
    _check_blocks(up, small, deep, stage)
    down = eg.transfer(deep, _all_matrices(deep), small)
    assert down.plan.stages[0].sources == [0, 1]
    _check_blocks(down, deep, small, stage)
    down.apply(small)
    assert small(torch.zeros(1, 5, dtype=torch.long))[0].shape[0] == 1
    for p in deep.parameters():  # analysis swaps nothing into the user's models
        assert p.device.type == "cpu"


def test_hf_interpolate_strategy_and_tied_head():
    src, dst = _gpt2(2), _gpt2(5)
    assert "transformer.wte.weight" in eg.masks.full_mask(src)  # the LM head, named once by its tie
    t = eg.transfer(src, _all_matrices(src), dst, strategy="interpolate")
    assert t.plan.stages[0].sources == [0, 1, 1, 1, 1]
    assert "lm_head.weight" not in t.mask
    _check_blocks(t, src, dst, "transformer.h")


def test_hf_model_strings():
    kw = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, vocab_size=100)
    m = eg.models.create("hf:llama", num_hidden_layers=3, **kw)
    assert type(m).__name__ == "LlamaForCausalLM" and len(m.model.layers) == 3
    b = eg.models.create("hf:bert/sequence-classification", num_classes=7, num_hidden_layers=2, hidden_size=32,
                         intermediate_size=64, num_attention_heads=2, vocab_size=100)
    assert b.config.num_labels == 7
    with pytest.raises(ModelNameError, match="num_hidden_layers"):
        eg.models.create("hf:llama", depth=3)  # transformers would keep an unknown field silently
    with pytest.raises(ModelNameError, match="no model type"):
        eg.models.create("hf:no_such_model_type")
    with pytest.raises(ModelNameError, match="unknown task"):
        eg.models.create("hf:llama/translation")


def test_hf_cli_route(capsys, tmp_path):
    """``hf:`` strings through the CLI: prune the 2-layer Llama, stretch its ticket to 4."""
    import json

    from elastigraph import cli

    spec = "hf:llama?hidden_size=32&intermediate_size=64&num_attention_heads=2&num_key_value_heads=2&vocab_size=100"
    assert cli.main(["inspect", f"{spec}&num_hidden_layers=2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["analysis"]["capture"] == "torch.export" and info["analysis"]["stages"][0]["n_blocks"] == 2
    src_mask, out = tmp_path / "l2.safetensors", tmp_path / "l4.safetensors"
    assert cli.main(["prune", f"{spec}&num_hidden_layers=2", "-m", "magnitude", "-s", "0.8", "--out", str(src_mask)]) == 0
    assert cli.main(["transfer", "--src", f"{spec}&num_hidden_layers=2", "--dst", f"{spec}&num_hidden_layers=4",
                     "--mask", str(src_mask), "--out", str(out)]) == 0
    capsys.readouterr()
    plan = json.loads((tmp_path / "l4.plan.json").read_text())
    assert plan["stages"][0]["sources"] == [0, 1, 1, 1]
    assert len(eg.masks.load_mask(out)) == 1 + 4 * 7  # lm_head + 7 projections per layer


def test_albert_shared_layer_refusal_names_the_real_cause():
    """ALBERT reuses one layer across its depth: the models have the same tensors."""
    from elastigraph.errors import SegmentMismatchError

    def albert(n):
        return T.AlbertModel(T.AlbertConfig(num_hidden_layers=n, hidden_size=32, embedding_size=16,
                                            intermediate_size=64, num_attention_heads=2, vocab_size=100,
                                            max_position_embeddings=64))

    src, dst = albert(2), albert(4)
    with pytest.raises(SegmentMismatchError, match=r"have the same \d+ tensors .*\(one layer reused across the "
                                                   r"depth, as in ALBERT\)"):
        eg.transfer(src, _all_matrices(src), dst)
