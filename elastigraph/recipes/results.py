"""The contract of ``results.json``: typed records that the runner writes and a reader
(``report.py``, a notebook) loads back with every field checked.

One :class:`Record` per trained network (a row of ``results.csv``), the run's task (its
metrics and the direction of each), the splits the metrics come from, the per-layer
densities and the analyses' rows. :meth:`Results.to_dict` gives the file's JSON with the
fields in the order the runner has always written them (the golden test compares records
bit for bit); :func:`validate` and :func:`load` turn a file back into the typed object,
raising :class:`~elastigraph.errors.ReportError` naming the first damaged field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ReportError

RESULTS = "results.json"

ACCURACY_SPLITS = {
    "test_acc": "the dataset's test split (never used to choose anything)",
    "val_acc": "validation split: dataset.val_fraction of the training set, held out from training (None without one)",
}
"""Which split each accuracy of results.json comes from (classification)."""

DIVERGED_KEYS = ("diverged", "diverged_at")
"""The extra fields of a training that diverged (its metrics are ``None``): ``diverged:
true`` and the step whose loss was NaN/inf."""

HEAL_KEYS = ("before", "sparsity_before", "sparsity_after")
"""The extra fields of a ``heal`` record: the metrics before healing and the sparsity
(share of exact zeros in the masked tensors) before and after."""


def environment() -> dict[str, Any]:
    """What changes the numbers besides the recipe: torch version and CPU thread count
    (on CPU, results are bit-exact only for the same machine, torch and thread count)."""
    import platform

    import torch

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def _fail(where: str, what: str) -> ReportError:
    return ReportError(f"{where} {what}; rerun `elastigraph run` to rewrite results.json")


def _is_num(v: Any, *, none: bool = False) -> bool:
    return (v is None and none) or (isinstance(v, (int, float)) and not isinstance(v, bool))


@dataclass(frozen=True)
class MetricInfo:
    """One metric of the task: its name, the key of its fields (``test_<key>``), its label,
    direction and display scale/unit."""

    name: str
    key: str
    label: str
    higher_is_better: bool
    scale: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "label": self.label, "higher_is_better": self.higher_is_better,
                "scale": self.scale, "unit": self.unit}


@dataclass(frozen=True)
class TaskInfo:
    """The ``task`` entry: what reports read the metrics and their direction from
    (``metrics[0]`` is the primary one)."""

    name: str
    metrics: tuple[MetricInfo, ...]

    @classmethod
    def of(cls, task: Any) -> "TaskInfo":
        """From a :class:`~elastigraph.train.tasks.Task`."""
        return cls(task.name, tuple(MetricInfo(m.name, m.key, m.label, m.higher_is_better, m.scale, m.unit)
                                    for m in task.metrics))

    @property
    def primary(self) -> MetricInfo:
        return self.metrics[0]

    def splits(self) -> dict[str, str]:
        """Which split each metric of the records comes from."""
        if self.name == "classification":
            return dict(ACCURACY_SPLITS)
        key = self.primary.key
        return {f"test_{key}": "the corpus's test split (files chosen by hash; never used to choose anything)",
                f"val_{key}": "the corpus's validation split (files chosen by hash), never trained on"}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metrics": [m.to_dict() for m in self.metrics]}


@dataclass(frozen=True)
class Record:
    """One trained network: a row of ``results.json["records"]`` and ``results.csv``.
    ``tests``: every metric of the task on the test split (``test_acc``, ``test_loss``;
    primary first); ``val``: the primary metric on the validation split (``None``
    without one); ``heal``: the :data:`HEAL_KEYS` of a ``heal`` record; ``step``: the id
    of the step that trained it (no timings, so reruns compare equal)."""

    seed: int
    role: str
    model: str
    target: str
    level: int
    method: str
    sparsity: float
    tests: dict[str, float | None]
    val: dict[str, float | None]
    steps: int
    device: str | None
    step: str
    heal: dict[str, Any] = field(default_factory=dict)
    diverged: dict[str, Any] = field(default_factory=dict)
    """``{"diverged": True, "diverged_at": step}`` for a training that diverged, else empty."""

    @classmethod
    def of(cls, seed: int, role: str, model: str, name: str, level: int, method: str, rec: Any) -> "Record":
        """The record of step ``rec`` (a :class:`~elastigraph.recipes.cache.StepRecord`)."""
        res = rec.result
        tests = [k for k in res if k.startswith("test_")]  # the task's metrics, primary first
        primary = tests[0][len("test_"):] if tests else "acc"
        return cls(seed, role, model, name, level, method, round(float(res["sparsity"]), 6),
                   {k: res[k] for k in tests}, {f"val_{primary}": res.get(f"val_{primary}")},
                   int(res["steps"]), res.get("device"), rec.id, {k: res[k] for k in HEAL_KEYS if k in res},
                   {"diverged": True, "diverged_at": res.get("diverged_at")} if res.get("diverged") else {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "role": self.role, "model": self.model, "target": self.target, "level": self.level,
            "method": self.method, "sparsity": self.sparsity, **self.tests, **self.val, **self.heal,
            "steps": self.steps, "device": self.device, **self.diverged, "step": self.step,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "record", primary: str | None = None) -> "Record":
        """Check and read one record (``primary``: the task's primary metric key, whose
        ``test_`` field must be there)."""
        if not isinstance(d, Mapping):
            raise _fail(where, f"is a {type(d).__name__}, expected an object")
        for key, ok, want in (
            ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "int"),
            ("role", lambda v: isinstance(v, str), "str"), ("model", lambda v: isinstance(v, str), "str"),
            ("target", lambda v: isinstance(v, str), "str"),
            ("level", lambda v: isinstance(v, int) and not isinstance(v, bool), "int"),
            ("method", lambda v: isinstance(v, str), "str"), ("sparsity", _is_num, "int or float"),
            ("steps", lambda v: isinstance(v, int) and not isinstance(v, bool), "int"),
            ("device", lambda v: v is None or isinstance(v, str), "str or null"),
            ("step", lambda v: isinstance(v, str), "str"),
        ):
            if key not in d or not ok(d[key]):
                raise _fail(f"{where}.{key}", f"is {'missing' if key not in d else repr(d[key])}, expected {want}")
        tests = {k: v for k, v in d.items() if k.startswith("test_")}
        val = {k: v for k, v in d.items() if k.startswith("val_")}
        if primary is not None and f"test_{primary}" not in tests:
            raise _fail(f"{where}.test_{primary}", "is missing, expected int or float or NoneType")
        for k, v in {**tests, **val}.items():
            if not _is_num(v, none=True):
                raise _fail(f"{where}.{k}", f"is {v!r}, expected int or float or NoneType")
        heal = {k: d[k] for k in HEAL_KEYS if k in d}
        div = {k: d[k] for k in DIVERGED_KEYS if k in d}
        known = {"seed", "role", "model", "target", "level", "method", "sparsity", "steps", "device", "step",
                 *tests, *val, *heal, *div}
        extra = sorted(set(d) - known)
        if extra:
            raise _fail(where, f"has unknown field(s) {extra}")
        return cls(d["seed"], d["role"], d["model"], d["target"], d["level"], d["method"], d["sparsity"], tests, val,
                   d["steps"], d["device"], d["step"], heal, div)


LAYER_KEYS = ("source", "transfer", "imp")
"""The tickets of a ``layer_density`` entry: ``{tensor name: density}`` each. An entry
also carries ``mapping``, the transfer's plan in the paper code's format (``0:0;3:1``:
which source block fed which target block), where the transfer has one."""


@dataclass(frozen=True)
class Results:
    """The whole of ``results.json``."""

    recipe: str
    source: str
    targets: list[str]
    seeds: list[int]
    environment: dict[str, Any]
    task: TaskInfo | None
    accuracy_splits: dict[str, Any]
    records: list[Record]
    layer_density: list[dict[str, Any]]
    lmc: list[dict[str, Any]] | None = None
    """The linear-mode-connectivity rows (``analyses: [lmc]``); None when the recipe has no analyses."""
    hypotheses: dict[str, Any] | None = None
    """The recipe's pre-registered ``hypotheses`` section (primary comparisons, margin,
    alpha), copied so that a report tests what was declared before the run; None without one."""

    def to_dict(self) -> dict[str, Any]:
        out = {
            "recipe": self.recipe, "source": self.source, "targets": self.targets, "seeds": self.seeds,
            "environment": self.environment,
            **({"task": self.task.to_dict()} if self.task is not None else {}),
            "accuracy_splits": self.accuracy_splits,
            "records": [r.to_dict() for r in self.records],
            "layer_density": self.layer_density,
        }
        if self.lmc is not None:
            out["lmc"] = self.lmc
        if self.hypotheses is not None:
            out["hypotheses"] = self.hypotheses
        return out


def _task(raw: Any, where: str) -> TaskInfo | None:
    if raw is None:
        return None
    try:
        metrics = tuple(MetricInfo(str(m.get("name", m["key"])), str(m["key"]), str(m["label"]),
                                   bool(m["higher_is_better"]), float(m["scale"]), str(m.get("unit", "")))
                        for m in raw["metrics"])
        if not metrics:
            raise IndexError
        return TaskInfo(str(raw["name"]), metrics)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        raise _fail(f"{where}: 'task'", "must hold a name and a 'metrics' list of {key, label, higher_is_better, "
                                        "scale}") from None


def validate(data: Any, where: str = "results.json") -> Results:
    """``data`` (a parsed results.json) as :class:`Results`, every field checked; a
    :class:`ReportError` naming the first damaged one otherwise. Files written before a
    run recorded its task (classification) are read as such."""
    if not isinstance(data, Mapping) or not isinstance(data.get("records"), list):
        raise ReportError(f"{where} has no 'records' list; is it an elastigraph results file?")
    task = _task(data.get("task"), where)
    primary = task.primary.key if task is not None else "acc"
    records = [Record.from_dict(r, f"{where}: records[{i}]", primary) for i, r in enumerate(data["records"])]
    ld = data.get("layer_density", [])
    if not isinstance(ld, list) or not all(
        isinstance(e, Mapping) and isinstance(e.get("target"), str) and isinstance(e.get("level"), int)
        and "seed" in e and all(isinstance(e.get(k, {}), Mapping) and all(_is_num(v) for v in e.get(k, {}).values())
                                for k in LAYER_KEYS)
        for e in ld
    ):
        raise _fail(f"{where}: 'layer_density'", "is not a list of {seed, target, level, source/transfer/imp: "
                                                 "{tensor: density}} entries")
    lmc = data.get("lmc")
    if lmc is not None and not (isinstance(lmc, list) and all(isinstance(x, Mapping) for x in lmc)):
        raise _fail(f"{where}: 'lmc'", "is not a list of objects")
    hyp = data.get("hypotheses")
    if hyp is not None:
        from .schema import Hypotheses

        try:
            hyp = Hypotheses.model_validate(hyp).model_dump()
        except Exception as e:  # pydantic's ValidationError: name the field, not a traceback
            raise _fail(f"{where}: 'hypotheses'", f"is not a valid hypotheses section ({str(e).splitlines()[0]})") from None
    for key, typ in (("recipe", str), ("source", str), ("targets", list), ("seeds", list), ("environment", dict),
                     ("accuracy_splits", dict)):
        if key in data and not isinstance(data[key], typ):
            raise _fail(f"{where}: {key!r}", f"is {type(data[key]).__name__}, expected {typ.__name__}")
    return Results(data.get("recipe", ""), data.get("source", ""), list(data.get("targets", [])),
                   list(data.get("seeds", [])), dict(data.get("environment", {})), task,
                   dict(data.get("accuracy_splits", {})), records, [dict(e) for e in ld],
                   [dict(x) for x in lmc] if lmc is not None else None, hyp)


def load(run_dir: str | Path) -> Results:
    """Read and check ``run_dir/results.json`` (see :func:`validate`)."""
    path = Path(run_dir) / RESULTS
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise ReportError(f"{path} does not exist: the run in {str(run_dir)!r} has not finished; "
                          "run `elastigraph run RECIPE --out DIR` again to resume it")
    from ..io import read_json

    data = read_json(path, error=ReportError)  # bounded: size and nesting checked before parsing
    return validate(data, str(path))
