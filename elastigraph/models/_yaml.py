"""Bounded YAML: ``yaml.SafeLoader`` that also refuses duplicate keys, deep nesting and
alias bombs, before anything is built. Read by the model-spec language (override values)
and the recipe loader. (The layer plan puts bounded readers in ``elastigraph/io.py``; this
module moves there when that file lands.)"""

from __future__ import annotations

from typing import Any

import yaml

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
