"""A check of a finished transfer that does not trust the graph analysis it checks.

The analysis (trace, units, stages, :func:`elastigraph.graph.match.verify`) decides which
source tensor feeds each target tensor. This module judges that decision from the two
module trees alone, before any tensor moves:

* **same place**: a tensor moves only between names that are equal once the indices of
  containers whose length differs between the two models are dropped (``blocks.3.fc1``
  <- ``blocks.1.fc1`` when ``blocks`` has 4 entries in one model and 2 in the other). An
  index into a container of equal length (the list of stages, ``conv1``/``conv2``,
  a stage whose depth did not change) must be equal, so a tensor never crosses stages,
  and the module holding it must be of the same class on both sides;
* **one source block per target block**: all tensors under one entry of a container
  whose length differs come from one entry of the source's container;
* **whole copies**: inside one planned target block, every container index moves by one
  offset (a flat layout such as VGG's ``features.N``, where a block is several entries
  of one ``Sequential``, is copied as a contiguous run, never stitched).

Containers are ``Sequential``/``ModuleList``/``ParameterList`` entries and numbered
children (``layer1``, ``encoder_layer_3``, ``block3-2``): any name part that ends in a
number. Explicit mappings (a SOLAR-style ``0:0;1:1,2``) only choose indices inside
containers whose length differs, so they pass.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from torch import nn

from .errors import ProvenanceError

_INDEXED = re.compile(r"(.*?)(\d+)")


def split_part(part: str) -> tuple[str, int | None]:
    """A name part as (prefix, index): ``3`` -> ("", 3), ``layer2`` -> ("layer", 2),
    ``encoder_layer_2`` -> ("encoder_layer_", 2), ``norm`` -> ("norm", None)."""
    m = _INDEXED.fullmatch(part)
    return (m.group(1), int(m.group(2))) if m else (part, None)


def container_lengths(model: nn.Module) -> dict[tuple[str, str], int]:
    """``{(module path, prefix): number of children, parameters and buffers directly under
    that module named prefix<number>}``: the lengths of the model's containers."""
    out: dict[tuple[str, str], int] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        names = [n for n, _ in mod.named_children()]
        names += [n for n, _ in mod.named_parameters(recurse=False, remove_duplicate=False)]
        names += [n for n, _ in mod.named_buffers(recurse=False, remove_duplicate=False)]
        for n in set(names):
            prefix, idx = split_part(n)
            if idx is not None:
                out[(path, prefix)] = out.get((path, prefix), 0) + 1
    return out


def _owner_types(model: nn.Module) -> dict[str, str]:
    return {p: type(m).__name__ for p, m in model.named_modules(remove_duplicate=False)}


def check(src_model: nn.Module, dst_model: nn.Module, pairs: Mapping[str, str],
          blocks: Iterable[Iterable[str]] = (), *, src_name: str = "source", dst_name: str = "target") -> None:
    """Refuse (:class:`ProvenanceError`, naming the tensors) a transfer whose ``pairs``
    (target tensor name -> source tensor name, parameters and buffers) break a rule of the
    module doc. ``blocks``: the target names of each planned target block, for the
    whole-copy rule."""
    ls, ld = container_lengths(src_model), container_lengths(dst_model)
    ts, td = _owner_types(src_model), _owner_types(dst_model)
    block_src: dict[str, dict[str, str]] = {}  # target block path -> {source block path: an example tensor}
    moves: dict[str, dict[tuple[str, str], int]] = {}  # target tensor -> {target container: index shift}

    def refuse(d: str, s: str, why: str) -> ProvenanceError:
        return ProvenanceError(
            f"refusing a wrong ticket: {dst_name} tensor `{d}` would come from {src_name} tensor `{s}`, {why}. "
            "The plan disagrees with the module trees of the two models (checked independently of the graph "
            "analysis). Give an explicit mapping= that keeps every block in its own stage, or report the two "
            "models as an elastigraph bug")

    for d, s in pairs.items():
        dp, sp = d.split("."), s.split(".")
        if len(dp) != len(sp):
            raise refuse(d, s, "which sits at another depth of the module tree")
        owner_d, owner_s = ".".join(dp[:-1]), ".".join(sp[:-1])
        if td.get(owner_d) != ts.get(owner_s):
            raise refuse(d, s, f"which belongs to another kind of module ({ts.get(owner_s)} for {td.get(owner_d)})")
        shifts: dict[tuple[str, str], int] = {}
        for i, (a, b) in enumerate(zip(dp, sp)):
            (pa, ia), (pb, ib) = split_part(a), split_part(b)
            if pa != pb or (ia is None) != (ib is None) or (ia is None and a != b):
                raise refuse(d, s, f"which has another role (`{a}` vs `{b}` in place {i} of the name)")
            if ia is None:
                continue
            key_d, key_s = (".".join(dp[:i]), pa), (".".join(sp[:i]), pb)
            n_d, n_s = ld.get(key_d), ls.get(key_s)
            if n_d == n_s:
                if ia != ib:
                    where = ".".join(dp[:i] + [pa + "#"])
                    raise refuse(d, s, f"which is entry {ib} rather than {ia} of `{where}`, a container of {n_d} "
                                 "entries in both models (its index may not change: the tensor would cross a stage "
                                 "or a fixed part)")
                continue
            blk = ".".join(dp[:i + 1])
            seen = block_src.setdefault(blk, {})
            seen.setdefault(".".join(sp[:i + 1]), s)
            if len(seen) > 1:
                (b1, t1), (b2, t2) = list(seen.items())[:2]
                raise ProvenanceError(
                    f"refusing a wrong ticket: {dst_name} block `{blk}` would be assembled from two {src_name} "
                    f"blocks, `{b1}` (e.g. `{t1}`) and `{b2}` (e.g. `{t2}`); every target block must be one "
                    "whole source block. The plan disagrees with the module trees of the two models (checked "
                    "independently of the graph analysis)")
            shifts[key_d] = ia - ib
        moves[d] = shifts
    for names in blocks:
        names = [n for n in names if n in moves]
        first: dict[tuple[str, str], tuple[int, str]] = {}
        for n in names:
            for key, shift in moves[n].items():
                k0 = first.setdefault(key, (shift, n))
                if k0[0] != shift:
                    raise ProvenanceError(
                        f"refusing a wrong ticket: one {dst_name} block holds `{k0[1]}` (from `{pairs[k0[1]]}`) and "
                        f"`{n}` (from `{pairs[n]}`), whose places in `{key[0] or 'the model'}` move by different "
                        f"amounts ({k0[0]} and {shift}): the block would be stitched from parts of several source "
                        "blocks rather than copied whole")


__all__ = ["check", "container_lengths", "split_part"]
