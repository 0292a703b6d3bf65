"""Language modelling as a task (issue 18): the byte corpus, bits per byte, training a
Hugging Face causal LM under a mask, the recipe path with healing, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from elastigraph import masks
from elastigraph.errors import ConfigError, DatasetError, RecipeError
from elastigraph.models import create
from elastigraph.stats import paired_test
from elastigraph.train import TrainConfig, train
from elastigraph.train.data import load_dataset
from elastigraph.train.tasks import LanguageModelling, get_task
from elastigraph.train.text import build_corpus, lm_model_problem

LLAMA = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
             max_position_embeddings=32)


def _write(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _corpus_folder(tmp_path, salt: str = ""):
    # enough files that every split (chosen by the hash of the file name) gets some
    return _write(tmp_path / f"corpus{salt}", {f"f{i:02d}.txt": (f"line {i} {salt}\n" * 40) for i in range(40)})


def test_pystdlib_corpus_is_split_by_file_deterministically():
    a, b = build_corpus("pystdlib"), build_corpus("pystdlib")
    assert a.sha256 == b.sha256 and a.splits == b.splits
    files = [set(a.files[s]) for s in ("train", "val", "test")]
    assert not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    sizes = a.summary()
    assert all(sizes[s]["files"] >= 1 and sizes[s]["bytes"] > 10_000 for s in sizes)
    assert sizes["train"]["bytes"] > 4 * sizes["val"]["bytes"]


def test_windows_hold_next_byte_targets():
    ds = load_dataset("pystdlib?seq_len=32", split="val", limit=50)
    assert ds.x.shape == ds.y.shape == (50, 32) and ds.x.dtype == torch.uint8
    full = load_dataset("pystdlib?seq_len=32", split="val")
    assert torch.equal(full.x[0, 1:], full.y[0, :-1])  # y is x shifted by one byte
    assert torch.equal(full.y[0, -1:], full.x[1, :1])  # ... across the window boundary too
    assert ds.spec.sha256 == build_corpus("pystdlib").sha256 and get_task(ds.spec.task).name == "causal_lm"


def test_user_text_folder_and_single_file(tmp_path):
    folder = _corpus_folder(tmp_path)
    c = build_corpus(f"text:{folder}")
    assert sum(len(v) for v in c.files.values()) == 40
    one = _write(tmp_path / "one", {"book.txt": "abcdefghij" * 100})
    c1 = build_corpus(f"text:{one / 'book.txt'}")
    assert [len(c1.splits[s]) for s in ("train", "val", "test")] == [900, 50, 50]
    changed = _corpus_folder(tmp_path, salt="x")
    assert build_corpus(f"text:{changed}").sha256 != c.sha256


@pytest.mark.parametrize("name, match", [
    ("text:/no/such/place", "does not exist"),
    ("text:", "needs a path"),
    ("pystdlib?seq_len=abc", "not an integer"),
    ("pystdlib?window=3", "unknown option"),
])
def test_bad_corpus_names_are_one_line_errors(name, match):
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(name)
    assert "\n" not in str(e.value)


def test_empty_corpus_and_empty_split(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no"):
        load_dataset(f"text:{empty}")
    few = _write(tmp_path / "few", {"a.txt": "hello world\n", "b.txt": "more text\n"})
    with pytest.raises(DatasetError, match="split is empty"):
        load_dataset(f"text:{few}")
    with pytest.raises(DatasetError, match="fewer than one window"):
        load_dataset(f"text:{_write(tmp_path / 'tiny', {'t.txt': 'x' * 40})}?seq_len=64", split="val")


def test_bits_per_byte_of_uniform_logits_is_eight():
    task = LanguageModelling()
    logits = torch.zeros(3, 5, 256)
    y = torch.randint(0, 256, (3, 5))
    m = task.finish(dict(zip(task.sums, task.eval_sums(logits, y).tolist())))
    assert m["bits_per_byte"] == pytest.approx(8.0) and m["loss"] == pytest.approx(math.log(256))
    assert not task.primary.higher_is_better


def test_lower_is_better_flips_the_paired_verdict():
    a, b = [1.0, 1.1, 1.2, 1.05], [1.5, 1.6, 1.55, 1.7]  # a has lower bits per byte
    assert paired_test(a, b).verdict == "b better"
    assert paired_test(a, b, higher_is_better=False).verdict == "a better"


def test_masked_llama_trains_on_bytes_and_keeps_zeros():
    torch.manual_seed(0)
    model = create("hf:llama", num_hidden_layers=2, **LLAMA)
    tr = load_dataset("pystdlib?seq_len=32", split="train", limit=256)
    te = load_dataset("pystdlib?seq_len=32", split="val", limit=32)
    from elastigraph import prune

    mask = prune.random(model, 0.5, seed=0)
    cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, optimizer="adamw", weight_decay=0.0, task="causal_lm")
    res = train(model, tr, te, cfg, mask=mask)
    assert set(res.metrics) == {"bits_per_byte", "loss"} and 0 < res.metrics["bits_per_byte"] < 8.5
    assert res.history[-1]["test_bpb"] == res.metrics["bits_per_byte"] and math.isnan(res.test_acc)
    for name, keep in mask.items():
        assert (res.final_state[name][~keep] == 0).all(), name
    with pytest.raises(ConfigError, match="task='causal_lm'"):
        train(model, tr, te, TrainConfig(steps=1))  # the data's task, named


def test_model_data_pairing_is_checked():
    spec = load_dataset("pystdlib?seq_len=64", split="val", limit=1).spec
    small_vocab = create("hf:llama", num_hidden_layers=1, **{**LLAMA, "vocab_size": 100})
    assert "vocabulary of 100" in lm_model_problem(small_vocab, spec)
    short = create("hf:llama", num_hidden_layers=1, **LLAMA)  # 32 positions
    assert "at most 32 positions" in lm_model_problem(short, spec)
    assert "takes no token ids" in lm_model_problem(create("mlp", in_chans=1, num_classes=10), spec)
    assert lm_model_problem(create("hf:gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=64), spec) is None


def _lm_recipe(dataset: str, **extra):
    model = "hf:llama?num_hidden_layers={}&hidden_size=32&intermediate_size=64&num_attention_heads=2&" \
            "num_key_value_heads=2&vocab_size=256&max_position_embeddings=32"
    return {"name": "lm_test", "dataset": {"name": dataset, "train_limit": 64, "test_limit": 8},
            "source": model.format(2), "targets": [{"model": model.format(3), "label": "L3"}],
            "prune": {"rounds": 1, "rewind_step": 1, "include_last": False},
            "train": {"steps": 3, "batch_size": 8, "lr": 0.003, "optimizer": "adamw", "augment": False},
            "baselines": ["imp", "random", "snip", "dense"], "heal": {"steps": 2}, **extra}


def test_recipe_runs_heals_and_reports_bits_per_byte(tmp_path):
    from elastigraph.recipes import load_recipe, run_recipe
    from elastigraph.report import load_results

    folder = _corpus_folder(tmp_path)
    recipe = load_recipe(_lm_recipe(f"text:{folder}?seq_len=16"))
    run_recipe(recipe, tmp_path / "run", workers=1)
    res = load_results(tmp_path / "run")
    assert res["task"]["name"] == "causal_lm" and res["task"]["metrics"][0]["key"] == "bpb"
    methods = {r["method"] for r in res["records"]}
    assert {"dense", "imp", "transfer", "random", "snip", "heal"} <= methods
    heal = next(r for r in res["records"] if r["method"] == "heal")
    assert heal["sparsity_after"] >= heal["sparsity_before"] > 0 and "bpb" in heal["before"]
    assert all("test_bpb" in r and "test_acc" not in r for r in res["records"])
    summary = (tmp_path / "run" / "summary.csv").read_text().splitlines()[0]
    assert "test_bpb_mean" in summary
    header = (tmp_path / "run" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"test_bpb", "before_bpb", "sparsity_before", "sparsity_after"} <= set(header)
    from elastigraph.report import heal_summary, metric_of

    (h,) = heal_summary(res["records"], metric_of(res))
    assert h["gain"] == pytest.approx(heal["before"]["bpb"] - heal["test_bpb"]) and h["zeros_after"] >= h["zeros_before"]
    # the corpus's content is in every step key: one changed file, no step reused
    ids = {r["step"] for r in res["records"]}
    other = _corpus_folder(tmp_path, salt="y")
    run_recipe(load_recipe(_lm_recipe(f"text:{other}?seq_len=16")), tmp_path / "run2", cache=tmp_path / "run" / "steps",
               workers=1)
    ids2 = {r["step"] for r in json.loads((tmp_path / "run2" / "results.json").read_text())["records"]}
    assert not ids & ids2


def test_recipe_refuses_what_does_not_apply_to_language_models(tmp_path):
    from elastigraph.recipes import load_recipe

    folder = _corpus_folder(tmp_path)
    with pytest.raises(RecipeError) as e:
        load_recipe({**_lm_recipe("", baselines=["synflow"]),
                     "dataset": {"name": f"text:{folder}?seq_len=64", "val_fraction": 0.1}})
    msg = str(e.value)
    assert "synflow" in msg and "val_fraction" in msg and "at most 32 positions" in msg


def test_gpt2_trains_prunes_and_stretches_through_the_runner(tmp_path):
    """GPT-2 keeps its attention and MLP weights in transformers' Conv1D: they are pruned
    (IMP), transferred and retrained under the mask like Llama's nn.Linear ones."""
    from elastigraph.recipes import load_recipe, run_recipe

    model = "hf:gpt2?n_layer={}&n_embd=32&n_head=2&vocab_size=256&n_positions=32"
    data = {**_lm_recipe(f"text:{_corpus_folder(tmp_path)}?seq_len=16"), "name": "gpt2_test",
            "source": model.format(2), "targets": [{"model": model.format(3), "label": "G3"}],
            "baselines": ["imp", "random"]}
    run_recipe(load_recipe(data), tmp_path / "run", workers=1)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {(r["role"], r["method"]): r for r in res["records"]}
    assert rows[("source", "imp")]["sparsity"] == pytest.approx(0.2, abs=1e-3)
    assert {("target", m) for m in ("transfer", "imp", "random", "heal")} <= set(rows)
    from elastigraph.masks import load_mask

    step = tmp_path / "run" / "steps" / rows[("target", "transfer")]["step"]
    from elastigraph.recipes.cache import load_tensors

    final = load_tensors(step / "final.safetensors")
    mask_dir = next(p for p in (tmp_path / "run" / "steps").iterdir() if p.name.startswith("transfer-"))
    mask = load_mask(mask_dir / "mask.safetensors")
    assert any(".attn.c_attn." in k for k in mask) and "transformer.h.2.mlp.c_fc.weight" in mask
    for k, keep in mask.items():
        assert (final[k][~keep] == 0).all(), k
