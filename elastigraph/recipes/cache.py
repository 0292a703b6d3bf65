"""The step cache: every stage of a run is a directory named by a hash of its settings
and of its inputs' ids (open_lth style), so a rerun skips what is finished and any
change upstream changes every id downstream.

A step is *done* only when its ``done.json`` marker exists; the marker is written last,
and every file (tensors as safetensors, metadata as JSON) is written to a temporary name
and ``os.replace``-d into place, so a process killed at any moment leaves either a
finished step or one that is simply recomputed.

The cache heals itself: the marker records the size and sha256 of every file the step
wrote, and a step is reused only if its marker parses and every file still matches. A
truncated, emptied or edited marker, a missing, changed or unreadable file: the step is
"not done" and is redone, with a one-line warning -- never loaded, never a traceback.
Temporary files a kill left behind are removed when the step is redone.

Concurrency: :meth:`StepCache.lock` is a per-step advisory lock, so runs that share one
cache (``elastigraph run --cache DIR``) compute each step once (the second waits, then
finds it done); :class:`FolderLock` keeps a second run out of an output folder in use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_write, load_json, write_text  # noqa: F401 (write_text: re-exported)

CACHE_VERSION = 1
"""Part of every step hash: bump when a step's meaning changes so old caches are not reused."""

MARKER = "done.json"
LOCKS_DIR = ".locks"
MAX_MARKER_BYTES = 16 << 20
"""A marker is a small JSON file; anything larger is treated as damaged, not parsed."""


