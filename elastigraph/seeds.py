"""Seeds and random generators: the one validator every public function that takes a
``seed`` or a ``generator`` calls before any work, so ``seed='abc'``, ``seed=2**70`` or
``generator='x'`` end in a :class:`~elastigraph.errors.ConfigError` naming the argument
and the valid range instead of torch's overflow or type errors."""

from __future__ import annotations

import numbers
from typing import Any

import torch

from .errors import ConfigError

MAX_SEED = 2**32 - 1
"""Largest seed accepted anywhere (seeds are mixed into 64-bit generator seeds)."""


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int if it is an integer (Python or NumPy, not bool) in
    ``[0, MAX_SEED]``, else :class:`ConfigError`."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise ConfigError(f"{what}={seed!r} must be an integer in [0, {MAX_SEED}]")
    return int(seed)


def check_generator(generator: Any, what: str = "generator", device: str | torch.device = "cpu") -> torch.Generator | None:
    """``generator`` if it is ``None`` or a ``torch.Generator`` on ``device``'s type,
    else :class:`ConfigError`."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"{what} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                          f"got {type(generator).__name__}")
    want = torch.device(device).type
    if generator.device.type != want:
        raise ConfigError(f"{what} is a {generator.device.type} generator; this draws on the {want}: pass "
                          f"torch.Generator(device={want!r})")
    return generator


def seeded(seed: Any = None, generator: Any = None, *, method: str) -> torch.Generator | None:
    """The generator a function draws from, given its ``seed`` and ``generator``
    arguments (at most one; both checked): a fresh CPU generator seeded with ``seed``,
    ``generator`` itself, or None (torch's global generator)."""
    if seed is not None and generator is not None:
        raise ConfigError(f"{method}: give seed or generator, not both")
    if seed is not None:
        return torch.Generator().manual_seed(check_seed(seed, f"{method}: seed"))
    return check_generator(generator, f"{method}: generator")


__all__ = ["MAX_SEED", "check_seed", "check_generator", "seeded"]
