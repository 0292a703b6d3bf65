"""The model-spec language: a zoo name plus constructor overrides in one string
(``'timm:vit_tiny_patch16_224?depth=6&img_size=32'``, ``cifar_resnet_20?width=4``), the
:class:`ModelSpec` recipes and the CLI build models from, and the size guard that keeps a
model string from asking for more memory than any machine has."""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ModelNameError
from ..io import load_yaml


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``'timm:vit_tiny_patch16_224?depth=6&img_size=32'`` into the zoo name and its
    constructor overrides; values are YAML scalars or lists (``depths=[3,3,27,3]``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNameError(f"model spec must be a non-empty string such as 'cifar_resnet_20', got {spec!r}")
    name, _, query = spec.strip().partition("?")
    if not name:
        raise ModelNameError(f"model spec {spec!r} has no model name before '?'")
    overrides: dict[str, Any] = {}
    if query:
        for part in query.split("&"):
            key, eq, raw = part.partition("=")
            key = key.strip()
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ModelNameError(
                    f"model spec {spec!r}: override {part!r} is not of the form key=value "
                    "(e.g. 'timm:vit_tiny_patch16_224?depth=6&img_size=32')"
                )
            if key in overrides:
                raise ModelNameError(f"model spec {spec!r}: override {key!r} is given twice")
            if key in RESERVED_OVERRIDES:
                raise ModelNameError(f"model spec {spec!r}: {key!r} cannot be overridden in the model string; "
                                     f"{RESERVED_OVERRIDES[key]}")
            try:
                overrides[key] = load_yaml(raw, f"value of {key!r}") if raw.strip() else None
            except ValueError as e:
                raise ModelNameError(f"model spec {spec!r}: {e} (expected a YAML scalar or list such as 6 "
                                     "or [2,2,4,2])") from None
            err = _override_too_large(key, overrides[key])
            if err:
                raise ModelNameError(f"model spec {spec!r}: {err}")
    return name, overrides


MAX_OVERRIDE_INT = 100_000
"""Largest integer a model override may hold (widths, depths, sizes): bigger values only
make models that cannot be built in any memory, or loops that do not end."""


def _largest_int(v: Any) -> int:
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return abs(v)
    if isinstance(v, (list, tuple)):
        return max((_largest_int(x) for x in v), default=0)
    if isinstance(v, dict):
        return max((_largest_int(x) for x in v.values()), default=0)
    return 0


MAX_DEPTH_OVERRIDE = 1000
"""Most blocks a depth override (``depth``, ``depths``, ``layers``, ...) may ask for in
total: building a model is linear in its blocks (a 1000-block ViT takes ~30 s on the
meta device) and no model studied here comes near."""


def _sum_ints(v: Any) -> int:
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return abs(v)
    if isinstance(v, (list, tuple)):
        return sum(_sum_ints(x) for x in v)
    return 0


def _override_too_large(key: str, value: Any) -> str | None:
    """Why a model override asks for an unbuildable size, or None."""
    if _largest_int(value) > MAX_OVERRIDE_INT:
        return (f"override {key}={value!r} holds an integer above {MAX_OVERRIDE_INT:,}; no model of the zoo "
                "takes sizes that large")
    if re.search(r"depth|layers|blocks", key) and _sum_ints(value) > MAX_DEPTH_OVERRIDE:
        return f"override {key}={value!r} asks for more than {MAX_DEPTH_OVERRIDE:,} blocks"
    return None


def max_parameters() -> int:
    """Largest model (parameters + buffers) a model string may build: 2**31 entries (8 GiB
    in float32), or the ``ELASTIGRAPH_MAX_PARAMETERS`` environment variable."""
    import os

    raw = os.environ.get("ELASTIGRAPH_MAX_PARAMETERS", "")
    return int(raw) if raw.isdigit() else 2**31


RESERVED_OVERRIDES = {
    "in_chans": "input channels follow the dataset (CLI: --dataset or --in-chans)",
    "num_classes": "the class count follows the dataset (CLI: --dataset or --num-classes)",
}
"""Constructor arguments elastigraph sets itself, so a model string may not."""


def format_model_spec(name: str, overrides: Mapping[str, Any]) -> str:
    """Inverse of :func:`parse_model_spec` (canonical key order, flow-style YAML values)."""
    if not overrides:
        return name

    def fmt(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()

    return name + "?" + "&".join(f"{k}={fmt(overrides[k])}" for k in sorted(overrides))


class ModelSpec(BaseModel):
    """A zoo model name plus constructor overrides; YAML may give it as one string
    (``cifar_resnet_32`` or ``timm:vit_tiny_patch16_224?depth=6``) or as a mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                name, overrides = parse_model_spec(v)
            except ModelNameError as e:
                raise ValueError(str(e)) from None
            return {"name": name, "overrides": overrides}
        return v

    @field_validator("overrides")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key in RESERVED_OVERRIDES:
                raise ValueError(f"{key!r} cannot be overridden: {RESERVED_OVERRIDES[key]}")
            err = _override_too_large(key, value)
            if err:
                raise ValueError(err)
        return v

    @property
    def label(self) -> str:
        """Canonical one-string form, used in tables, file names and step hashes."""
        return format_model_spec(self.name, self.overrides)

    def build(self, *, in_chans: int, num_classes: int, img_size: Any = None, device: Any = None):
        """Create the model with random weights (on ``device``, e.g. ``'meta'``). Like
        channels and classes, ``img_size`` follows the dataset (models that take an input
        size, such as ViTs, get it; the others ignore it) unless the overrides set it."""
        import contextlib

        import torch

        from . import create

        overrides = copy.deepcopy(self.overrides)
        if img_size is not None:
            overrides.setdefault("img_size", img_size)
        if device is None or torch.device(device).type != "meta":
            # size first, on the meta device (no memory): a model string must not be able to
            # take the machine's memory (cifar_resnet_20?width=100000 is 10**12 weights)
            with torch.device("meta"):
                probe = create(self.name, in_chans=in_chans, num_classes=num_classes, **copy.deepcopy(overrides))
            n = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
            if n > max_parameters():
                raise ModelNameError(
                    f"model {self.label!r} has {n:,} parameters and buffers, more than the limit of "
                    f"{max_parameters():,} (set ELASTIGRAPH_MAX_PARAMETERS to raise it)"
                )
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return create(self.name, in_chans=in_chans, num_classes=num_classes, **overrides)