def _is_temp(name: str) -> bool:
    """Names of the temporary files the atomic writers here, in masks.save_mask and in
    the report's plot writer use (``.<name>.<random>.tmp`` / ``.<name>.<random>.png``)."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".png"))


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left directly in ``folder``; returns them.
    Call it only while no other process writes there (under a lock)."""
    removed = []
    d = Path(folder)
    if d.is_dir():
        for f in d.iterdir():
            if _is_temp(f.name) and f.is_file():
                with contextlib.suppress(OSError):
                    f.unlink()
                    removed.append(f)
    return removed


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": n, "sha256": hex}}`` of every file under ``folder``
    (the marker and temporary files excluded), in sorted order."""
    root = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name != MARKER and not _is_temp(f.name):
            out[f.relative_to(root).as_posix()] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return out


def _marker_digest(marker: Mapping[str, Any]) -> str:
    """sha256 of a marker's canonical JSON without its own ``digest`` field: an edited
    marker (a changed result, file list or id) no longer matches."""
    body = {k: v for k, v in marker.items() if k != "digest"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


# --------------------------------------------------------------------------- advisory locks

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - not POSIX: the filelock package (a torch dependency)
    _fcntl = None


class FolderLock:
    """An advisory, exclusive lock on a file (``fcntl.flock``; released by the OS when
    the process dies, so a killed run never leaves a stale lock). The holder's PID is
    written into the file so that a refused run can name it.

    ``acquire(wait=False)`` raises :class:`~elastigraph.errors.OutputLockedError` at
    once when another process holds it; ``wait=True`` blocks until it is free."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None
        self._fl: Any = None

    def holder(self) -> str:
        """The PID written by the holder, or '?' when unreadable."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "?"
        return text if text.isdigit() else "?"

    def acquire(self, *, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> "FolderLock":
        from ..errors import OutputLockedError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if _fcntl is None:  # pragma: no cover
            import filelock

            self._fl = filelock.FileLock(str(self.path) + ".flock")
            try:
                self._fl.acquire(timeout=-1 if wait else 0)
            except filelock.Timeout:
                raise OutputLockedError(f"{self.what} is in use by another elastigraph run (PID {self.holder()})") from None
            self.path.write_text(f"{os.getpid()}\n")
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except BlockingIOError:
                pid = self.holder()
                if not wait:
                    raise OutputLockedError(
                        f"{self.what} is in use by another elastigraph run (PID {pid}); wait for it to finish, "
                        "choose another folder, or pass --wait to queue behind it"
                    ) from None
                if on_wait is not None:
                    on_wait(pid)
                _fcntl.flock(fd, _fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            _fcntl.flock(self._fd, _fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._fl is not None:  # pragma: no cover
            self._fl.release()
            self._fl = None

    def __enter__(self) -> "FolderLock":
        return self.acquire() if self._fd is None and self._fl is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing settings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def step_id(kind: str, settings: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """``<kind>-<16 hex>``: the hash of the kind, its settings and its inputs' ids."""
    payload = canonical_json({"v": CACHE_VERSION, "kind": kind, "settings": settings, "inputs": dict(inputs)})
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """The one atomic writer (:func:`elastigraph.io.atomic_write`)."""
    atomic_write(path, write)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (temp file + ``os.replace``)."""

    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")

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
    """Directory ``root`` holding one sub-directory per step id (see the module docstring
    for how steps are verified, healed and locked). ``warn`` receives one-line messages
    about damaged steps (default: ``warning: ...`` on stderr)."""

    def __init__(self, root: str | Path, *, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
        self._verified: dict[str, dict[str, Any]] = {}
        self._warned: set[str] = set()

    def dir(self, sid: str) -> Path:
        return self.root / sid

    def problem(self, sid: str) -> str | None:
        """None if step ``sid`` is done and intact, ``"missing"`` if it has no marker,
        else what is damaged (the marker or one of the files it lists)."""
        d = self.dir(sid)
        marker_path = d / MARKER
        if not marker_path.is_file():
            return "missing"
        try:
            if marker_path.stat().st_size > MAX_MARKER_BYTES:
                return f"{MARKER} is larger than {MAX_MARKER_BYTES:,} bytes"
            marker = load_json(marker_path.read_bytes(), MARKER, max_bytes=MAX_MARKER_BYTES)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            return f"{MARKER} is unreadable or not JSON ({type(e).__name__})"
        if not isinstance(marker, dict) or marker.get("id") != sid:
            return f"{MARKER} is not this step's marker"
        if not isinstance(marker.get("result"), dict) or not isinstance(marker.get("inputs"), dict) \
                or not isinstance(marker.get("kind"), str):
            return f"{MARKER} lacks its kind, inputs or result"
        if marker.get("digest") != _marker_digest(marker):
            return f"{MARKER} was edited (its digest does not match its content)"
        files = marker.get("files")
        if not isinstance(files, dict):
            return f"{MARKER} records no file checksums (written by an older elastigraph)"
        for rel, want in files.items():
            f = d / rel
            if not isinstance(want, dict) or not isinstance(want.get("sha256"), str):
                return f"{MARKER} has a malformed entry for {rel!r}"
            try:
                size = f.stat().st_size
                if size != want.get("bytes"):
                    return f"{rel} has {size} bytes, the marker recorded {want.get('bytes')}"
                if sha256_file(f) != want["sha256"]:
                    return f"{rel} does not match its recorded sha256"
            except OSError as e:
                return f"{rel} is missing or unreadable ({e.strerror or type(e).__name__})"
        self._verified[sid] = marker
        return None

    def done(self, sid: str) -> bool:
        """Whether ``sid`` can be reused (verified once per process). A damaged step is
        reported through ``warn`` and counts as not done."""
        if sid in self._verified:
            return True
        why = self.problem(sid)
        if why is None:
            return True
        if why != "missing" and sid not in self._warned:
            self._warned.add(sid)
            self.warn(f"step {sid} in {self.root} is damaged ({why}); redoing it")
        return False

    def load(self, sid: str) -> StepRecord:
        marker = self._verified.get(sid)
        if marker is None:
            why = self.problem(sid)
            if why is not None:
                from ..errors import ConfigError

                raise ConfigError(f"step {sid} in {self.root} is not a finished step ({why}); run the recipe again")
            marker = self._verified[sid]
        return StepRecord(sid, marker["kind"], self.dir(sid), marker["result"], cached=True, inputs=marker["inputs"])

    def prepare(self, sid: str) -> Path:
        """An empty directory for step ``sid`` (whatever a killed or damaged attempt left
        there, temporary files included, is removed). Call it while holding :meth:`lock`."""
        import shutil

        d = self.dir(sid)
        self._verified.pop(sid, None)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    @contextlib.contextmanager
    def lock(self, step_id: str, *, poll: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the per-step lock of ``step_id`` (waits while another process holds it);
        re-check :meth:`done` inside: the other process may have finished the step."""
        lk = FolderLock(self.root / LOCKS_DIR / f"{step_id}.lock", f"step {step_id}")
        lk.acquire(wait=True, on_wait=(lambda pid: poll(pid)) if poll is not None else None)
        try:
            yield
        finally:
            lk.release()

    def finish(self, sid: str, kind: str, settings: Mapping[str, Any], inputs: Mapping[str, str], result: dict[str, Any]) -> StepRecord:
        """Record the size and sha256 of every file in the step's folder and write the
        marker (last, atomically): from now on the step counts as done."""
        marker = {"id": sid, "kind": kind, "settings": settings, "inputs": dict(inputs), "result": result,
                  "files": file_manifest(self.dir(sid))}
        marker = json.loads(json.dumps(marker, default=str))  # exactly what the file will hold
        marker["digest"] = _marker_digest(marker)
        write_json(self.dir(sid) / MARKER, marker)
        self._verified[sid] = marker
        return StepRecord(sid, kind, self.dir(sid), result, cached=False, inputs=dict(inputs))
