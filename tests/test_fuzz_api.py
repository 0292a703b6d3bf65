"""Adversarial input to the Python API, table-driven (issue 9): every bad argument
raises a named :mod:`elastigraph.errors` exception before any work, and no input is
ever modified (pruned, hooked, compiled and half-precision models)."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

import elastigraph as eg
from elastigraph import errors, masks, models
from elastigraph.recipes import load_recipe, parse_model_spec, run_recipe
from elastigraph.recipes.schema import apply_set
from elastigraph.report import load_results
from elastigraph.train import TrainConfig, evaluate, load_dataset, train
from elastigraph.transfer import Plan, parse_strategy


@pytest.fixture(scope="module")
def m():
    return {
        "src": models.create("cifar_resnet_14"),
        "dst": models.create("cifar_resnet_20"),
        "ds": load_dataset("synthetic", limit=16),
    }


def _mask(model):
    return masks.full_mask(model)


# (id, thunk(m) -> anything, expected exception class, text the message must contain)
CASES = [
    # TrainConfig: one place for hyper-parameters
    *[(f"config-{k}={v!r}", (lambda k, v: lambda m: TrainConfig(**{k: v}))(k, v), errors.ConfigError, k)
      for k, v in [("lr", math.nan), ("lr", math.inf), ("lr", -1.0), ("momentum", math.nan), ("momentum", 1.5),
                   ("gamma", -1.0), ("gamma", 0.0), ("gamma", math.inf), ("weight_decay", math.nan),
                   ("epochs", math.inf), ("epochs", 0.0), ("steps", 0), ("steps", True), ("steps", 2.5),
                   ("batch_size", 0), ("batch_size", "8"), ("label_smoothing", 1.0), ("warmup_steps", -1),
                   ("eval_every", 0), ("seed", 2**63), ("seed", -1), ("seed", 1.5), ("device", "meta"),
                   ("device", "nope"), ("device", 3), ("optimizer", "adam"), ("schedule", "linear"),
                   ("milestones", "0.5"), ("milestones", (0.75, 0.5)), ("milestones", (math.nan,)),
                   ("nesterov", "yes"), ("amp", 1)]],
    # train / evaluate arguments
    ("train-model-str", lambda m: train("net", m["ds"], None, TrainConfig(steps=1)), errors.ModelTypeError, "nn.Module"),
    ("train-cfg-dict", lambda m: train(m["src"], m["ds"], None, {"steps": 1}), errors.ConfigError, "TrainConfig"),
    ("train-data-list", lambda m: train(m["src"], [1, 2], None, TrainConfig(steps=1)), errors.DatasetError, "train_set"),
    ("train-test-str", lambda m: train(m["src"], m["ds"], "x", TrainConfig(steps=1)), errors.DatasetError, "test_set"),
    ("train-start-str", lambda m: train(m["src"], m["ds"], None, TrainConfig(steps=1), start_step="0"),
     errors.ConfigError, "start_step"),
    ("train-start-beyond", lambda m: train(m["src"], m["ds"], None, TrainConfig(steps=1, device="cpu"), start_step=5),
     errors.ConfigError, "start_step"),
    ("train-meta-model", lambda m: train(models.create("cifar_resnet_14").to("meta"), m["ds"], None, TrainConfig(steps=1)),
     errors.ModelTypeError, "meta"),
    ("train-mask-wrong-key", lambda m: train(m["src"], m["ds"], None, TrainConfig(steps=1, device="cpu"),
                                             mask={"x": torch.ones(1)}), errors.MaskError, "'x'"),
    ("evaluate-str", lambda m: evaluate(m["src"], "data"), errors.DatasetError, "test_set"),
    ("evaluate-meta", lambda m: evaluate(m["src"], m["ds"], device="meta"), errors.ConfigError, "meta"),
    # datasets
    ("dataset-name-int", lambda m: load_dataset(123), errors.DatasetError, "dataset name"),
    ("dataset-limit-str", lambda m: load_dataset("synthetic", limit="5"), errors.DatasetError, "limit"),
    ("dataset-limit-zero", lambda m: load_dataset("synthetic", limit=0), errors.DatasetError, "limit"),
    ("dataset-split", lambda m: load_dataset("synthetic", split="dev"), errors.DatasetError, "split"),
    ("dataset-root-int", lambda m: load_dataset("cifar10", root=5), errors.DatasetError, "root"),
    # masks: types, devices, layouts, values, paths
    ("mask-meta", lambda m: masks.check_mask(m["src"], {k: v.to("meta") for k, v in _mask(m["src"]).items()}),
     errors.MaskTypeError, "meta tensor"),
    ("mask-sparse", lambda m: masks.check_mask(m["src"], {k: v.float().to_sparse() for k, v in _mask(m["src"]).items()}),
     errors.MaskTypeError, "layout"),
    ("mask-half-values", lambda m: masks.check_mask(m["src"], {"conv.weight": torch.full((16, 3, 3, 3), 0.5)}),
     errors.MaskError, "not binary"),
    ("mask-nan-values", lambda m: masks.check_mask(m["src"], {"conv.weight": torch.full((16, 3, 3, 3), math.nan)}),
     errors.MaskError, "not binary"),
    ("mask-complex", lambda m: masks.check_mask(m["src"], {"conv.weight": torch.ones(16, 3, 3, 3, dtype=torch.cfloat)}),
     errors.MaskError, "not binary"),
    ("mask-wrong-shape", lambda m: masks.check_mask(m["src"], {"conv.weight": torch.ones(3, dtype=torch.bool)}),
     errors.MaskError, "has shape"),
    ("mask-int-key", lambda m: masks.check_mask(m["src"], {0: torch.ones(1)}), errors.MaskTypeError, "key 0"),
    ("mask-not-dict", lambda m: masks.check_mask(m["src"], [1]), errors.MaskTypeError, "dict"),
    ("mask-list-value", lambda m: masks.check_mask(m["src"], {"conv.weight": [1]}), errors.MaskTypeError, "tensor"),
    ("mask-model-str", lambda m: masks.check_mask("net", {}), errors.ModelTypeError, "nn.Module"),
    ("load-mask-int-path", lambda m: masks.load_mask(123), errors.MaskTypeError, "file path"),
    ("read-mask-none", lambda m: masks.read_mask(None), errors.MaskTypeError, "file path"),
    ("save-mask-int-path", lambda m: masks.save_mask(_mask(m["src"]), 3), errors.MaskTypeError, "file path"),
    ("save-mask-bad-meta", lambda m: masks.save_mask(_mask(m["src"]), "/tmp/x.st", metadata={"a": math.nan}),
     errors.MaskTypeError, "JSON"),
    ("lth-mask-int-path", lambda m: masks.load_lth_mask(1.5), errors.MaskTypeError, "file path"),
    # models and model strings
    ("create-int", lambda m: models.create(123), errors.ModelNameError, "non-empty string"),
    ("create-in-chans-0", lambda m: models.create("cifar_resnet_14", in_chans=0), errors.ModelNameError, "in_chans"),
    ("create-width-negative", lambda m: models.create("cifar_resnet_14", width=-1), errors.ModelNameError, "cannot be built"),
    ("create-vit-heads", lambda m: models.create("timm:vit_tiny_patch16_224", embed_dim=7), errors.ModelNameError,
     "cannot be built"),
    ("spec-deep", lambda m: parse_model_spec("cifar_resnet_14?a=" + "[" * 5000), errors.ModelNameError, "nesting"),
    ("spec-reserved", lambda m: parse_model_spec("tv:resnet18?in_chans=1"), errors.ModelNameError, "in_chans"),
    ("spec-not-str", lambda m: parse_model_spec(None), errors.ModelNameError, "non-empty string"),
    # transfer: arguments, strategies, plans, example inputs
    ("transfer-src-str", lambda m: eg.transfer("a", None, m["dst"]), errors.ModelTypeError, "src_model"),
    ("transfer-example-str", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"], example_input="x"),
     errors.TraceError, "example_input"),
    ("transfer-example-negative", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"], example_input=(2, 3, -1, 5)),
     errors.TraceError, "positive"),
    ("transfer-example-bool", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"], example_input=(True, 3, 32, 32)),
     errors.TraceError, "positive"),
    ("transfer-no-mask-installed", lambda m: eg.transfer(m["src"], None, m["dst"]), errors.MaskError, "src_mask is None"),
    ("transfer-strategy-int", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"], strategy=3),
     errors.StrategyError, "strategy"),
    ("transfer-mapping-int", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"], mapping=3),
     errors.MappingError, "mapping"),
    ("analyze-example-float", lambda m: eg.analyze(m["src"], 1.5), errors.TraceError, "example_input"),
    ("analyze-not-module", lambda m: eg.analyze("net"), errors.ModelTypeError, "nn.Module"),
    *[(f"strategy-{s!r}", (lambda s: lambda m: parse_strategy(s))(s), errors.StrategyError, "strateg")
      for s in ["append+interpolate", "keep-first+even", "+", "append+", "+even", "a+b+c", "nope", "", " "]],
    *[(f"plan-{i}", (lambda t: lambda m: Plan.from_json(t))(t), errors.MappingError, "plan")
      for i, t in enumerate(['{"stages": 5}', "[1]", "{", '{"src":"a","dst":"b","strategy":"x","stages":[1]}',
                             '{"src":"a","dst":"b","strategy":"x","stages":[],"version":"1"}',
                             '{"src":"a","dst":"b","strategy":"x","stages":[{"index":0,"label":"l","block0":3,'
                             '"src_blocks":[],"dst_blocks":[],"sources":[]}]}'])],
    ("ticket-apply-deeper-model", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"]).apply(
        models.create("cifar_resnet_32")), errors.SegmentMismatchError, "does not cover"),
    ("ticket-apply-shallower-model", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"]).apply(
        models.create("cifar_resnet_14")), errors.SegmentMismatchError, "the model lacks"),
    ("ticket-apply-str", lambda m: eg.transfer(m["src"], _mask(m["src"]), m["dst"]).apply("net"),
     errors.ModelTypeError, "nn.Module"),
    # recipes
    ("recipe-int", lambda m: load_recipe(5), errors.RecipeError, "recipe file path"),
    ("recipe-overrides-str", lambda m: load_recipe({"name": "x"}, overrides="a=1"), errors.RecipeError, "list"),
    ("recipe-set-deep", lambda m: apply_set({}, "a=" + "{a: " * 500), errors.RecipeError, "nesting"),
    ("run-recipe-dict", lambda m: run_recipe({"name": "x"}, "/tmp/x"), errors.RecipeError, "Recipe"),
    ("results-missing-dir", lambda m: load_results("/nonexistent/run"), FileNotFoundError, "does not exist"),
    # pruning entry points (fair's module; sparsity checked there)
    ("prune-random-nan", lambda m: eg.prune.random(m["src"], math.nan), errors.ConfigError, "sparsity"),
    ("prune-magnitude-negative", lambda m: eg.prune.magnitude(m["src"], sparsity=-1), errors.ConfigError, "sparsity"),
    ("prune-snip-batches-str", lambda m: eg.prune.snip(m["src"], "abc", 0.5), errors.ConfigError, "(inputs, targets)"),
    ("prune-snip-targets-2d", lambda m: eg.prune.snip(m["src"], [(torch.zeros(2, 3, 32, 32), torch.zeros(2, 2))], 0.5),
     errors.ConfigError, "targets"),
    ("prune-snip-targets-negative", lambda m: eg.prune.snip(
        m["src"], [(torch.zeros(2, 3, 32, 32), torch.tensor([0, -3]))], 0.5), errors.ConfigError, ">= 0"),
    ("prune-grasp-no-batches", lambda m: eg.prune.grasp(m["src"], [], 0.5), errors.ConfigError, "no batches"),
    ("prune-synflow-shape", lambda m: eg.prune.synflow(m["src"], 0.5, input_shape=(3, -1, 5)), errors.ConfigError,
     "input_shape"),
    ("prune-synflow-iterations", lambda m: eg.prune.synflow(m["src"], 0.5, iterations=0), errors.ConfigError,
     "iterations"),
    # model/data pairing, checked once before any work, naming both sides (issue 21)
    *[(f"pairing-{fn}-{what}", (lambda fn, mk, bt: lambda m: _pair_call(fn, mk(), bt(m)))(fn, mk, bt),
       errors.PairingError, frag)
      for fn in ("snip", "grasp", "train", "evaluate", "fleet")
      for what, mk, bt, frag in [
          ("3ch-model-1ch-data", lambda: models.create("cifar_resnet_14"), lambda m: m["ds"], "in_chans=1"),
          ("2-classes-10-class-data", lambda: models.create("cifar_resnet_14", in_chans=1, num_classes=2),
           lambda m: m["ds"], "num_classes=10"),
          ("half-model-on-cpu", lambda: models.create("cifar_resnet_14", in_chans=1).half(), lambda m: m["ds"],
           "model.float()"),
      ]],
    ("pairing-snip-float-labels", lambda m: eg.prune.snip(models.create("cifar_resnet_14", in_chans=1),
                                                          [(torch.zeros(2, 1, 28, 28), torch.zeros(2))], 0.5),
     errors.PairingError, "float32"),
    ("pairing-snip-label-above-classes", lambda m: eg.prune.snip(
        models.create("cifar_resnet_14", in_chans=1), [(torch.zeros(2, 1, 28, 28), torch.tensor([0, 10]))], 0.5),
     errors.PairingError, "has label 10"),
    ("pairing-snip-label-above-classes-later-batch", lambda m: eg.prune.snip(
        models.create("cifar_resnet_14", in_chans=1), [(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1])),
                                                       (torch.zeros(2, 1, 28, 28), torch.tensor([0, 12]))], 0.5),
     errors.PairingError, "batch 1 has label 12"),
    ("pairing-snip-batches-none", lambda m: eg.prune.snip(m["src"], None, 0.5), errors.ConfigError, "NoneType"),
    ("pairing-grasp-batches-none", lambda m: eg.prune.grasp(m["src"], None, 0.5), errors.ConfigError, "NoneType"),
    ("pairing-snip-batches-int", lambda m: eg.prune.snip(m["src"], 3, 0.5), errors.ConfigError, "iterable"),
    # seeds and generators: one validator (elastigraph.seeds), checked before any work (issue 21)
    *[(f"seed-{where}-{v!r}"[:60], (lambda f, v: lambda m: f(m, v))(f, v), errors.ConfigError, "seed")
      for where, f in [
          ("random", lambda m, v: eg.prune.random(m["src"], 0.5, seed=v)),
          ("shuffle", lambda m, v: eg.prune.shuffle(_mask(m["src"]), seed=v)),
          ("load_dataset", lambda m, v: load_dataset("synthetic", limit=8, seed=v)),
          ("load_dataset-fmnist", lambda m, v: load_dataset("fashion_mnist", limit=8, seed=v)),
          ("synthetic", lambda m, v: eg.train.synthetic(8, seed=v)),
          ("balanced_subset", lambda m, v: eg.train.balanced_subset(torch.arange(10), 4, seed=v)),
          ("transfer", lambda m, v: eg.transfer(m["src"], _mask(m["src"]), m["dst"], seed=v)),
          ("transfer-reinit", lambda m, v: eg.transfer(m["src"], _mask(m["src"]), m["dst"], head="reinit", seed=v)),
      ]
      for v in ("abc", 2**70, -1, 1.5, True, None, [1]) if not (v is None and where == "random")],
    # meta-device models: methods that read weight values refuse them up front (issue 21)
    *[(f"meta-{name}", (lambda f: lambda m: f(_meta("cifar_resnet_14", in_chans=1)))(f), errors.ModelTypeError,
       "meta device")
      for name, f in [
          ("snip", lambda net: eg.prune.snip(net, [(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))], 0.5)),
          ("grasp", lambda net: eg.prune.grasp(net, [(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))], 0.5)),
          ("synflow", lambda net: eg.prune.synflow(net, 0.5, iterations=2)),
          ("magnitude", lambda net: eg.prune.magnitude(net, sparsity=0.5)),
          ("imp", lambda net: eg.prune.imp(net, lambda model, mask: (model.state_dict(), model.state_dict()), rounds=1)),
          ("evaluate", lambda net: evaluate(net, load_dataset("synthetic", limit=4), device="cpu")),
          ("fleet", lambda net: __import__("elastigraph.train.fleet").train.fleet.train_fleet(
              [net, net], load_dataset("synthetic", limit=4), None, [TrainConfig(steps=1, device="cpu")] * 2)),
      ]],
    ("meta-ticket-applied-to-meta-model-with-real-weights", lambda m: eg.transfer(
        m["src"], _mask(m["src"]), _meta("cifar_resnet_20")).apply(_meta("cifar_resnet_20")), errors.ModelTypeError,
     "meta device"),
    # silently accepted before (issue 21): bad leaf_modules with the torch.export fallback, zero widths
    *[(f"leaf-modules-{v!r}", (lambda v: lambda m: eg.analyze(_Untraceable(), (2, 4), leaf_modules=v))(v),
       errors.ConfigError, "leaf_modules") for v in ("abc", [1], [int], 5, [None])],
    *[(f"leaf-modules-fx-{v!r}", (lambda v: lambda m: eg.analyze(m["src"], leaf_modules=v))(v),
       errors.ConfigError, "leaf_modules") for v in ("abc", [1])],
    *[(f"zero-width-{n}", (lambda n, kw: lambda m: models.create(n, **kw))(n, kw), errors.ModelNameError, "empty")
      for n, kw in [("cifar_resnet_20", {"width": 0}), ("cifar_resnet_56", {"width": 0})]],
    ("generator-str", lambda m: eg.prune.random(m["src"], 0.5, generator="x"), errors.ConfigError, "torch.Generator"),
    ("generator-int", lambda m: eg.prune.random(m["src"], 0.5, generator=3), errors.ConfigError, "torch.Generator"),
    ("generator-and-seed", lambda m: eg.prune.random(m["src"], 0.5, seed=1, generator=torch.Generator()),
     errors.ConfigError, "not both"),
]


class _Untraceable(nn.Module):
    """torch.fx cannot trace it (Python control flow on a shape), torch.export can."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        x = self.a(x)
        return self.b(x) if x.shape[-1] == 4 else x


