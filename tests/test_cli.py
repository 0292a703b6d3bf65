"""The ``elastigraph`` CLI (in-process through ``cli.main``) and the report module."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elastigraph import cli, masks
from elastigraph.report import load_results, summarize, write_report

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["inspect", "transfer", "transfer-folder", "prune", "train", "run", "report"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_everywhere(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    for c in COMMANDS:
        assert c in out
        rc, out_c, _ = run_cli(capsys, c, "--help")
        assert rc == 0 and "Usage" in out_c


def test_python_dash_m_works():
    p = subprocess.run([sys.executable, "-m", "elastigraph", "report", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "RUN_DIR" in p.stdout.upper()


def test_user_errors_are_one_message_without_traceback(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "run", tmp_path / "missing.yaml")
    assert rc == 2
    assert err.strip() == f"error: recipe file '{tmp_path / 'missing.yaml'}' does not exist"
    rc, _, err = run_cli(capsys, "prune", "cifar_resnet_21", "--method", "random", "--sparsity", "0.5", "--out", tmp_path / "m.st")
    assert rc == 2 and "CIFAR ResNet depth must be 6n+2" in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "prune", "cifar_resnet_20", "--method", "nope", "--sparsity", "0.5", "--out", tmp_path / "m.st")
    assert rc == 2 and "unknown pruning method 'nope'" in err
    rc, _, err = run_cli(capsys, "report", tmp_path)
    assert rc == 2 and "has not finished" in err
    rc, _, err = run_cli(capsys, "prune", "cifar_resnet_20", "--sparsity", "0.5", "--out", tmp_path / "m.st")
    assert rc == 2 and "--method" in err  # click usage error, not a traceback


def test_bad_recipe_fails_before_any_work(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ndataset: {name: synthetic}\nsource: cifar_resnet_20\n"
        "prune: {fraction: 2}\ntargets: [{model: cifar_resnet_33}]\nbaselines: [snip, magic]\n"
    )
    out_dir = tmp_path / "run"
    rc, _, err = run_cli(capsys, "run", bad, "--out", out_dir)
    assert rc == 2
    assert "3 invalid field(s)" in err
    for path in ("prune.fraction:", "targets[0].model:", "baselines[1]:"):
        assert path in err
    assert not out_dir.exists()


def test_prune_writes_exact_sparsity(capsys, tmp_path):
    out = tmp_path / "m.safetensors"
    rc, stdout, _ = run_cli(capsys, "prune", "cifar_resnet_20", "-m", "random", "-s", "0.75", "--out", out,
                            "--in-chans", "1", "--json")
    assert rc == 0
    m = masks.load_mask(out)
    model = cli._model("cifar_resnet_20", 1, 10)
    assert list(m) == masks.prunable_parameters(model)
    total = sum(t.numel() for t in m.values())
    assert sum(int(t.sum()) for t in m.values()) == round(total * 0.25)
    assert json.loads(stdout)["file"] == str(out)


def test_prune_magnitude_of_given_weights(capsys, tmp_path):
    from elastigraph.recipes.cache import save_tensors

    model = cli._model("cifar_resnet_20", 3, 10, seed=1)
    w = tmp_path / "w.safetensors"
    save_tensors(w, model.state_dict())
    out = tmp_path / "m.safetensors"
    rc, _, _ = run_cli(capsys, "prune", "cifar_resnet_20", "-m", "magnitude", "-s", "0.5", "--weights", w, "--out", out)
    assert rc == 0
    m = masks.load_mask(out)
    # global magnitude: every kept weight is at least as large as every pruned one
    kept = torch.cat([model.get_parameter(k).detach().abs()[v].flatten() for k, v in m.items()])
    pruned = torch.cat([model.get_parameter(k).detach().abs()[~v].flatten() for k, v in m.items()])
    assert kept.min() >= pruned.max()


def test_train_writes_results_json(capsys, tmp_path):
    out = tmp_path / "r.json"
    wfile = tmp_path / "w.safetensors"
    rc, _, _ = run_cli(capsys, "train", "cifar_resnet_20", "--dataset", "synthetic", "--train-limit", "64",
                       "--test-limit", "32", "--steps", "2", "--batch-size", "16", "--device", "cpu",
                       "--out", out, "--save-weights", wfile)
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["steps"] == 2 and 0.0 <= r["test_acc"] <= 1.0 and r["sparsity"] == 0.0
    assert r["config"]["batch_size"] == 16
    from elastigraph.recipes.cache import load_tensors

    assert set(load_tensors(wfile)) == set(cli._model("cifar_resnet_20", 1, 10).state_dict())


def _fake_results(tmp_path: Path) -> Path:
    recs = []
    for seed, (t1, t2, r1) in enumerate([(0.80, 0.70, 0.60), (0.90, 0.72, 0.50)]):
        recs += [
            {"seed": seed, "role": "source", "model": "m20", "target": "m20", "level": 0, "method": "dense", "sparsity": 0.0, "test_acc": 0.85, "test_loss": 0.4, "steps": 10, "step": "dense-a"},
            {"seed": seed, "role": "source", "model": "m20", "target": "m20", "level": 1, "method": "imp", "sparsity": 0.2, "test_acc": 0.84, "test_loss": 0.4, "steps": 10, "step": "imp-a"},
            {"seed": seed, "role": "target", "model": "m32", "target": "m32", "level": 1, "method": "transfer", "sparsity": 0.19 + 0.01 * seed, "test_acc": t1, "test_loss": 0.4, "steps": 10, "step": "retrain-a"},
            {"seed": seed, "role": "target", "model": "m32", "target": "m32", "level": 2, "method": "transfer", "sparsity": 0.36, "test_acc": t2, "test_loss": 0.4, "steps": 10, "step": "retrain-b"},
            {"seed": seed, "role": "target", "model": "m32", "target": "m32", "level": 1, "method": "random", "sparsity": 0.2, "test_acc": r1, "test_loss": 0.4, "steps": 10, "step": "retrain-c"},
        ]
    layers = [{"seed": 0, "target": "m32", "level": 2, "source": {"a": 1.0, "b": 0.5}, "transfer": {"a": 1.0, "b": 0.5, "c": 0.5}}]
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"recipe": "fake", "seeds": [0, 1], "records": recs, "layer_density": layers}))
    return d


def test_summarize_mean_and_sample_std(tmp_path):
    d = _fake_results(tmp_path)
    s = {(r["target"], r["method"], r["level"]): r for r in summarize(load_results(d)["records"])}
    t1 = s[("m32", "transfer", 1)]
    assert t1["n"] == 2
    assert t1["test_acc_mean"] == pytest.approx(0.85)
    assert t1["test_acc_std"] == pytest.approx(math.sqrt(2 * 0.05**2))  # sample std of 0.8, 0.9
    assert t1["sparsity"] == pytest.approx(0.195)
    assert s[("m32", "random", 1)]["test_acc_mean"] == pytest.approx(0.55)
    assert s[("m20", "dense", 0)]["test_acc_std"] == 0.0
    first = summarize(load_results(d)["records"])[0]
    assert first["role"] == "source"  # source rows first


def test_report_command_writes_csv_and_pngs(capsys, tmp_path):
    d = _fake_results(tmp_path)
    rc, out, _ = run_cli(capsys, "report", d)
    assert rc == 0 and "transfer" in out
    rows = list(csv.DictReader((d / "results.csv").open()))
    assert len(rows) == 10 and rows[0]["method"] == "dense"
    summary = list(csv.DictReader((d / "summary.csv").open()))
    assert [(r["target"], r["method"], r["level"]) for r in summary][:2] == [("m20", "dense", "0"), ("m20", "imp", "1")]
    for png in ("accuracy.png", "layer_density.png"):
        data = (d / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    rc, out, _ = run_cli(capsys, "report", d, "--json")
    assert rc == 0 and len(json.loads(out)["summary"]) == 5


def test_write_report_paths(tmp_path):
    d = _fake_results(tmp_path)
    paths = write_report(d)
    assert set(paths) == {"results_csv", "summary_csv", "comparisons_csv", "accuracy_png", "layer_density_png"}
    assert all(p.is_file() for p in paths.values())


def test_transfer_command_stretches_a_mask(capsys, tmp_path):
    pytest.importorskip("elastigraph.transfer")
    src_mask = tmp_path / "src.safetensors"
    assert run_cli(capsys, "prune", "cifar_resnet_20", "-m", "random", "-s", "0.5", "--out", src_mask, "--in-chans", "1")[0] == 0
    from elastigraph.recipes.cache import save_tensors

    src = cli._model("cifar_resnet_20", 1, 10, seed=3)
    w = tmp_path / "src_w.safetensors"
    save_tensors(w, src.state_dict())
    out = tmp_path / "t32.safetensors"
    rc, stdout, err = run_cli(capsys, "transfer", "--src", "cifar_resnet_20", "--mask", src_mask, "--dst", "cifar_resnet_32",
                              "--src-weights", w, "--out", out, "--in-chans", "1", "--json")
    assert rc == 0, err
    info = json.loads(stdout)
    assert set(info["files"]) == {"mask", "plan", "weights"}
    m = masks.load_mask(out)
    dst = cli._model("cifar_resnet_32", 1, 10)
    assert set(m) == set(masks.prunable_parameters(dst))
    sm = masks.load_mask(src_mask)
    # stem, head and block 0 carry over unchanged; the stretched stage 1 reuses source blocks
    assert torch.equal(m["conv.weight"], sm["conv.weight"]) and torch.equal(m["fc.weight"], sm["fc.weight"])
    assert torch.equal(m["layer1.0.conv1.weight"], sm["layer1.0.conv1.weight"])
    from elastigraph.recipes.cache import load_tensors

    tw = load_tensors(tmp_path / "t32.weights.safetensors")
    assert torch.equal(tw["conv.weight"], src.state_dict()["conv.weight"])
    assert json.loads((tmp_path / "t32.plan.json").read_text())


def test_inspect_json(capsys):
    pytest.importorskip("elastigraph.graph")
    rc, out, err = run_cli(capsys, "inspect", "cifar_resnet_20", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["parameters"] == sum(p.numel() for p in cli._model("cifar_resnet_20", 3, 10).parameters())
    assert info["analysis"]


LLAMA_SPEC = ("hf:llama?hidden_size=32&intermediate_size=64&num_attention_heads=2&num_key_value_heads=2"
              "&vocab_size=256&num_hidden_layers=2")


def test_prune_n_m_and_wanda_from_the_command_line(capsys, tmp_path):
    pytest.importorskip("transformers")
    from elastigraph.prune import _core

    out = tmp_path / "nm.safetensors"
    rc, stdout, err = run_cli(capsys, "prune", LLAMA_SPEC, "-m", "magnitude", "--n-m", "2:4", "--out", out)
    assert rc == 0, err
    m = masks.load_mask(out)
    assert m and all(_core.is_n_m(v, 2, 4) for v in m.values()) and masks.sparsity(m) == 0.5
    assert masks.mask_metadata(out)["metadata"]["n_m"] == "2:4"
    out_w = tmp_path / "w.safetensors"
    rc, stdout, err = run_cli(capsys, "prune", LLAMA_SPEC, "-m", "wanda", "-s", "0.5", "--dataset",
                              "pystdlib?seq_len=32", "--batches", "2", "--batch-size", "4", "--out", out_w, "--json")
    assert rc == 0, err
    w = masks.load_mask(out_w)  # per output row: half of every row pruned
    assert all((v.sum(1) == v.shape[1] // 2).all() for v in w.values())
    for bad, msg in [(["-m", "random", "--n-m", "2:4"], "magnitude and wanda"),
                     (["-m", "magnitude", "--n-m", "2:4", "-s", "0.5"], "exactly one"),
                     (["-m", "magnitude", "--n-m", "4:2"], "0 < N < M"),
                     (["-m", "wanda", "--n-m", "2:4"], "--dataset")]:
        rc, _, err = run_cli(capsys, "prune", LLAMA_SPEC, *bad, "--out", tmp_path / "x.safetensors")
        assert rc == 2 and msg in err, (bad, err)


def test_transfer_folder_command_with_a_wanda_2_4_mask(capsys, tmp_path):
    """The folder path from the command line: a checkpoint folder pruned with Wanda 2:4
    (calibrated on bytes), its mask streamed into a deeper folder, loaded by
    from_pretrained with every copied layer 2:4; and a global magnitude run with --json."""
    transformers = pytest.importorskip("transformers")
    from elastigraph import prune as eg_prune
    from elastigraph.models import create
    from elastigraph.prune import _core

    torch.manual_seed(0)
    create(LLAMA_SPEC.split("?")[0], **{k: int(v) for k, v in (kv.split("=") for kv in LLAMA_SPEC.split("?")[1].split("&"))}) \
        .to(torch.bfloat16).save_pretrained(str(tmp_path / "src"))
    mask = tmp_path / "wanda.safetensors"
    rc, _, err = run_cli(capsys, "prune", tmp_path / "src", "-m", "wanda", "--n-m", "2:4", "--dataset",
                         "pystdlib?seq_len=32", "--batches", "1", "--batch-size", "4", "--out", mask)
    assert rc == 0, err
    rc, stdout, err = run_cli(capsys, "transfer-folder", tmp_path / "src", tmp_path / "dst", "--layers", "3",
                              "--mask", mask)
    assert rc == 0, err
    assert "source sparsity 50.00% -> target sparsity 50.00%" in stdout
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "dst"))
    assert model.config.num_hidden_layers == 3
    got = masks.load_mask(tmp_path / "dst" / "mask.safetensors")
    src_mask = masks.load_mask(mask)
    assert torch.equal(got["model.layers.2.mlp.up_proj.weight"], src_mask["model.layers.1.mlp.up_proj.weight"]) or \
        torch.equal(got["model.layers.2.mlp.up_proj.weight"], src_mask["model.layers.0.mlp.up_proj.weight"])
    assert all(_core.is_n_m(v, 2, 4) for v in got.values())
    rc, stdout, err = run_cli(capsys, "prune", tmp_path / "src", "-m", "magnitude", "--n-m", "2:4", "--out",
                              tmp_path / "mag24.safetensors")  # streamed from the shards
    assert rc == 0 and "streamed from" in stdout, err
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "src"))
    want = eg_prune.magnitude(loaded, n_m="2:4")
    got24 = masks.load_mask(tmp_path / "mag24.safetensors")
    assert got24.keys() == want.keys() and all(torch.equal(got24[k], want[k]) for k in want)
    rc, stdout, err = run_cli(capsys, "transfer-folder", tmp_path / "src", tmp_path / "dst", "--layers", "4",
                              "--sparsity", "0.5", "--json")
    assert rc == 2 and "not empty" in err  # an earlier output needs --overwrite
    rc, stdout, err = run_cli(capsys, "transfer-folder", tmp_path / "src", tmp_path / "dst", "--layers", "4",
                              "--sparsity", "0.5", "--json", "--overwrite")
    assert rc == 0, err
    info = json.loads(stdout)
    assert info["num_hidden_layers"] == 4 and info["sparsity"]["source"] == 0.5
    rc, _, err = run_cli(capsys, "transfer-folder", tmp_path / "src", tmp_path / "d2", "--layers", "4",
                         "--sparsity", "0.5", "--n-m", "2:4")
    assert rc == 2 and "one of mask, sparsity and n_m" in err
