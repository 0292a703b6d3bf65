"""Reading and writing files safely: the one atomic writer, and bounded readers for
YAML and JSON (the formats users hand us: recipes, plans, results, cache markers).

- :func:`atomic_write`: write to a fresh temporary name in the destination folder, fsync,
  ``os.replace`` -- a reader (or a crash) sees the old file or the new one, never half of
  one. The temporary file is created by the writer itself, so it gets the usual
  permissions (not ``mkstemp``'s 0600). Used by the step cache, masks and reports.
- :func:`load_yaml`: ``yaml.SafeLoader`` with duplicate keys refused, nesting and alias
  expansion ("billion laughs") bounded before anything is built.
- :func:`load_json` / :func:`read_json`: size and nesting bounded before parsing, so a
  deeply nested or huge file is a one-line error, not a RecursionError or MemoryError.
Errors are ``ValueError`` (or the caller's ``error`` class) whose message starts with
what was being read; callers wrap them in their own named error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

import yaml

# --------------------------------------------------------------------------- atomic writes


def atomic_write(path: str | Path, write: Callable[[str], None], *, suffix: str = ".tmp", mkdir: bool = True,
                 fsync: bool = True) -> Path:
    """Call ``write(tmp)`` to write a temporary sibling of ``path`` (same folder, so the
    rename is atomic; ``suffix`` for writers that read the format from the name), fsync
    it and ``os.replace`` it onto ``path``. The temporary file is removed on any error.
    ``mkdir``: create the folder first. Returns ``path``."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
    try:
        write(str(tmp))
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""

    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, w)


# --------------------------------------------------------------------------- YAML


MAX_YAML_DEPTH = 50
"""Deepest nesting of mappings/lists a recipe, ``--set`` value or model override may have."""
MAX_YAML_NODES = 100_000
"""Most values a YAML document may hold once its aliases are expanded (a "billion
laughs" document is a few hundred bytes that expand to 10**9 values)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build objects) that also refuses duplicate keys,
    nesting deeper than :data:`MAX_YAML_DEPTH` and documents whose alias expansion holds
    more than :data:`MAX_YAML_NODES` values -- before anything is built from them."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"nesting deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.YAMLError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                         "(each key may appear once per mapping)")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any) -> int:
    """Number of values in the composed ``node`` with every alias expanded, counted
    without expanding (shared sub-trees are counted once and multiplied); stops early
    past :data:`MAX_YAML_NODES`."""
    memo: dict[int, int] = {}
    stack = [(node, False)]
    while stack:  # iterative post-order: depth is bounded anyway, recursion is not needed
        n, done = stack.pop()
        if id(n) in memo:
            continue
        kids = [c for kv in n.value for c in (kv if isinstance(kv, tuple) else (kv,))] if isinstance(
            n, (yaml.SequenceNode, yaml.MappingNode)) else []
        if done:
            memo[id(n)] = min(MAX_YAML_NODES + 1, 1 + sum(memo[id(c)] for c in kids))
            continue
        stack.append((n, True))
        stack.extend((c, False) for c in kids if id(c) not in memo)
    return memo[id(node)]


def _one_line(e: yaml.YAMLError) -> str:
    """A YAML error as one line: the problem and where (PyYAML's own text spans lines)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{e.problem}{where}"
    return " ".join(str(e).split())


def load_yaml(text: str, what: str) -> Any:
    """Parse one YAML document with :class:`_BoundedLoader`; any problem -> ``ValueError``
    whose message starts with ``what`` (callers wrap it in their own named error)."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected YAML text, got {type(text).__name__}")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_YAML_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_YAML_NODES:,} values (aliases nested too deep?)")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ValueError(f"{what}: not valid YAML: {_one_line(e)}") from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise ValueError(f"{what}: nesting too deep") from None
    finally:
        loader.dispose()



# --------------------------------------------------------------------------- JSON

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays/objects a JSON file we read may have (results, plans and
markers are a few levels deep; Python's parser recurses and dies near 1000)."""
MAX_JSON_BYTES = 256 << 20
"""Default size limit of a JSON file (a results.json of a large study is a few MB)."""

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str, limit: int) -> int:
    """Nesting depth of the arrays/objects in ``text`` (strings skipped), counted without
    parsing; stops counting past ``limit``."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def load_json(text: str | bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_JSON_BYTES,
              error: type[Exception] = ValueError) -> Any:
    """Parse JSON ``text`` after bounding its size (``max_bytes``) and nesting
    (``max_depth``); any problem -> ``error`` whose message starts with ``what``."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise error(f"{what} is {len(text):,} bytes; the limit is {max_bytes:,}")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(text, str):
        raise error(f"{what}: expected JSON text, got {type(text).__name__}")
    if len(text) > max_bytes:
        raise error(f"{what} is {len(text):,} characters; the limit is {max_bytes:,}")
    if json_depth(text, max_depth) > max_depth:
        raise error(f"{what} nests arrays/objects deeper than {max_depth} levels; not a file elastigraph wrote")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise error(f"{what} nests too deep") from None


def read_json(path: str | Path, what: str | None = None, *, max_depth: int = MAX_JSON_DEPTH,
              max_bytes: int = MAX_JSON_BYTES, error: type[Exception] = ValueError) -> Any:
    """:func:`load_json` of the file ``path``, its size checked before it is read."""
    path = Path(path)
    what = what or str(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{what} is {size:,} bytes; the limit is {max_bytes:,}")
    return load_json(path.read_bytes(), what, max_depth=max_depth, max_bytes=max_bytes, error=error)


__all__ = ["atomic_write", "write_text", "load_yaml", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "load_json", "read_json",
           "json_depth", "MAX_JSON_DEPTH", "MAX_JSON_BYTES"]
