"""Elastic ticket transfer: stretch or squeeze a lottery ticket onto a deeper or
shallower model of the same family.

``transfer(src_model, src_mask, dst_model)`` traces both models, pairs their fixed parts
(stem, head, each stage's shape-changing block 0) one to one and re-uses the source's
identical blocks to fill the target's stages, following a named strategy or an explicit
mapping. The result is a :class:`Ticket`: the target mask, the source's (rewound)
weights laid out on the target, and the :class:`Plan` that says which source block fed
each target block.

Conventions (the E-LTH paper's code): blocks are numbered per stage, 0 being the stage's
first block. Block 0 always maps to block 0 (``0:0``) -- in stages with a shape-changing
first block (ResNet's downsampling block) because nothing else has its shape, and in
stages where every block is identical (CIFAR-ResNet stage 1, ViT) by convention. Tensors
are paired by their position inside a block, never by name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import masks as _masks
from . import provenance as _provenance
from .seeds import check_seed
from .errors import ConfigError, MappingError, MaskError, ModelTypeError, SegmentMismatchError, StrategyError
from .graph import ModelGraph, analyze
from .graph.match import Matching, alternating_cause, match, verify

STRETCH_STRATEGIES = {
    "append": "copies at the end of the stage, earliest blocks first, fewest copies each "
              "(5 -> 9: B0,B1,B2,B3,B4,B1,B2,B3,B4; the default)",
    "after-run": "copies right after the copied run of earliest blocks, fewest copies each "
                 "(5 -> 7: B0,B1,B2,B1,B2,B3,B4)",
    "interpolate": "each block repeated in place, earlier blocks first (B0,B1,B1,B2,B2)",
}
SQUEEZE_STRATEGIES = {
    "keep-first": "keep the earliest blocks, drop from the end (the default)",
    "even": "keep evenly spaced blocks (9 -> 3 keeps 0, 4, 8)",
    "influence": "keep block 0 and the blocks that change their input most on calibration data (block "
                 "influence, 1 - cos(input, output); needs transfer(..., calibration=batches))",
}
DEFAULT_STRATEGY = "append+keep-first"
"""The default layout. For 3 -> 5 blocks (ResNet-20 -> 32, the paper's main grid) append and
after-run coincide; for partial stretches the authors' scripts used both layouts and the
paper does not name one, so ``append`` is the default for continuity (docs/elth.md)."""
_ALIASES = {"default": DEFAULT_STRATEGY, "paper": DEFAULT_STRATEGY}  # "paper": older name, kept working


def strategies() -> dict[str, str]:
    """Every strategy name accepted by ``transfer(strategy=...)`` with a description. A
    stretch name and a squeeze name may be combined with ``+`` (``"interpolate+even"``);
    a single name leaves the other direction at its default."""
    out = {"default": f"= {DEFAULT_STRATEGY}", "paper": f"older alias of 'default' (= {DEFAULT_STRATEGY})"}
    out.update(STRETCH_STRATEGIES)
    out.update(SQUEEZE_STRATEGIES)
    return out


def parse_strategy(strategy: str | None) -> tuple[str, str]:
    """The (stretch, squeeze) pair a strategy name stands for (``None`` = the
    default, :data:`DEFAULT_STRATEGY`); raises :class:`StrategyError` listing the valid names. Recipes validate with it."""
    if strategy is None:
        strategy = DEFAULT_STRATEGY
    if not isinstance(strategy, str):
        raise StrategyError(f"strategy must be a string such as 'append' or 'interpolate+even', got {strategy!r}")
    name = _ALIASES.get(strategy.strip().lower(), strategy.strip().lower())
    stretch, squeeze = DEFAULT_STRATEGY.split("+")
    parts = [p.strip() for p in name.split("+")]
    valid = (f"valid: stretch {sorted(STRETCH_STRATEGIES)}, squeeze {sorted(SQUEEZE_STRATEGIES)}, "
             f"'default' (= {DEFAULT_STRATEGY}), or one of each joined by '+', e.g. 'interpolate+even'")
    if not all(parts) or len(parts) > 2:
        raise StrategyError(f"malformed transfer strategy {strategy!r}; {valid}")
    seen: dict[str, str] = {}
    for part in parts:
        kind = "stretch" if part in STRETCH_STRATEGIES else "squeeze" if part in SQUEEZE_STRATEGIES else None
        if kind is None:
            raise StrategyError(f"unknown transfer strategy {part!r}; {valid}")
        if kind in seen:
            raise StrategyError(f"transfer strategy {strategy!r} names two {kind} strategies ({seen[kind]!r} and "
                                f"{part!r}); combine one stretch and one squeeze name; {valid}")
        seen[kind] = part
    stretch, squeeze = seen.get("stretch", stretch), seen.get("squeeze", squeeze)
    return stretch, squeeze


# ---------------------------------------------------------------------------- strategies


def stretch_append(n: int, m: int) -> list[int]:
    """Source block for each of ``m`` target blocks: blocks 0..n-1, then copies of
    1..n-1 appended in order, cycling (``3 -> 5``: 0,1,2,1,2)."""
    copyable = list(range(1, n))
    return list(range(n)) + [copyable[i % len(copyable)] for i in range(m - n)]


def stretch_after_run(n: int, m: int) -> list[int]:
    """Source block for each of ``m`` target blocks: the ``r = min(n-1, m-n)`` earliest
    blocks 1..r form the copied run; its copies (cycling through it) come right after it,
    then the remaining blocks (``5 -> 7``: 0,1,2,1,2,3,4 = the authors' ``0:0;1:1,3;2:2,4;3:5;4:6``)."""
    c = m - n
    r = min(n - 1, c)
    run = list(range(1, r + 1))
    return [0] + run + [run[i % r] for i in range(c)] + list(range(r + 1, n))


def stretch_interpolate(n: int, m: int) -> list[int]:
    """Each source block 1..n-1 repeated in place, earlier ones once more when the copies
    do not divide evenly (``5 -> 9``: 0,1,1,2,2,3,3,4,4)."""
    q, r = divmod(m - 1, n - 1)
    out = [0]
    for b in range(1, n):
        out += [b] * (q + (1 if b - 1 < r else 0))
    return out


def squeeze_keep_first(n: int, m: int) -> list[int]:
    """Keep blocks 0..m-1 (drop from the end)."""
    return list(range(m))


def squeeze_even(n: int, m: int) -> list[int]:
    """Keep ``m`` evenly spaced blocks, first and last included (``9 -> 3``: 0,4,8)."""
    if m == 1:
        return [0]
    return [int(math.floor(j * (n - 1) / (m - 1) + 0.5)) for j in range(m)]


_FUNCS = {"append": stretch_append, "after-run": stretch_after_run, "interpolate": stretch_interpolate,
          "keep-first": squeeze_keep_first, "even": squeeze_even}


# ---------------------------------------------------------------------------- the plan


@dataclass
class StagePlan:
    """One stage: ``sources[j]`` is the source block (stage-local index) feeding target
    block ``j``, or ``-1`` for a block grown as an identity (``transfer(grow="identity")``). ``block0`` names the fixed shape-changing block, if the stage has one."""

    index: int
    label: str
    block0: str | None
    src_blocks: list[str]
    dst_blocks: list[str]
    sources: list[int]

    @property
    def kind(self) -> str:
        n, m = len(self.src_blocks), len(self.dst_blocks)
        return "stretch" if m > n else "squeeze" if m < n else "same"

    def mapping(self) -> dict[int, list[int]]:
        """``{source block: [target blocks]}`` (sources that feed nothing, and grown blocks, are left out)."""
        out: dict[int, list[int]] = {}
        for j, i in enumerate(self.sources):
            if i >= 0:
                out.setdefault(i, []).append(j)
        return dict(sorted(out.items()))

    def mapping_string(self) -> str:
        """The paper code's format: ``0:0;1:1,3;2:2,4``."""
        return ";".join(f"{i}:{','.join(map(str, js))}" for i, js in self.mapping().items())


MAX_PLAN_BYTES = 1 << 20
"""Largest plan JSON read (plans are a few KB)."""


@dataclass
class Plan:
    """Which source block feeds each target block, stage by stage; fixed parts (stem,
    head, blocks 0) carry over one to one. Printable (rich) and JSON round-trippable."""

    src: str
    dst: str
    strategy: str
    stages: list[StagePlan]
    fixed_regions: int = 0
    version: int = 1

    def mapping_string(self) -> str:
        """All stages in the paper's format, joined by ``|`` (one string if all agree)."""
        parts = [s.mapping_string() for s in self.stages]
        return parts[0] if parts and all(p == parts[0] for p in parts) else "|".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        _check_plan_dict(d)
        try:
            stages = [StagePlan(**s) for s in d["stages"]]
            return cls(src=d["src"], dst=d["dst"], strategy=d["strategy"], stages=stages,
                       fixed_regions=int(d.get("fixed_regions", 0)), version=int(d.get("version", 1)))
        except (KeyError, TypeError) as e:
            raise MappingError(f"not a valid transfer plan ({type(e).__name__}: {e}); use Plan.to_json() output") from e

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        from .io import load_json

        return cls.from_dict(load_json(text, "plan JSON", max_bytes=MAX_PLAN_BYTES, error=MappingError))

    def __rich__(self) -> Any:
        from rich.table import Table

        t = Table(title=f"transfer plan: {self.src} -> {self.dst} ({self.strategy})",
                  caption=f"{self.fixed_regions} fixed regions (stem, blocks 0, head) carried over one to one")
        for col in ("stage", "module", "block 0", "blocks", "change", "target block <- source block"):
            t.add_column(col)
        for s in self.stages:
            t.add_row(str(s.index), s.label, s.block0 or "-", f"{len(s.src_blocks)} -> {len(s.dst_blocks)}",
                      s.kind, " ".join(f"{j}<{i}" for j, i in enumerate(s.sources)))
        return t


def _check_plan_dict(d: Any) -> None:
    """The fields of a plan dict (``Plan.to_dict()`` output) with their types, so that a
    malformed plan JSON is one :class:`MappingError` naming the field at fault."""
    hint = "use the .plan.json written by `elastigraph transfer` (Plan.to_json())"

    def bad(where: str, what: str) -> MappingError:
        return MappingError(f"not a valid transfer plan: {where} {what}; {hint}")

    if not isinstance(d, Mapping):
        raise bad("the plan", f"is a {type(d).__name__}, expected an object")
    for key in ("src", "dst", "strategy"):
        if not isinstance(d.get(key), str):
            raise bad(key, "is missing or not a string")
    for key in ("fixed_regions", "version"):
        if key in d and (isinstance(d[key], bool) or not isinstance(d[key], int)):
            raise bad(key, "is not an integer")
    stages = d.get("stages")
    if not isinstance(stages, list):
        raise bad("stages", "is missing or not a list")
    fields = {"index": int, "label": str, "src_blocks": list, "dst_blocks": list, "sources": list}
    for i, st in enumerate(stages):
        if not isinstance(st, Mapping):
            raise bad(f"stages[{i}]", "is not an object")
        extra = set(st) - set(fields) - {"block0"}
        if extra:
            raise bad(f"stages[{i}]", f"has unknown field(s) {sorted(extra)}")
        for key, typ in fields.items():
            if isinstance(st.get(key), bool) or not isinstance(st.get(key), typ):
                raise bad(f"stages[{i}].{key}", f"is missing or not a{'n' if typ is int else ''} {typ.__name__}")
        if st.get("block0") is not None and not isinstance(st["block0"], str):
            raise bad(f"stages[{i}].block0", "is not a string or null")
        n, m = len(st["src_blocks"]), len(st["dst_blocks"])
        src = st["sources"]
        if len(src) != m or any(isinstance(x, bool) or not isinstance(x, int) or not -1 <= x < n for x in src):
            raise bad(f"stages[{i}].sources", f"must list, for each of the {m} target block(s), a source block "
                                              f"index in 0..{n - 1} (or -1: grown)")


# ---------------------------------------------------------------------------- mapping strings


def parse_mapping(text: str, n_stages: int, labels: Sequence[str] | None = None) -> list[dict[int, list[int]] | None]:
    """Parse the paper code's mapping string into ``{src: [dst, ...]}`` per stage
    (``None`` for an empty stage entry: use the strategy). One stage string applies to
    every stage; otherwise there must be one per stage, joined by ``|``."""
    if not isinstance(text, str) or not text.strip():
        raise MappingError(f"mapping must be a non-empty string like '0:0;1:1,2;2:3,4', got {text!r}")
    if n_stages == 0:
        raise MappingError(f"a mapping was given ({text!r}) but the models have no stretchable stage: "
                           "they are identical in depth everywhere, or nothing in them repeats")
    parts = text.split("|")
    if len(parts) == 1:
        parts = parts * n_stages
    if len(parts) != n_stages:
        names = ", ".join(labels or [])
        raise MappingError(
            f"mapping has {len(parts)} stage entries joined by '|' but the models have {n_stages} stretchable "
            f"stage(s) ({names}); give one entry per stage or a single entry for all"
        )
    out: list[dict[int, list[int]] | None] = []
    for si, part in enumerate(parts):
        part = part.strip()
        if not part:
            out.append(None)
            continue
        where = f"stage {si}" + (f" ({labels[si]})" if labels else "")
        entries: dict[int, list[int]] = {}
        for entry in filter(None, (e.strip() for e in part.split(";"))):
            src, sep, dsts = entry.partition(":")
            try:
                if not sep:
                    raise ValueError
                i = int(src)
                js = [int(x) for x in dsts.split(",") if x.strip()]
            except ValueError:
                raise MappingError(f"{where}: malformed mapping entry {entry!r}; expected 'src:dst1,dst2' "
                                   "with block indices") from None
            if i in entries:
                raise MappingError(f"{where}: source block {i} appears twice in {part!r}; list its targets once")
            entries[i] = js
        out.append(entries)
    return out


def _sources_from_mapping(entries: dict[int, list[int]], n: int, m: int, has_b0: bool, where: str) -> list[int]:
    src_of: dict[int, int] = {}
    for i, js in entries.items():
        if not 0 <= i < n:
            raise MappingError(f"{where}: the mapping names source block {i} but the source stage has {n} "
                               f"block(s) (0..{n - 1})")
        for j in js:
            if not 0 <= j < m:
                raise MappingError(f"{where}: the mapping names target block {j} but the target stage has {m} "
                                   f"block(s) (0..{m - 1})")
            if j in src_of:
                raise MappingError(f"{where}: target block {j} is fed twice (by {src_of[j]} and {i}); "
                                   "every target block must be fed exactly once")
            src_of[j] = i
    missing = [j for j in range(m) if j not in src_of]
    if missing:
        raise MappingError(f"{where}: target block(s) {missing} are fed by no source block; every target block "
                           "must be fed exactly once")
    sources = [src_of[j] for j in range(m)]
    _check_block0(sources, has_b0, where)
    return sources


def _check_block0(sources: list[int], has_b0: bool, where: str) -> None:
    if not has_b0:
        return
    if sources and sources[0] != 0:
        raise MappingError(f"{where}: block 0 changes the shape and must map to block 0 ('0:0'), "
                           f"got target 0 fed by {sources[0]}")
    bad = [j for j, i in enumerate(sources) if i == 0 and j != 0]
    if bad:
        raise MappingError(f"{where}: block 0 changes the shape and cannot feed target block(s) {bad}")


def _strategy_sources(n: int, m: int, stretch: str, squeeze: str, where: str, block0: str | None,
                      dst_labels: Sequence[str] = (), grow: str | None = None) -> list[int]:
    if grow == "identity" and m > n and (n == 0 or (n == 1 and block0 is not None)):
        # nothing to copy: the new blocks are the target's own, grown as identities
        return [0] * n + [-1] * (m - n)
    if m == n:
        return list(range(n))
    if m == 0:
        return []
    if m < n:
        return _FUNCS[squeeze](n, m)
    if n == 1 and block0 is None:
        # a stage holding one period of identical blocks (found with the deeper
        # sibling's help): repeating that period is the only stretch there is
        return [0] * m
    if n >= 2:
        return _FUNCS[stretch](n, m)
    if n == 0:
        shown = ", ".join(list(dst_labels)[:3]) + (", ..." if len(dst_labels) > 3 else "")
        raise SegmentMismatchError(
            f"{where}: the target has {m} block(s) here ({shown}) and the source has none of that kind at this "
            "place: there is nothing to copy them from. Use a source that has at least one such block in that "
            "stage, or a target without them, or grow them as identities (grow='identity': a growth operator, "
            "not E-LTH)."
        )
    raise SegmentMismatchError(
        f"{where}: the source stage has a single block (block 0 = {block0}, which changes the shape) and the "
        f"target needs {m}: there is nothing to stretch from (block 0 is never copied). Use a source with at "
        "least 2 blocks in that stage (squeezing to 1 block works), or grow the new blocks as identities "
        "(grow='identity': a growth operator, not E-LTH)."
    )


# ---------------------------------------------------------------------------- the ticket


@dataclass
class Ticket:
    """A transferred ticket: ``mask`` (target parameter name -> bool tensor, one tensor
    per entry), ``weights`` (target state_dict key -> the source's tensor) and the
    ``plan``. ``apply(model)`` copies both into a target model.

    ``weights`` holds the source model's own tensors, not copies (the blocks a stretch
    replicates appear under several keys): treat them as read-only, or ``clone()``
    before editing in place. It has every key of the target's ``state_dict()``, the
    other names of tied tensors (GPT-2's ``lm_head.weight``) included, so
    ``dst.load_state_dict(ticket.weights, strict=True)`` takes it (keys in ``unmapped``
    excepted). safetensors users: clone before ``save_file``, which
    refuses shared tensors."""

    mask: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    plan: Plan
    src_mask: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    blocks: list[tuple[int, int, int, list[str]]] = field(default_factory=list, repr=False)
    unmapped: list[str] = field(default_factory=list)
    reinit: list[str] = field(default_factory=list)
    """Target tensors re-initialised instead of transferred (``head="reinit"``)."""
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    """Target state_dict key -> the source state_dict key its weights come from (what a
    streamed transfer reads from the source checkpoint)."""

    def sparsity(self) -> dict[str, float]:
        """Global sparsity of the source mask and of the transferred mask. The transfer keeps
        every block's own density; the global one drifts with the share of copied blocks."""
        return {"src": _masks.sparsity(self.src_mask), "dst": _masks.sparsity(self.mask)}

    def block_density(self) -> list[dict[str, Any]]:
        """Per target block of every stage (block 0 included): its source block and the
        density of its masked tensors (the source block's own: blocks are copied whole)."""
        rows = []
        for stage, j, i, names in self.blocks:
            sub = {n: self.mask[n] for n in names if n in self.mask}
            if sub:
                rows.append({"stage": stage, "label": self.plan.stages[stage].label, "dst_block": j,
                             "src_block": i, "density": _masks.density(sub)})
        return rows

    @property
    def meta_weights(self) -> list[str]:
        """Ticket weights on the meta device: shapes without values (the transfer was
        planned between meta models, or these came from a meta target). :meth:`apply`
        leaves the model's own values in those tensors."""
        return [k for k, v in self.weights.items() if v.is_meta]

    def apply(self, model: nn.Module, *, dense: bool = False) -> nn.Module:
        """Copy ``weights`` into ``model`` (into ``*_orig`` where it is already pruned) and
        install ``mask`` with :func:`elastigraph.masks.install` (bool mask buffers), or,
        with ``dense=True``, zero the pruned entries in place
        (:func:`elastigraph.masks.zero_pruned`): a plain model with no hooks and no memory
        beyond its own, whose zeros training does not keep. Returns ``model``.

        A ticket planned between meta models (shapes only, no values: cheap planning for
        big models) applies to a real model too: its mask is installed and the tensors
        of :attr:`meta_weights` keep the model's own values (there are none to copy).
        Applying to a meta model installs the mask on shapes, as a plan preview."""
        if not isinstance(model, nn.Module):
            raise ModelTypeError(f"Ticket.apply needs an nn.Module, got {type(model).__name__}")
        if not isinstance(dense, bool):
            raise ConfigError(f"Ticket.apply: dense must be True or False, got {dense!r}")
        meta_mask = [k for k, v in self.mask.items() if v.is_meta]
        if meta_mask:
            raise MaskError(f"this ticket's mask has {len(meta_mask)} tensor(s) on the meta device ({meta_mask[:3]}): "
                            "a mask needs values; transfer a real mask (masks.full_mask(model) or a mask file), "
                            "even between meta models")
        from .graph.capture import unwrap_compiled

        compiled, model = model, unwrap_compiled(model)  # a torch.compile wrapper: fill the module it holds
        label = type(model).__name__
        own = set(_masks.plain_state(model.state_dict(keep_vars=True), fold_mask=False))
        aliases = set(_masks.canonical_names(model))  # a tied tensor's other names follow its canonical one
        seen: set[int] = set()
        for n, b in model.named_buffers(remove_duplicate=False):  # buffers of a shared module, likewise
            if id(b) in seen:
                aliases.add(n)
            seen.add(id(b))
        own -= aliases
        missing = sorted(own - set(self.weights) - set(self.unmapped))
        extra = sorted(set(self.weights) - own - aliases)
        if missing or extra:
            parts = ([f"{len(extra)} ticket tensor(s) the model lacks ({extra[:4]}{' ...' if len(extra) > 4 else ''})"]
                     if extra else []) + ([f"{len(missing)} model tensor(s) the ticket does not cover "
                                           f"({missing[:4]}{' ...' if len(missing) > 4 else ''})"] if missing else [])
            raise SegmentMismatchError(
                f"this ticket was planned for {self.plan.dst} ({len(self.weights)} tensors) and does not fit {label}: "
                f"{'; '.join(parts)}; apply it to a model built like the transfer's target (same name and depth)"
            )
        targets: dict[str, torch.Tensor] = {}
        for key, value in self.weights.items():
            if key in aliases:  # copied under its canonical name: the tie carries it here
                continue
            mod_name, _, attr = key.rpartition(".")
            try:
                mod = model.get_submodule(mod_name)
            except AttributeError:
                mod = None
            t = None
            if mod is not None:
                t = getattr(mod, attr + "_orig", None)
                if not isinstance(t, torch.Tensor):
                    t = getattr(mod, attr, None)
            if not isinstance(t, torch.Tensor):
                raise SegmentMismatchError(f"ticket weight {key!r} (made for {self.plan.dst}) has no tensor in {label}; "
                                           "apply the ticket to the target model it was transferred onto")
            if tuple(t.shape) != tuple(value.shape):
                raise SegmentMismatchError(f"ticket weight {key!r} has shape {tuple(value.shape)} but {label}.{key} "
                                           f"has shape {tuple(t.shape)}")
            targets[key] = t
        with torch.no_grad():
            for key, t in targets.items():
                value = self.weights[key]
                if value.is_meta:
                    continue  # no values to copy: the model keeps its own (see meta_weights)
                if t.is_meta:
                    raise ModelTypeError(f"{label}.{key} is on the meta device but the ticket carries its values; "
                                         "apply the ticket to a model with real parameters (model.to_empty(device="
                                         "'cpu') first)")
                t.copy_(value)
        if dense:
            _masks.zero_pruned(model, self.mask, model_name=label)
        else:
            _masks.install(model, self.mask, model_name=label)
        return compiled

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        sp = self.sparsity()
        lines = [self.plan, Text(f"mask: {len(self.mask)} tensors, global sparsity {sp['src']:.2%} (source) -> "
                                 f"{sp['dst']:.2%} (target); weights: {len(self.weights)} tensors")]
        if self.unmapped:
            lines.append(Text(f"kept from the target (no source): {self.unmapped[:5]}", style="yellow"))
        meta = self.meta_weights
        if meta:
            lines.append(Text(f"{len(meta)} weight tensor(s) on the meta device (no values): apply() keeps the "
                              "model's own", style="yellow"))
        return Group(*lines)


# ---------------------------------------------------------------------------- transfer


def _plan_stages(mt: Matching, src: ModelGraph, dst: ModelGraph, strategy: str | None,
                 mapping: str | Plan | None, grow: str | None = None,
                 scores: Sequence[Sequence[float]] | None = None) -> tuple[str, list[StagePlan]]:
    labels = [s.label for s in mt.stages]
    stretch, squeeze = parse_strategy(strategy)
    name = f"{stretch}+{squeeze}"
    per_stage: list[dict[int, list[int]] | None] = [None] * len(mt.stages)
    if isinstance(mapping, Plan):
        if len(mapping.stages) != len(mt.stages):
            raise MappingError(f"the plan has {len(mapping.stages)} stage(s) but {src.name} -> {dst.name} has "
                               f"{len(mt.stages)} ({', '.join(labels)})")
        per_stage = [sp.mapping() for sp in mapping.stages]
        name = "plan"
    elif mapping is not None:
        per_stage = parse_mapping(mapping, len(mt.stages), labels)
        name = "mapping"
    out = []
    for pos, (sm, entries) in enumerate(zip(mt.stages, per_stage)):
        has_b0 = sm.has_block0
        n, m = len(sm.src_labels), len(sm.dst_labels)
        where = f"stage {sm.index} ({sm.label})"
        if entries is None and squeeze == "influence" and 1 <= m < n:
            sc = list(scores[pos]) if scores is not None else []
            if len(sc) != n:
                raise StrategyError(f"influence: {where} has {n} source blocks but {len(sc)} scored blocks; give a "
                                    "mapping instead")
            ranked = sorted(range(1, n), key=lambda i: (-sc[i] if sc[i] == sc[i] else float("inf"), i))
            sources = sorted([0] + ranked[: m - 1])  # block 0 kept, then the most influential, in order
        elif entries is None:
            try:
                sources = _strategy_sources(n, m, stretch, squeeze, where, sm.block0_label, sm.dst_labels, grow)
            except SegmentMismatchError:
                why = alternating_cause(src, dst, sm)  # the real cause, where the blocks alternate in kinds
                if why:
                    raise SegmentMismatchError(f"{where}: {src.name} and {dst.name} do not line up: {why}") from None
                raise
        else:
            sources = _sources_from_mapping(entries, n, m, has_b0, where)
        out.append(StagePlan(index=sm.index, label=sm.label, block0=sm.block0_label,
                             src_blocks=list(sm.src_labels), dst_blocks=list(sm.dst_labels), sources=sources))
    return name, out


def _grow_identity(grown: list, mt: Matching, src: ModelGraph, dst: ModelGraph, dst_model: nn.Module,
                   smask: Mapping[str, torch.Tensor], weights: dict, dst_mask: dict) -> None:
    """Fill ``weights`` and ``dst_mask`` for the blocks grown as identities (see ``grow``)."""
    own = _masks.plain_state(dst_model.state_dict(), fold_mask=False)
    for sm, du in grown:
        shapes = [s_ for _, s_ in du.params]
        cands = sorted(mt.stages, key=lambda st: abs(st.index - sm.index))
        su = next((u for st in cands for u in st.src_units if [s_ for _, s_ in u.params] == shapes), None)
        if su is None:
            raise SegmentMismatchError(
                f"grow='identity': target block {du.label} (stage {sm.index}, {sm.label}) has no source block of the "
                "same tensor shapes to take its mask from; use a source with such a block")
        for (dn, _), (sn, _) in zip(du.params, su.params):
            if sn in smask:
                dst_mask[dn] = smask[sn].clone()
        zero: set[str] = set()
        for r in range(du.start, du.stop):
            ps = dst.regions[r].params
            if ps:  # the region's last layer with weights: its output is the residual branch's
                last = ps[-1][0].rpartition(".")[0]
                zero |= {n for n, _ in ps if n.rpartition(".")[0] == last}
        for n, _ in du.params + du.buffers:
            t = own[n].detach().clone()
            if n in zero:
                t.zero_()
            weights[n] = t


def _same_tensors(a: nn.Module, b: nn.Module) -> int:
    """The number of state_dict tensors if ``a`` and ``b`` have the same names and shapes, else 0."""
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    return len(sa) if sa == {k: tuple(v.shape) for k, v in b.state_dict().items()} else 0


def _pairs(a: list[tuple[str, tuple]], b: list[tuple[str, tuple]], what: str) -> list[tuple[str, str]]:
    """Pair dst tensors ``a`` with src tensors ``b`` by position (shapes must agree)."""
    if len(a) != len(b) or any(sa != sb for (_, sa), (_, sb) in zip(a, b)):
        raise SegmentMismatchError(f"{what}: tensors differ ({[(n, s) for n, s in a][:3]} vs {[(n, s) for n, s in b][:3]})")
    return [(na, nb) for (na, _), (nb, _) in zip(a, b)]


def transfer(
    src_model: nn.Module,
    src_mask: Mapping[str, torch.Tensor] | None,
    dst_model: nn.Module,
    *,
    strategy: str | None = None,
    mapping: str | Plan | None = None,
    example_input: Any = None,
    leaf_modules: Sequence[type] = (),
    head: str = "keep",
    seed: int = 0,
    src_graph: ModelGraph | None = None,
    dst_graph: ModelGraph | None = None,
    grow: str | None = None,
    calibration: Any = None,
) -> Ticket:
    """Transfer a ticket (``src_mask`` + ``src_model``'s weights, its rewind point) onto
    ``dst_model``, a deeper or shallower model of the same family.

    ``src_mask``: ``{parameter name: 0/1 or bool tensor}`` over any subset of the source's
    parameters, or ``None`` to read masks installed with ``torch.nn.utils.prune``.
    ``strategy``: see :func:`strategies` (default: append + keep-first);
    ``mapping``: the paper's block-mapping string (``"0:0;1:1,2;2:3,4"``, stages joined by
    ``|``) or a :class:`Plan`. Neither model is modified.

    ``head``: ``"keep"`` (default) transfers the head like any fixed part, so heads of
    different shapes (another class count) are a :class:`SegmentMismatchError`;
    ``"reinit"`` is for a target trained on another task (E-LTH Table 6): the target's
    head keeps its own (fresh) weights and gets a random mask, seeded by ``seed``, with
    the density of the source ticket's head (see :func:`transfer_reinit_head`).

    ``src_graph``/``dst_graph``: the models' :func:`~elastigraph.graph.analyze` results,
    where the caller has them (made with the same ``example_input`` and ``leaf_modules``),
    so that the models are not traced again.

    ``grow``: ``None`` (default) refuses a stage whose source has nothing to copy (only
    its shape-changing block 0, or no block of the kind); ``"identity"`` is a growth
    operator, not E-LTH (Net2Net's deeper network, LiGO): each new block of such a stage
    keeps the target's own weights with its residual branch zeroed (in every region of the
    block, the last layer with weights is set to 0), so it starts as an identity, and it
    takes the mask of the nearest source block of the same tensor shapes (nearest stage
    first). The plan marks those blocks with source ``-1``.

    ``calibration``: batches of ``src_model``'s inputs (or ``(inputs, targets)`` pairs)
    for the data-scored squeeze strategy ``"influence"`` (:mod:`elastigraph.influence`);
    unused otherwise."""
    check_seed(seed, "transfer: seed")
    if grow not in (None, "identity"):
        raise StrategyError(f"grow={grow!r}: use None (default: refuse stages with nothing to copy) or 'identity' "
                            "(new blocks start as identities: a growth operator, not E-LTH)")
    if head == "reinit":
        return transfer_reinit_head(src_model, src_mask, dst_model, strategy=strategy, mapping=mapping,
                                    example_input=example_input, leaf_modules=leaf_modules, seed=seed,
                                    src_graph=src_graph, dst_graph=dst_graph)
    if head != "keep":
        raise StrategyError(f"head={head!r}: use 'keep' (transfer the head; default) or 'reinit' (a new random head "
                            "mask at the ticket's head density, for a target trained on another task)")
    for what, m in (("src_model", src_model), ("dst_model", dst_model)):
        if not isinstance(m, nn.Module):
            raise ModelTypeError(f"{what} must be an nn.Module, got {type(m).__name__}")
    from .graph.capture import unwrap_compiled

    src_model, dst_model = unwrap_compiled(src_model), unwrap_compiled(dst_model)  # torch.compile wrappers
    if strategy is not None and mapping is not None:
        raise StrategyError("pass either strategy= or mapping=, not both")
    src_label, dst_label = f"source {type(src_model).__name__}", f"target {type(dst_model).__name__}"
    if src_mask is None:
        smask = _masks.from_model(src_model)
        if not smask:
            raise MaskError(f"src_mask is None but {src_label} has no torch.nn.utils.prune masks installed; "
                            "pass a mask dict {parameter name: bool tensor}")
    else:
        smask = _masks.check_mask(src_model, src_mask, model_name=src_label)
        if not smask:
            raise MaskError(f"src_mask for {src_label} is empty: a ticket over no weights prunes nothing; pass a mask "
                            "over the pruned weights (elastigraph.masks.full_mask(model) lists the prunable ones)")
    src = _analysed(src_graph, src_model, example_input, leaf_modules, src_label, "src_graph")
    # the target sees exactly the source's input, so that activation shapes compare
    shared = example_input if example_input is not None else [torch.Size(s) for s in src.traced.input_shapes]
    dst = _analysed(dst_graph, dst_model, shared, leaf_modules, dst_label, "dst_graph", src)
    try:
        mt = match(src, dst)
    except SegmentMismatchError as e:
        same = _same_tensors(src_model, dst_model)
        if same:
            raise SegmentMismatchError(
                f"{src_label} and {dst_label} have the same {same} tensors (names and shapes): their depth setting "
                "changes how often shared blocks run (one layer reused across the depth, as in ALBERT), not which "
                "tensors exist, so there is nothing to stretch or squeeze. The ticket applies to the target as it "
                "is: dst.load_state_dict(src.state_dict()) and elastigraph.masks.install(dst, mask).") from None
        sh, dh = head_tensors(src), head_tensors(dst)
        # one output layer with other shapes (another class count), not a last region that
        # differs because blocks before it could not be told apart
        if ([re.sub(r"\d+", "#", n) for n, _ in sh] == [re.sub(r"\d+", "#", n) for n, _ in dh]
                and [s_ for _, s_ in sh] != [s_ for _, s_ in dh]):
            raise SegmentMismatchError(f"{e} The heads differ ({sh} vs {dh}): for a target trained on another task, "
                                       "pass head='reinit' to give it a new head at the ticket's head density.") from None
        raise
    scores = None
    if mapping is None and parse_strategy(strategy)[1] == "influence":
        if calibration is None:
            raise StrategyError("the 'influence' squeeze scores blocks on data: pass calibration= (a few batches of "
                                f"{src_label}'s inputs), or use 'keep-first' / 'even'")
        from .influence import block_influence

        scores = block_influence(src_model, calibration, graph=src)
        if len(scores) != len(mt.stages):
            raise StrategyError(f"influence: the transfer pairs {len(mt.stages)} stage(s) but {src_label}'s analysis "
                                f"scored {len(scores)}; give a mapping instead")
    strat_name, stage_plans = _plan_stages(mt, src, dst, strategy, mapping, grow, scores)
    # never silently wrong: every target block from one whole source block of its stage
    verify(src, dst, mt, [sp.sources for sp in stage_plans])
    plan = Plan(src=src_label, dst=dst_label, strategy=strat_name, stages=stage_plans, fixed_regions=len(mt.fixed))

    # dst tensor name -> src tensor name, parameters and buffers
    pmap: dict[str, str] = {}
    bmap: dict[str, str] = {}
    for a, b in mt.fixed:
        ra, rb = src.regions[a], dst.regions[b]
        pmap.update(_pairs(rb.params, ra.params, f"{src_label} region {a} vs {dst_label} region {b}"))
        bmap.update(_pairs(rb.buffers, ra.buffers, f"{src_label} region {a} vs {dst_label} region {b}"))
    block_rows: list[tuple[int, int, int, list[str]]] = []
    unit_names: list[list[str]] = []
    grown: list = []
    for sm, sp in zip(mt.stages, stage_plans):
        off = 1 if sm.has_block0 else 0
        if off:
            block_rows.append((sm.index, 0, 0, [n for r in range(*sm.dst_block0) for n, _ in dst.regions[r].params]))
        for j, du in enumerate(sm.dst_units):
            if sp.sources[j + off] < 0:
                grown.append((sm, du))
                block_rows.append((sm.index, j + off, -1, [n for n, _ in du.params]))
                continue
            su = sm.src_units[sp.sources[j + off] - off]
            pmap.update(_pairs(du.params, su.params, f"{sm.label}: {su.label} -> {du.label}"))
            bmap.update(_pairs(du.buffers, su.buffers, f"{sm.label}: {su.label} -> {du.label}"))
            block_rows.append((sm.index, j + off, sp.sources[j + off], [n for n, _ in du.params]))
            unit_names.append([n for n, _ in du.params + du.buffers])
    # tensors no graph node reads (unused modules): same name and shape, else left to the target
    src_unowned = dict(src.decomposition.unowned_params + src.decomposition.unowned_buffers)
    unmapped = []
    for n, s in dst.decomposition.unowned_params + dst.decomposition.unowned_buffers:
        if src_unowned.get(n) == s:
            (pmap if (n, s) in dst.decomposition.unowned_params else bmap)[n] = n
        else:
            unmapped.append(n)

    # the second, independent check: the plan against the two module trees alone
    _provenance.check(src_model, dst_model, {**pmap, **bmap}, unit_names, src_name=src_label, dst_name=dst_label)

    # the raw (rewound) values of a pruned source: its mask travels separately
    state = _masks.plain_state(src_model.state_dict(), fold_mask=False)
    dst_state = _masks.plain_state(dst_model.state_dict(keep_vars=True), fold_mask=False)
    src_of = {k: v for k, v in list(pmap.items()) + list(bmap.items()) if v in state}
    # every other name of a tensor the target shares (a tied LM head, the buffers of a
    # module used twice) follows its first name, so load_state_dict(strict=True) takes
    # the ticket's weights
    first: dict[int, str] = {}
    for k, v in dst_state.items():
        first.setdefault(id(v), k)
        if k not in src_of and first[id(v)] in src_of:
            src_of[k] = src_of[first[id(v)]]
    # target state_dict order; values are the source's tensors themselves (no copies:
    # a stretched ViT-B would otherwise allocate hundreds of MB here)
    weights = {k: state[src_of[k]].detach() for k in dst_state if k in src_of}
    used: set[str] = set()
    dst_mask = {}
    for k, v in pmap.items():  # copies of a block get their own tensors
        if v in smask:
            dst_mask[k] = smask[v].clone() if v in used else smask[v]
            used.add(v)
    if grown:
        _grow_identity(grown, mt, src, dst, dst_model, smask, weights, dst_mask)
        weights = {k: weights[k] for k in dst_state if k in weights}
    order = {n: i for i, (n, _) in enumerate(dst_model.named_parameters())}
    dst_mask = dict(sorted(dst_mask.items(), key=lambda kv: order.get(kv[0], order.get(kv[0] + "_orig", 0))))
    return Ticket(mask=dst_mask, weights=weights, plan=plan, src_mask=smask, blocks=block_rows, unmapped=unmapped,
                  sources={k: src_of[k] for k in weights if k in src_of})  # grown blocks: none


def _analysed(mg: ModelGraph | None, model: nn.Module, example_input: Any, leaf_modules: Sequence[type], label: str,
              what: str, src: ModelGraph | None = None) -> ModelGraph:
    """``analyze(model)``, or ``mg`` where the caller passed the model's analysis (checked:
    of this very model and, for the target, of the source's input shapes)."""
    from .errors import TraceError
    from .graph.capture import unwrap_compiled

    if mg is None:
        return analyze(model, example_input, leaf_modules=leaf_modules, name=label)
    if not isinstance(mg, ModelGraph):
        raise ModelTypeError(f"{what} must be the ModelGraph that elastigraph.analyze returns for the {label}, "
                             f"got {type(mg).__name__}")
    if mg.traced.gm is not unwrap_compiled(model):
        raise TraceError(f"{what} ({mg.name}) is the analysis of another model than the {label}; pass "
                         f"analyze() of that model, or leave {what} out")
    if src is not None and tuple(mg.traced.input_shapes) != tuple(src.traced.input_shapes):
        raise TraceError(f"{what} was traced with input shapes {list(mg.traced.input_shapes)}, the source with "
                         f"{list(src.traced.input_shapes)}: both models must see the same input (example_input=)")
    return mg


# ---------------------------------------------------------------------------- another task


def head_tensors(mg: ModelGraph) -> list[tuple[str, tuple]]:
    """The head of a traced model: the parameters of its last region that has any (the
    output layer; ``[(name, shape), ...]``)."""
    for r in reversed(mg.regions):
        if r.params:
            return list(r.params)
    return []


def transfer_reinit_head(
    src_model: nn.Module,
    src_mask: Mapping[str, torch.Tensor] | None,
    dst_model: nn.Module,
    *,
    strategy: str | None = None,
    mapping: str | Plan | None = None,
    example_input: Any = None,
    leaf_modules: Sequence[type] = (),
    seed: int = 0,
    src_graph: ModelGraph | None = None,
    dst_graph: ModelGraph | None = None,
) -> Ticket:
    """:func:`transfer` for a target trained on another task: everything but the head is
    transferred as usual; the target's head (:func:`head_tensors`, of any shape) keeps
    ``dst_model``'s own weights, and each of its masked tensors gets a random mask
    (``seed``) keeping ``round(d * numel)`` entries, ``d`` being the density of the
    source head tensor at the same position. ``Ticket.reinit`` lists those tensors.
    ``src_graph``/``dst_graph``: as for :func:`transfer`."""
    import copy

    seed = check_seed(seed, "transfer_reinit_head: seed")
    if not isinstance(dst_model, nn.Module) or not isinstance(src_model, nn.Module):
        raise ModelTypeError("src_model and dst_model must be nn.Modules")
    src_label, dst_label = f"source {type(src_model).__name__}", f"target {type(dst_model).__name__}"
    src_g = _analysed(src_graph, src_model, example_input, leaf_modules, src_label, "src_graph")
    shared = example_input if example_input is not None else [torch.Size(s) for s in src_g.traced.input_shapes]
    dst_g = _analysed(dst_graph, dst_model, shared, leaf_modules, dst_label, "dst_graph", src_g)
    sh, dh = head_tensors(src_g), head_tensors(dst_g)
    if not sh or len(sh) != len(dh) or any(len(a[1]) != len(b[1]) for a, b in zip(sh, dh)):
        raise SegmentMismatchError(f"head='reinit': the heads of {src_label} ({sh}) and {dst_label} ({dh}) are not "
                                   "layers of one kind (same tensors, same ranks); only their sizes may differ")
    # a stand-in target whose head has the source's shapes, so the rest can be matched
    proxy = copy.deepcopy(dst_model)
    for (dn, dshape), (_, sshape) in zip(dh, sh):
        mod_name, _, attr = dn.rpartition(".")
        mod = proxy.get_submodule(mod_name)
        old = getattr(mod, attr)
        setattr(mod, attr, nn.Parameter(torch.zeros(sshape, dtype=old.dtype, device=old.device),
                                        requires_grad=old.requires_grad))
        # sizes the module records (Linear.out_features, Conv.out_channels) enter the
        # graph signatures: give them the source's values too
        resize = {d: s_ for d, s_ in zip(dshape, sshape) if d != s_}
        for k, v in list(vars(mod).items()):
            if type(v) is int and v in resize:
                setattr(mod, k, resize[v])
    # the source is traced once: its analysis is reused; the stand-in is a new model
    t = transfer(src_model, src_mask, proxy, strategy=strategy, mapping=mapping, example_input=shared,
                 leaf_modules=leaf_modules, src_graph=src_g)
    head_names = {n for n, _ in dh}
    state = _masks.plain_state(dst_model.state_dict(), fold_mask=False)
    alias = _masks.canonical_names(dst_model)
    weights = {k: (state[alias.get(k, k)].detach() if alias.get(k, k) in head_names else v)
               for k, v in t.weights.items()}
    g = torch.Generator().manual_seed(seed)
    mask = dict(t.mask)
    for (dn, dshape), (sn, _) in zip(dh, sh):
        if dn not in mask:
            continue
        n = math.prod(dshape)
        keep = round(_masks.density({sn: t.src_mask[sn]}) * n)
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=g)[:keep]] = True
        mask[dn] = m.view(dshape)
    plan = t.plan
    plan.dst = dst_label
    return Ticket(mask=mask, weights=weights, plan=plan, src_mask=t.src_mask, blocks=t.blocks,
                  unmapped=t.unmapped, reinit=[n for n, _ in dh])


__all__ = ["transfer", "transfer_reinit_head", "head_tensors", "Ticket", "Plan", "StagePlan", "strategies", "parse_mapping", "stretch_append", "stretch_after_run",
           "stretch_interpolate", "squeeze_keep_first", "squeeze_even", "DEFAULT_STRATEGY"]
