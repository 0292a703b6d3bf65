"""The step cache: every stage of a run is a directory named by a hash of its settings
and of its inputs' ids (open_lth style), so a rerun skips what is finished and any
change upstream changes every id downstream.

A step is *done* only when its ``done.json`` marker exists; the marker is written last,
and every file (tensors as safetensors, metadata as JSON) is written to a temporary name
and ``os.replace``-d into place, so a process killed at any moment leaves either a
finished step or one that is simply recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

CACHE_VERSION = 1
"""Part of every step hash: bump when a step's meaning changes so old caches are not reused."""

MARKER = "done.json"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing settings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def step_id(kind: str, settings: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """``<kind>-<16 hex>``: the hash of the kind, its settings and its inputs' ids."""
    payload = canonical_json({"v": CACHE_VERSION, "kind": kind, "settings": settings, "inputs": dict(inputs)})
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (temp file + ``os.replace``)."""

    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")

    _atomic(Path(path), w)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""

    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    _atomic(Path(path), w)


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat name -> tensor dict as safetensors, atomically (CPU, contiguous copies,
    so shared or strided tensors such as tied weights are fine)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}

    def w(tmp: str) -> None:
        save_file(flat, tmp, metadata=dict(metadata) if metadata else None)

    _atomic(Path(path), w)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_tensors` (CPU tensors)."""
    return load_file(str(path), device="cpu")


@dataclass
class StepRecord:
    """A finished step: its id, directory and the JSON result its marker holds."""

    id: str
    kind: str
    dir: Path
    result: dict[str, Any]
    cached: bool = False
    inputs: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.dir / name


class StepCache:
    """Directory ``root`` holding one sub-directory per step id."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def dir(self, sid: str) -> Path:
        return self.root / sid

    @contextlib.contextmanager
    def lock(self, sid: str):
        """Hold step ``sid``'s lock (an exclusive ``flock`` on ``<root>/.locks/<sid>``)
        while checking, computing and finishing it, so that parallel workers (or runs)
        sharing this cache never compute one step twice at once: a second process waits,
        then finds the step done. Released when the holder exits, even if it is killed."""
        import fcntl

        d = self.root / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / sid, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def done(self, sid: str) -> bool:
        return (self.dir(sid) / MARKER).is_file()

    def load(self, sid: str) -> StepRecord:
        marker = json.loads((self.dir(sid) / MARKER).read_text())
        return StepRecord(sid, marker["kind"], self.dir(sid), marker["result"], cached=True, inputs=marker["inputs"])

    def finish(self, sid: str, kind: str, settings: Mapping[str, Any], inputs: Mapping[str, str], result: dict[str, Any]) -> StepRecord:
        """Write the marker (last, atomically): from now on the step counts as done."""
        write_json(
            self.dir(sid) / MARKER,
            {"id": sid, "kind": kind, "settings": settings, "inputs": dict(inputs), "result": result},
        )
        return StepRecord(sid, kind, self.dir(sid), result, cached=False, inputs=dict(inputs))