def test_export_fallback_still_runs_for_good_leaf_modules():
    """The fallback itself is untouched: valid leaf_modules (or none) still capture."""
    g = eg.analyze(_Untraceable(), (2, 4), leaf_modules=[nn.Linear])
    assert g.traced.capture == "torch.export"


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return models.create(name, **kw)


def _pair_call(fn: str, net: nn.Module, ds):
    """Call entry point ``fn`` with ``net`` and the data ``ds`` (a synthetic set)."""
    from elastigraph.recipes.runner import normalized_batches
    from elastigraph.train.fleet import train_fleet

    cfg = TrainConfig(steps=1, batch_size=8, device="cpu")
    if fn == "snip":
        return eg.prune.snip(net, normalized_batches(ds, 2, 8, 0), 0.5)
    if fn == "grasp":
        return eg.prune.grasp(net, normalized_batches(ds, 2, 8, 0), 0.5)
    if fn == "train":
        return train(net, ds, ds, cfg)
    if fn == "evaluate":
        return evaluate(net, ds, device="cpu")
    return train_fleet([net, copy.deepcopy(net)], ds, ds, [cfg, cfg])


TALLY: dict[str, int] = {"tried": 0, "clean_errors": 0, "no_error": 0, "raw_exceptions": 0}


@pytest.fixture(scope="module", autouse=True)
def _tally_report():
    """With ``ELASTIGRAPH_FUZZ_COUNTS=FILE``, append this module's counts to FILE."""
    yield
    path = os.environ.get("ELASTIGRAPH_FUZZ_COUNTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"module": "api", **TALLY}) + "\n")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_api_bad_input_raises_named_error(case, m):
    name, thunk, exc, fragment = case
    TALLY["tried"] += 1
    try:
        thunk(m)
    except (errors.ElastigraphError, FileNotFoundError) as e:
        TALLY["clean_errors"] += 1
        err: BaseException = e
    except Exception as e:  # counted, then reported by the assertion below
        TALLY["raw_exceptions"] += 1
        err = e
    else:
        TALLY["no_error"] += 1
        pytest.fail(f"{name}: no error raised")
    assert isinstance(err, exc), f"{type(err).__name__}: {err}"
    assert isinstance(err, (ValueError, TypeError, OSError))
    assert fragment in str(err)


def test_pairing_checked_before_any_step(m, monkeypatch):
    """A model that does not fit its data fails before the optimizer steps once and
    leaves the model as it was (modes, device, hooks)."""
    calls = []
    monkeypatch.setattr(torch.optim.SGD, "step", lambda *a, **k: calls.append(1))
    net = models.create("cifar_resnet_14", in_chans=1, num_classes=2)
    net.layer1.eval()  # a mixed-mode model keeps its per-module modes
    before = _snapshot(net)
    with pytest.raises(errors.PairingError, match=r"has 2 outputs but 'synthetic' .* has 10 classes"):
        train(net, m["ds"], None, TrainConfig(steps=3, device="cpu"))
    assert calls == []
    _same(before, _snapshot(net))


def test_pairing_accepts_what_fits(m):
    """The check lets through what trains: a model with more outputs than the data has
    classes, a masked model, and a fleet."""
    from elastigraph.train.fleet import train_fleet

    wide = models.create("cifar_resnet_14", in_chans=1, num_classes=12)
    res = train(wide, m["ds"], m["ds"], TrainConfig(steps=1, batch_size=8, device="cpu"))
    assert 0.0 <= res.test_acc <= 1.0
    net = models.create("cifar_resnet_14", in_chans=1)
    mask = eg.prune.random(net, 0.5, seed=0)
    res = train(net, m["ds"], None, TrainConfig(steps=1, batch_size=8, device="cpu"), mask=mask)
    assert res.steps == 1
    cfg = TrainConfig(steps=1, batch_size=8, device="cpu")
    out = train_fleet([models.create("cifar_resnet_14", in_chans=1) for _ in range(2)], m["ds"], None, [cfg, cfg])
    assert len(out) == 2


def test_ticket_planned_between_meta_models_applies_to_a_real_model(m):
    """Planning on meta models (shapes only) gives the mask a real transfer gives;
    applied to a real model it installs that mask and keeps the model's own weights
    (the ticket has none to copy) -- no NotImplementedError from torch."""
    mask = eg.prune.random(m["src"], 0.6, seed=3)
    real = eg.transfer(m["src"], mask, m["dst"])
    planned = eg.transfer(_meta("cifar_resnet_14"), mask, _meta("cifar_resnet_20"))
    assert planned.plan.to_dict() == real.plan.to_dict()
    assert planned.mask.keys() == real.mask.keys()
    assert all(torch.equal(planned.mask[k], real.mask[k]) for k in real.mask)
    assert planned.meta_weights and not real.meta_weights
    dst = models.create("cifar_resnet_20")
    own = {k: v.clone() for k, v in dst.state_dict().items()}
    planned.apply(dst)
    installed = masks.from_model(dst)
    assert all(torch.equal(installed[k], real.mask[k]) for k in real.mask)
    state = masks.plain_state(dst.state_dict(), fold_mask=False)
    assert all(torch.equal(state[k], own[k]) for k in own if k in state)  # its own values, unmasked
    assert random_is_shape_only(m)


def random_is_shape_only(m) -> bool:
    """prune.random needs shapes only: on a meta model it gives the real model's mask."""
    a = eg.prune.random(_meta("cifar_resnet_14"), 0.5, seed=1)
    b = eg.prune.random(m["src"], 0.5, seed=1)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_valid_seeds_and_generators_work(m):
    """The validator lets through what works: Python and NumPy integers up to MAX_SEED,
    a CPU generator, and the same seed gives the same mask."""
    import numpy as np

    from elastigraph.seeds import MAX_SEED

    a = eg.prune.random(m["src"], 0.5, seed=MAX_SEED)
    b = eg.prune.random(m["src"], 0.5, seed=np.int64(MAX_SEED))
    c = eg.prune.random(m["src"], 0.5, generator=torch.Generator().manual_seed(MAX_SEED))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert len(load_dataset("synthetic", limit=8, seed=MAX_SEED)) == 8


def test_bad_hyper_parameters_fail_before_training(m, monkeypatch):
    """NaN/inf hyper-parameters never reach the loop (they used to train to NaN)."""
    calls = []
    monkeypatch.setattr(torch.optim.SGD, "step", lambda *a, **k: calls.append(1))
    for kw in ({"momentum": math.nan}, {"lr": math.inf}, {"gamma": -1.0}):
        with pytest.raises(errors.ConfigError):
            train(m["src"], m["ds"], None, TrainConfig(steps=1, **kw))
    assert calls == []


# --------------------------------------------------------------------------- inputs never modified


def _snapshot(model: nn.Module) -> dict:
    """Everything a call could change: state values/dtypes/devices, plain tensor attributes
    (torch.nn.utils.prune's ``weight``), hooks, mode and requires_grad flags."""
    plain = {
        f"{n}.{k}": (v.device.type, v.dtype, v.detach().clone() if not v.is_meta else None)
        for n, mod in model.named_modules() for k, v in vars(mod).items() if isinstance(v, torch.Tensor)
    }
    return {
        "state": {k: (v.device.type, v.dtype, v.detach().clone()) for k, v in model.state_dict().items()},
        "plain": plain,
        "hooks": [(n, len(mod._forward_pre_hooks), len(mod._forward_hooks)) for n, mod in model.named_modules()],
        "training": [mod.training for mod in model.modules()],
        "grad": [p.requires_grad for p in model.parameters()],
    }


def _same(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert a["state"][k][:2] == b["state"][k][:2], k
        assert torch.equal(a["state"][k][2], b["state"][k][2]), k
    assert a["plain"].keys() == b["plain"].keys()
    for k in a["plain"]:
        assert a["plain"][k][:2] == b["plain"][k][:2], k  # e.g. a pruned .weight must not turn into a meta tensor
        if a["plain"][k][2] is not None:
            assert torch.equal(a["plain"][k][2], b["plain"][k][2]), k
    assert a["hooks"] == b["hooks"] and a["training"] == b["training"] and a["grad"] == b["grad"]


def _pruned() -> nn.Module:
    net = models.create("cifar_resnet_14")
    for mod in (net.conv, net.layer1[0].conv1, net.fc):
        tprune.l1_unstructured(mod, "weight", 0.5)
    return net


def _hooked() -> nn.Module:
    net = models.create("cifar_resnet_14")
    net.layer1[0].register_forward_hook(lambda mod, i, o: None)
    net.conv.register_forward_pre_hook(lambda mod, i: None)
    net.eval()
    return net


def _half() -> nn.Module:
    return models.create("cifar_resnet_14").half()


@pytest.mark.parametrize("make", [_pruned, _hooked, _half], ids=["pruned", "hooked", "half"])
def test_inputs_never_modified(make):
    src, dst = make(), models.create("cifar_resnet_20")
    if make is _half:
        dst = dst.half()
    mask = None if make is _pruned else masks.full_mask(src)
    before_src, before_dst = _snapshot(src), _snapshot(dst)
    eg.analyze(src, (2, 3, 32, 32))
    _same(before_src, _snapshot(src))
    ticket = eg.transfer(src, mask, dst, example_input=(2, 3, 32, 32))
    _same(before_src, _snapshot(src))
    _same(before_dst, _snapshot(dst))
    if make is _pruned:  # the pruned weight is readable and still what prune computed
        assert not src.conv.weight.is_meta
        assert torch.equal(src.conv.weight, src.conv.weight_orig * src.conv.weight_mask)
        assert "conv.weight" in ticket.mask and not ticket.mask["conv.weight"].all()
    if mask is not None:
        assert all(not t.is_meta for t in mask.values())


def test_compiled_model_is_unwrapped_and_untouched():
    """A torch.compile wrapper is traced through the module it holds (no compilation
    happens: nothing calls it), and neither is modified."""
    src = models.create("cifar_resnet_14")
    compiled = torch.compile(src)
    before = _snapshot(src)
    ticket = eg.transfer(compiled, masks.full_mask(src), models.create("cifar_resnet_20"), example_input=(2, 3, 32, 32))
    _same(before, _snapshot(src))
    assert "conv.weight" in ticket.weights
    dst = torch.compile(models.create("cifar_resnet_20"))
    assert ticket.apply(dst) is dst and masks.from_model(dst._orig_mod)


def test_ticket_apply_checks_before_writing():
    """A refused ``apply`` leaves the model as it was (no partial install)."""
    src, dst = models.create("cifar_resnet_14"), models.create("cifar_resnet_20")
    ticket = eg.transfer(src, masks.full_mask(src), dst)
    other = models.create("cifar_resnet_32")
    before = _snapshot(other)
    with pytest.raises(errors.SegmentMismatchError, match="planned for"):
        ticket.apply(other)
    _same(before, _snapshot(other))
    ticket.apply(copy.deepcopy(dst))  # the right model still works


def test_truncated_and_bomb_files_bounded(tmp_path):
    """A small .pth declaring a 256 M-entry mask is refused before expansion, with or
    without a model to check it against."""
    p = tmp_path / "huge.pth"
    torch.save({"conv.weight": torch.ones(1, dtype=torch.uint8).expand(16384, 16384)}, p)
    assert p.stat().st_size < 4096
    with pytest.raises(errors.MaskError, match="broadcast view"):
        masks.load_lth_mask(p)
    with pytest.raises(errors.MaskError):
        masks.read_mask(p, model=models.create("cifar_resnet_14"))


def test_compressed_bomb_refused_before_reading(zip_bomb, monkeypatch):
    """A 256 KiB torch zip whose one entry inflates to 256 MiB: read_mask refuses it from
    the zip directory alone (the payload is never read: torch.load is not called), with
    and without a model; load_lth_mask too."""
    assert zip_bomb.stat().st_size < 512 * 1024
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(1))
    net = models.create("cifar_resnet_14")
    for f in (lambda: masks.read_mask(zip_bomb, model=net), lambda: masks.read_mask(zip_bomb),
              lambda: masks.load_lth_mask(zip_bomb, model=net)):
        with pytest.raises(errors.MaskError, match="268,435,456"):
            f()
    assert calls == []


def test_mask_file_bounded_by_the_models_shapes(tmp_path, monkeypatch):
    """With a model, a mask file may hold at most 8 bytes per parameter (+1 MiB): an
    uncompressed archive or a safetensors file declaring more is refused before its
    tensors are read; right-sized files of every layout still load."""
    import zipfile

    net = models.create("cifar_resnet_14")
    budget = masks.mask_budget(net)
    assert budget == sum(p.numel() for p in net.parameters()) * 8 + (1 << 20)
    # a stored (uncompressed) archive one entry of which is larger than the budget
    big = tmp_path / "big.pth"
    torch.save({"conv.weight": torch.ones(16, 3, 3, 3, dtype=torch.uint8)}, big)
    with zipfile.ZipFile(big, "a") as z:
        z.writestr("archive/data/99", b"\0" * (budget + 1))
    with pytest.raises(errors.MaskError, match="more than a mask of CifarResNet"):
        masks.read_mask(big, model=net)
    # safetensors: an unknown key or a wrong declared shape is refused before get_tensor
    from safetensors import safe_open
    from safetensors.torch import save_file

    st = tmp_path / "extra.safetensors"
    save_file({"conv.weight": torch.ones(16, 3, 3, 3, dtype=torch.bool), "huge": torch.zeros(1000, dtype=torch.bool)},
              str(st))
    read = []
    real = safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def __getattr__(self, name):
            if name == "get_tensor":
                read.append(1)
            return getattr(self.f, name)

    monkeypatch.setattr(masks, "_st_open", Spy)
    with pytest.raises(errors.MaskError, match="'huge' is not a parameter"):
        masks.read_mask(st, model=net)
    assert read == []
    monkeypatch.undo()
    # right-sized files load: safetensors, torch zip, float 0/1 tensors
    for name, write in [("ok.safetensors", lambda p: masks.save_mask(masks.full_mask(net), p)),
                        ("ok.pth", lambda p: torch.save({k: v.double() for k, v in masks.full_mask(net).items()}, p))]:
        write(tmp_path / name)
        assert masks.read_mask(tmp_path / name, model=net).keys() == masks.full_mask(net).keys()


def test_cifar_nested_lists_checked_before_numpy(tmp_path):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    inner = [0] * 1000
    batch = {b"data": [[inner] * 1000] * 10, b"labels": list(range(10))}
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    assert (d / "test_batch").stat().st_size < 64 * 1024
    with pytest.raises(errors.DatasetError, match="'data' row 0"):
        load_dataset("cifar10", root=str(tmp_path), split="test")
    (d / "test_batch").write_bytes(pickle.dumps({b"data": [bytes(3072)] * 2, b"labels": [3, 4]}, protocol=2))
    ds = load_dataset("cifar10", root=str(tmp_path), split="test")
    assert tuple(ds.x.shape) == (2, 3, 32, 32) and ds.y.tolist() == [3, 4]


def test_yaml_bounds(tmp_path):
    from elastigraph.recipes.schema import MAX_YAML_NODES, load_yaml

    assert load_yaml("a: [1, 2]", "x") == {"a": [1, 2]}
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n", "x")
    with pytest.raises(ValueError, match="nesting deeper"):
        load_yaml("[" * 200 + "]" * 200, "x")
    laughs = "a: &a [" + ",".join(["1"] * 50) + "]\n" + "b: &b [" + ",".join(["*a"] * 50) + "]\n" + \
        "c: [" + ",".join(["*b"] * 50) + "]\n"
    with pytest.raises(ValueError, match="expands to more than"):
        load_yaml(laughs, "x")
    assert 50 * 50 * 50 > MAX_YAML_NODES
    # merge keys still work, and override (no false duplicate)
    assert load_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n", "x")["d"] == {"x": 1, "y": 3}
    with pytest.raises(ValueError, match="not valid YAML"):
        load_yaml("a: !!python/object/apply:os.system ['true']", "x")


def test_count_cases():
    """The table is as large as the report says (guards against silently shrinking it)."""
    assert len(CASES) >= 100
