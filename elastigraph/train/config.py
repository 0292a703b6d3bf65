"""Training hyper-parameters: :class:`TrainConfig`, the one place they are checked
(:meth:`TrainConfig.problems`, and :func:`config_problems` for settings that are not a
config yet, e.g. a recipe's ``train:`` section), and the device and seed rules."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

from ..errors import ConfigError
from ..seeds import MAX_SEED, check_seed  # noqa: F401 (re-exported: the seed rules live in elastigraph.seeds)

_SCHEDULES = ("step", "cosine", "constant")
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_problem(name: Any) -> str | None:
    """None if ``name`` is a device training can run on ('auto', 'cpu', 'cuda', 'cuda:1',
    ...), else why not (checked before any work; availability is checked at train time)."""
    if not isinstance(name, str):
        return f"{name!r} is not a device name such as 'auto', 'cpu' or 'cuda:0'"
    if name == "auto":
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return f"{name!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1')"
    if dev.type not in _DEVICE_TYPES:
        return f"{name!r}: training needs real memory; use one of 'auto', 'cpu', 'cuda[:N]' (not {dev.type!r})"
    return None


_OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Training hyper-parameters; plain data (``dataclasses.asdict`` is JSON-ready) so a
    runner can hash it. ``steps`` overrides ``epochs``; ``amp``/``channels_last`` only
    act on CUDA. ``optimizer`` is SGD (the paper's, for CNNs) or AdamW (decoupled weight
    decay; what ViTs and ConvNeXts train with); ``momentum``/``nesterov`` are SGD's."""

    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"  # "sgd" | "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"  # "step" | "cosine" | "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training
    gamma: float = 0.1
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (pad 4; pad 2 below 32 px) + horizontal flip
    eval_every: int | None = None
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    task: str = "classification"  # elastigraph.train.tasks: the loss and the metrics

    def __post_init__(self) -> None:
        bad = self.problems()
        if bad:
            raise ConfigError("invalid TrainConfig: " + "; ".join(f"{k}={m}" for k, m in bad))
        self.milestones = tuple(float(m) for m in self.milestones)

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field as ``(field, what is wrong and what would work)``; the one
        place hyper-parameters are checked (recipes report these under ``train.<field>``).
        Types, ranges and finiteness (NaN/inf never train), seed range, device string."""
        bad: list[tuple[str, str]] = []

        def number(name: str, *, lo: float | None = None, lo_open: bool = False, hi: float | None = None,
                   hi_open: bool = False, integer: bool = False, optional: bool = False) -> bool:
            v = getattr(self, name)
            if v is None and optional:
                return True
            ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type:
                bad.append((name, f"{v!r} is not {'an integer' if integer else 'a number'}"))
                return False
            if not integer and not math.isfinite(v):
                bad.append((name, f"{v!r} is not a finite number"))
                return False
            if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and (v >= hi if hi_open else v > hi):
                rng = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if hi_open or hi is None else ']'}"
                bad.append((name, f"{v!r} is outside {rng}"))
                return False
            return True

        if self.optimizer not in _OPTIMIZERS:
            bad.append(("optimizer", f"{self.optimizer!r} is not one of {_OPTIMIZERS}"))
        if self.schedule not in _SCHEDULES:
            bad.append(("schedule", f"{self.schedule!r} is not one of {_SCHEDULES}"))
        number("steps", lo=1, integer=True, optional=True)
        number("epochs", lo=0, lo_open=True, optional=self.steps is not None)  # checked even when steps win
        number("batch_size", lo=1, integer=True)
        number("lr", lo=0)
        number("momentum", lo=0, hi=1, hi_open=True)
        number("weight_decay", lo=0)
        number("gamma", lo=0, lo_open=True)
        number("warmup_steps", lo=0, integer=True)
        number("label_smoothing", lo=0, hi=1, hi_open=True)
        number("eval_every", lo=1, integer=True, optional=True)
        number("seed", lo=0, hi=MAX_SEED, integer=True)
        for name in ("nesterov", "augment", "amp", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                bad.append((name, f"{getattr(self, name)!r} is not true/false"))
        if self.nesterov is True and isinstance(self.momentum, (int, float)) and not self.momentum > 0:
            bad.append(("nesterov", "True needs momentum > 0"))
        ms = self.milestones
        if isinstance(ms, (str, bytes)) or not isinstance(ms, (list, tuple)):
            bad.append(("milestones", f"{ms!r} is not a list of fractions"))
        elif any(isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1 for m in ms) \
                or list(ms) != sorted(ms):
            bad.append(("milestones", f"{list(ms)} must be ascending fractions of training in (0, 1]"))
        err = device_problem(self.device)
        if err:
            bad.append(("device", err))
        from .tasks import task_names

        if not isinstance(self.task, str) or self.task not in task_names():
            bad.append(("task", f"{self.task!r} is not one of {task_names()}"))
        return bad

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (milestones as a list)."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def config_problems(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """:meth:`TrainConfig.problems` of the config ``settings`` would make (defaults for
    the fields it leaves out), without raising: how a recipe reports every bad training
    field at once, by name. Unknown field names are problems too."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = [(k, f"is not a training setting; known: {sorted(known)}") for k in settings if k not in known]
    cfg = object.__new__(TrainConfig)  # unchecked: problems() reports instead of raising
    cfg.__dict__.update({f.name: f.default for f in fields(TrainConfig)})
    cfg.__dict__.update({k: v for k, v in settings.items() if k in known})
    return unknown + cfg.problems()


__all__ = ["MAX_SEED", "TrainConfig", "check_seed", "config_problems", "device_problem"]
