"""Tasks: what a network is trained for and how it is judged.

A :class:`Task` owns the training loss, the evaluation metrics and the direction of each
(accuracy: higher is better; loss, bits per byte: lower is better). The training loop,
the fleet engine, the recipe runner, the statistics, reports, plots and the CLI take
the metric and its direction from the task; nothing else in the library assumes
classification. A new task is one subclass registered here with :func:`register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class Metric:
    """One evaluation metric. ``name`` is its key in results (``"accuracy"``);
    ``higher_is_better`` its direction; ``label`` and ``scale`` how reports show it
    (``scale=100`` shows a fraction as a percentage)."""

    name: str
    higher_is_better: bool
    label: str
    scale: float = 1.0
    unit: str = ""
    key: str = ""
    """Short name in result fields (``test_<key>``, ``val_<key>``); default ``name``."""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)

    def better(self, a: float, b: float) -> bool:
        """True when value ``a`` is strictly better than ``b`` for this metric."""
        return a > b if self.higher_is_better else a < b

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is: ``sign * (a - b) > 0`` means a is better."""
        return 1 if self.higher_is_better else -1


class Task:
    """Base class. Subclasses set ``name`` and ``metrics`` (``metrics[0]`` is the
    primary, reported metric) and implement :meth:`loss`, :meth:`eval_sums` and
    :meth:`finish`. Evaluation is a sum over batches (so it all-reduces under DDP and
    does not depend on the batch split): :meth:`eval_sums` returns float64 sums for one
    batch, :meth:`finish` turns the totals into metric values."""

    name: str = ""
    metrics: tuple[Metric, ...] = ()
    sums: tuple[str, ...] = ()
    """Names of the quantities :meth:`eval_sums` returns, in a fixed order."""
    image_inputs: bool = True
    """Inputs are uint8 images the loop normalises (and augments when asked); False: the
    inputs are token ids fed as they are (int64)."""
    data_kind: str = "images"
    """What datasets this task trains on (for error messages)."""

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise ConfigError(f"task {self.name!r} has no metric {name!r}; it has {[m.name for m in self.metrics]}")

    @staticmethod
    def output(out) -> Tensor:
        """The tensor the loss and metrics read from a model's output: ``out`` itself, or
        the ``logits`` of a Hugging Face ``ModelOutput``."""
        logits = getattr(out, "logits", None)
        return logits if isinstance(logits, Tensor) else out

    def loss(self, output: Tensor, target: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
        """The mean training loss of one batch (a scalar)."""
        raise NotImplementedError

    def eval_sums(self, output: Tensor, target: Tensor) -> Tensor:
        """A float64 vector of the sums named by :attr:`sums` for one evaluation batch."""
        raise NotImplementedError

    def finish(self, totals: Mapping[str, float]) -> dict[str, float]:
        """Metric values (by metric name) from the summed quantities; NaN when empty."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Classification(Task):
    """Single-label classification: cross-entropy loss (optional label smoothing in
    training only), accuracy (higher is better) and mean cross-entropy (lower is better)."""

    name = "classification"
    metrics = (
        Metric("accuracy", True, "accuracy", scale=100.0, unit="%", key="acc"),
        Metric("loss", False, "cross-entropy"),
    )
    sums = ("loss", "correct", "count")

    def loss(self, output: Tensor, target: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
        output = self.output(output)
        return F.cross_entropy(output.float(), target, label_smoothing=label_smoothing)

    def eval_sums(self, output: Tensor, target: Tensor) -> Tensor:
        output = self.output(output)
        return torch.stack([
            F.cross_entropy(output.float(), target, reduction="sum").double(),
            (output.argmax(1) == target).sum().double(),
            torch.tensor(float(len(target)), dtype=torch.float64, device=output.device),
        ])

    def finish(self, totals: Mapping[str, float]) -> dict[str, float]:
        count = totals["count"]
        if count == 0:
            return {"accuracy": math.nan, "loss": math.nan}
        return {"accuracy": totals["correct"] / count, "loss": totals["loss"] / count}


class LanguageModelling(Task):
    """Causal language modelling (next-token prediction) on byte-level text: the model's
    logits ``(N, T, V)`` against targets ``(N, T)``. Reports bits per byte (with a byte
    vocabulary: mean cross-entropy in nats / ln 2; lower is better) and the mean
    cross-entropy in nats."""

    name = "causal_lm"
    metrics = (
        Metric("bits_per_byte", False, "bits per byte", key="bpb"),
        Metric("loss", False, "cross-entropy (nats/byte)"),
    )
    sums = ("loss", "count")
    image_inputs = False
    data_kind = "text corpora ('pystdlib', 'text:<path>')"

    def loss(self, output: Tensor, target: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
        logits = self.output(output)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1).long(),
                               label_smoothing=label_smoothing)

    def eval_sums(self, output: Tensor, target: Tensor) -> Tensor:
        logits = self.output(output)
        return torch.stack([
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1).long(),
                            reduction="sum").double(),
            torch.tensor(float(target.numel()), dtype=torch.float64, device=logits.device),
        ])

    def finish(self, totals: Mapping[str, float]) -> dict[str, float]:
        count = totals["count"]
        if count == 0:
            return {"bits_per_byte": math.nan, "loss": math.nan}
        nats = totals["loss"] / count
        return {"bits_per_byte": nats / math.log(2), "loss": nats}


_TASKS: dict[str, Callable[[], Task]] = {"classification": Classification, "causal_lm": LanguageModelling}


def register(name: str, factory: Callable[[], Task]) -> None:
    """Make ``get_task(name)`` return ``factory()``."""
    _TASKS[name] = factory


def get_task(task: str | Task | None = None) -> Task:
    """A task by name (``None``: classification), or ``task`` itself."""
    if task is None:
        return Classification()
    if isinstance(task, Task):
        return task
    if not isinstance(task, str) or task not in _TASKS:
        raise ConfigError(f"unknown task {task!r}; known: {sorted(_TASKS)}")
    return _TASKS[task]()


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_of_data(ds) -> str:
    """The task a dataset is for: its spec's ``task`` (text corpora: ``causal_lm``),
    else classification."""
    return getattr(getattr(ds, "spec", None), "task", "classification")
