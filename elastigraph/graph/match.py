"""Pair the structure of a source and a target model: fixed regions one to one, and
stages whose unit counts may differ.

Both models are read as a sequence of tokens: a *unit* wherever the regions match a
unit pattern that either model repeats, a *fixed* region elsewhere. Consecutive units of
one pattern form a stage. Where the sequences disagree because one model holds a single
shape-preserving block the other lacks (a stage of 1 vs 0 units, which neither model
repeats), that block becomes a pattern too; anything else is a
:class:`~elastigraph.errors.SegmentMismatchError` naming the first mismatch and, where
the analysis finds one, its cause (blocks a second tensor flows around, blocks of
alternating kinds whose depths differ by no whole repeat). Units never cut a module and
a run of units is split where their parent module changes.

:func:`verify` checks a finished plan against both graphs before any tensor moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SegmentMismatchError
from . import ModelGraph, block_label, stage_label
from .build import SOURCE
from .units import Region, Unit, crossing_modules, find_block0, make_unit, module_regions, scope_of, stage_key

_MAX_SINGLE = 48  # longest single block (in regions) looked for when sequences disagree


@dataclass
class StageMatch:
    """One stretchable stage in both models. ``*_units`` exclude block 0."""

    index: int
    label: str
    src_units: list[Unit]
    dst_units: list[Unit]
    src_block0: tuple[int, int] | None
    dst_block0: tuple[int, int] | None
    block0_label: str | None
    src_labels: list[str]
    dst_labels: list[str]

    @property
    def has_block0(self) -> bool:
        return self.src_block0 is not None


@dataclass
class Matching:
    """Stages plus the one-to-one pairs of fixed regions (src index, dst index)."""

    stages: list[StageMatch]
    fixed: list[tuple[int, int]]


def _tokenize(ids: list[int], patterns: list[tuple[int, ...]], key_of=None, whole=None) -> list[tuple]:
    """('fixed', region) or ('seg', pattern index, [unit starts]) tokens; consecutive
    units join one token only while ``key_of(start, stop)`` (their parent module) agrees;
    a match for which ``whole(start, stop)`` is false (it cuts a module) is no unit."""
    order = sorted(range(len(patterns)), key=lambda i: -len(patterns[i]))
    toks: list[tuple] = []
    i, k = 0, len(ids)
    while i < k:
        hit = None
        for pi in order:
            p = patterns[pi]
            if tuple(ids[i:i + len(p)]) == p and (whole is None or whole(i, i + len(p))):
                hit = pi
                break
        if hit is None:
            toks.append(("fixed", i))
            i += 1
            continue
        plen = len(patterns[hit])
        if (toks and toks[-1][0] == "seg" and toks[-1][1] == hit and toks[-1][2][-1] + plen == i
                and (key_of is None or key_of(i - plen, i) == key_of(i, i + plen))):
            toks[-1][2].append(i)
        else:
            toks.append(("seg", hit, [i]))
        i += len(patterns[hit])
    return toks


def _pos(tok: tuple) -> int:
    return tok[1] if tok[0] == "fixed" else tok[2][0]


def _describe(mg: ModelGraph, r: int) -> str:
    if r >= len(mg.regions):
        return "the end of the model"
    reg = mg.regions[r]
    g = mg.graph
    ops = [g.nodes[n]["target"] if g.nodes[n]["op"] in ("call_module", "placeholder") else g.nodes[n]["kind"]
           for n in reg.nodes if g.nodes[n]["op"] != "get_attr"]
    more = f", ... {len(ops) - 4} more" if len(ops) > 4 else ""
    return f"region {r} ({', '.join(ops[:4])}{more}; shape {reg.in_shape} -> {reg.out_shape})"


def _single_block(regions: list[Region], ids: list[int], at: int, other: list[int], other_at: int) -> int | None:
    """Length q of a weight-carrying, shape-preserving group of regions at ``at`` after
    which the sequences line up again (``ids[at+q] == other[other_at]``), or None."""
    for q in range(1, _MAX_SINGLE + 1):
        if at + q > len(ids):
            return None
        grp = regions[at:at + q]
        if not any(r.has_weights for r in grp) or not (grp[0].anchor & 3):
            continue
        if grp[0].in_shape != grp[-1].out_shape:
            continue
        rest = ids[at + q:at + q + 1]
        if rest == other[other_at:other_at + 1] and rest:
            return q
    return None


def match(src: ModelGraph, dst: ModelGraph) -> Matching:
    """Align ``src`` and ``dst`` (see module doc); raises SegmentMismatchError."""
    table: dict = {}
    s_ids = [table.setdefault(r.signature, len(table)) for r in src.regions]
    d_ids = [table.setdefault(r.signature, len(table)) for r in dst.regions]
    patterns: list[tuple[int, ...]] = []
    for mg, ids in ((src, s_ids), (dst, d_ids)):
        for seg in mg.segments:
            u = seg.units[0]
            p = tuple(ids[u.start:u.stop])
            if p not in patterns:
                patterns.append(p)
    def keys(mg: ModelGraph):
        cache: dict[tuple[int, int], tuple] = {}

        def key_of(a: int, b: int) -> tuple:
            if (a, b) not in cache:
                cache[(a, b)] = stage_key(mg.graph, mg.regions, a, b)
            return cache[(a, b)]
        return key_of

    def wholes(mg: ModelGraph):
        cache: dict[tuple[int, int], bool] = {}

        def whole(a: int, b: int) -> bool:
            if (a, b) not in cache:
                cache[(a, b)] = not crossing_modules(mg.graph, mg.regions, a, b)
            return cache[(a, b)]
        return whole

    s_key, d_key, s_whole, d_whole = keys(src), keys(dst), wholes(src), wholes(dst)
    for _ in range(64):
        st, dt = _tokenize(s_ids, patterns, s_key, s_whole), _tokenize(d_ids, patterns, d_key, d_whole)
        pairs, problem = _align(st, dt, s_ids, d_ids)
        if problem is None:
            return _build(src, dst, st, dt, pairs, patterns)
        a, b = problem
        for mg, ids, r, other in ((dst, d_ids, b, src.name), (src, s_ids, a, dst.name)):
            why = _partial_unit(mg, ids, r, other)
            if why:  # a block of an alternating stage: no single-block stage can explain it
                raise SegmentMismatchError(f"{src.name} and {dst.name} do not line up: {why}")
        q = _single_block(src.regions, s_ids, a, d_ids, b)
        if q is not None and s_whole(a, a + q) and tuple(s_ids[a:a + q]) not in patterns:
            patterns.append(tuple(s_ids[a:a + q]))
            continue
        q = _single_block(dst.regions, d_ids, b, s_ids, a)
        if q is not None and d_whole(b, b + q) and tuple(d_ids[b:b + q]) not in patterns:
            patterns.append(tuple(d_ids[b:b + q]))
            continue
        break
    raise SegmentMismatchError(mismatch_message(src, dst, a, b))


def _partial_unit(mg: ModelGraph, ids: list[int], r: int, other: str, repeat_only: bool = False) -> str | None:
    """If region ``r`` starts a block of a stage whose sibling blocks come in several
    kinds that repeat (regular/shifted, with/without SE), say that the stage's depths do
    not differ by whole repeats."""
    g = mg.graph
    held = module_regions(g, mg.regions)
    types = g.graph.get("module_types", {})
    containers = g.graph.get("containers", set())
    starts = sorted((m for m, rs in held.items() if m and min(rs) == r and m not in containers
                     and len(rs) == max(rs) - r + 1), key=lambda m: m.count("."))
    for m in starts:
        parent = m.rpartition(".")[0]
        sibs = sorted((x for x, rs in held.items() if x.rpartition(".")[0] == parent and types.get(x) == types.get(m)
                       and len(rs) == max(rs) - min(rs) + 1), key=lambda x: min(held[x]))
        if len(sibs) < 2 or m not in sibs:
            continue
        kinds = [tuple(ids[min(held[x]):max(held[x]) + 1]) for x in sibs]
        p = next(q for q in range(1, len(kinds) + 1) if all(kinds[i] == kinds[i + q] for i in range(len(kinds) - q)))
        if p < 2 or p >= len(kinds):
            return None
        first = sibs[kinds.index(kinds[sibs.index(m)])]
        if repeat_only and first == m:  # name a block that repeats an earlier kind
            return None
        return (f"{mg.name} has block `{m}` in stage `{parent or mg.name}`, of the same kind as `{first}`, where "
                f"{other} has none: the blocks of that stage come in {p} kinds that alternate "
                f"({', '.join(sibs[:p])}, ...), and such a stage is stretched or squeezed only by whole repeats of "
                f"{p} blocks. Use depths for that stage that differ by a multiple of {p}.")
    return None


def alternating_cause(src: ModelGraph, dst: ModelGraph, sm: "StageMatch") -> str | None:
    """If the blocks of stage ``sm`` come in kinds that alternate (GCViT's local/global
    attention, Twins' local/global blocks) in the deeper of the two models, the sentence
    that says so (their depths must differ by whole periods), else None."""
    table: dict = {}
    ids = {id(mg): [table.setdefault(r.signature, len(table)) for r in mg.regions] for mg in (src, dst)}
    for mg, units, b0, other in ((dst, sm.dst_units, sm.dst_block0, src.name), (src, sm.src_units, sm.src_block0, dst.name)):
        starts = ([b0[0]] if b0 else []) + [u.start for u in units]
        if not starts:
            continue
        stop = units[-1].stop if units else b0[1]
        for r in range(min(starts), stop):
            why = _partial_unit(mg, ids[id(mg)], r, other, repeat_only=True)
            if why:
                return why
    return None


def mismatch_message(src: ModelGraph, dst: ModelGraph, a: int, b: int) -> str:
    """Why regions ``a`` (src) and ``b`` (dst) do not line up, as found by the analysis."""
    for mg, r in ((src, a), (dst, b)):
        why = explain_region(mg, r)
        if why:
            return (f"{src.name} and {dst.name} do not line up at {src.name} {_describe(src, a)} vs {dst.name} "
                    f"{_describe(dst, b)}: {why}")
    return (f"{src.name} and {dst.name} do not line up: the first mismatch is {src.name} "
            f"{_describe(src, a)} vs {dst.name} {_describe(dst, b)}. Transfer needs models of one family "
            "that differ only in how many identical blocks each stage repeats.")


def explain_region(mg: ModelGraph, r: int) -> str | None:
    """If region ``r`` holds several sibling blocks (modules of one type under one parent)
    as one piece, say so and name the value that flows around them, else None."""
    if r >= len(mg.regions):
        return None
    g = mg.graph
    reg = mg.regions[r]
    held = module_regions(g, mg.regions)
    types = g.graph.get("module_types", {})
    leaves = {g.nodes[n]["target"] for n in reg.nodes if g.nodes[n]["op"] == "call_module"}
    inside = [m for m, rs in held.items() if rs == {r} and m and m not in leaves]  # blocks, not layers
    by_parent: dict[tuple[str, str], list[str]] = {}
    for m in inside:
        by_parent.setdefault((m.rpartition(".")[0], types.get(m, "")), []).append(m)
    groups = [ms for ms in by_parent.values() if len(ms) >= 2]
    if not groups:
        return None
    # the outermost siblings, and of those the ones that run most of the region (EfficientViM's
    # stages, not the per-stage norms applied to their outputs)
    runs = {m: sum(1 for n in reg.nodes if m in scope_of(g, n, with_leaf=True)) for ms in groups for m in ms}
    blocks = min(groups, key=lambda ms: (ms[0].count("."), -sum(runs[m] for m in ms), -len(ms)))
    parent = blocks[0].rpartition(".")[0] or mg.name
    idx = {n: g.nodes[n]["index"] for n in reg.nodes}
    in_blocks = [n for n in reg.nodes if any(m in blocks for m in scope_of(g, n, with_leaf=True))]
    first, last = min(idx[n] for n in in_blocks), max(idx[n] for n in in_blocks)
    around = None
    for u in [reg.entry] + reg.nodes:
        if u == SOURCE or g.nodes[u]["index"] >= first:
            continue
        if any(v in idx and idx[v] > last for v in g.successors(u)):
            around = u
            break
    where = f"`{parent}` ({len(blocks)} blocks, {blocks[0]} .. {blocks[-1]}) is one region"
    if around is None:
        return (f"{where} of {mg.name}: no single tensor enters and leaves each of its blocks, so they cannot be "
                "told apart and repeated")
    return (f"{where} of {mg.name}: a value computed before its first block is used after its last one "
            f"(node `{around}`, {g.nodes[around]['kind']}), so its blocks cannot be told apart and repeated. "
            "elastigraph repeats only blocks that a single tensor enters and leaves.")


def _align(st: list[tuple], dt: list[tuple], s_ids: list[int], d_ids: list[int]):
    """Pair tokens; a stage present in one model only gets 0 units in the other."""
    pairs: list[tuple] = []
    i = j = 0
    while i < len(st) or j < len(dt):
        s = st[i] if i < len(st) else None
        d = dt[j] if j < len(dt) else None
        if s is not None and d is not None and s[0] == "seg" and d[0] == "seg" and s[1] == d[1]:
            pairs.append((s, d)); i += 1; j += 1
        elif s is not None and s[0] == "seg":
            pairs.append((s, None)); i += 1
        elif d is not None and d[0] == "seg":
            pairs.append((None, d)); j += 1
        elif s is not None and d is not None and s_ids[s[1]] == d_ids[d[1]]:
            pairs.append((s, d)); i += 1; j += 1
        else:
            a = s[1] if s is not None else len(s_ids)
            b = d[1] if d is not None else len(d_ids)
            return pairs, (a, b)
    return pairs, None


def _build(src: ModelGraph, dst: ModelGraph, st: list[tuple], dt: list[tuple], pairs: list[tuple],
           patterns: list[tuple[int, ...]]) -> Matching:
    fixed: list[tuple[int, int]] = []
    stages: list[StageMatch] = []
    s_lower = d_lower = 0
    for k, (s, d) in enumerate(pairs):
        if s is not None and s[0] == "fixed":
            fixed.append((s[1], d[1]))
            continue
        plen = len(patterns[(s or d)[1]])
        s_units = [make_unit(src.graph, src.regions, a, a + plen) for a in (s[2] if s else [])]
        d_units = [make_unit(dst.graph, dst.regions, a, a + plen) for a in (d[2] if d else [])]
        s_at = s[2][0] if s else _next_pos(pairs, k, 0, len(src.regions))
        d_at = d[2][0] if d else _next_pos(pairs, k, 1, len(dst.regions))
        if s_units:
            b0 = find_block0(src.graph, src.regions, s_at, plen, (s_units[0].start, s_units[0].stop), s_lower)
            ref, ref_units = src, s_units
        else:
            b0 = find_block0(dst.graph, dst.regions, d_at, plen, (d_units[0].start, d_units[0].stop), d_lower)
            ref, ref_units = dst, d_units
        s_b0 = d_b0 = None
        b0_label = None
        if b0 is not None:
            n = b0[1] - b0[0]
            s_b0, d_b0 = (s_at - n, s_at), (d_at - n, d_at)
            b0_label = block_label(ref.graph, ref.regions, b0)  # its regions stay in ``fixed``
        label = stage_label(ref.graph, ref.regions, ref_units[0])
        # each side names its own block 0 (VGG-(2,2,2) vs (4,4,4): source layers.3, target layers.5)
        src_b0l = [_side_label(src, s_b0, b0_label)] if b0 is not None else []
        dst_b0l = [_side_label(dst, d_b0, b0_label)] if b0 is not None else []
        stages.append(StageMatch(
            index=len(stages), label=label, src_units=s_units, dst_units=d_units, src_block0=s_b0, dst_block0=d_b0,
            block0_label=b0_label, src_labels=src_b0l + [u.label for u in s_units],
            dst_labels=dst_b0l + [u.label for u in d_units],
        ))
        s_lower = s_units[-1].stop if s_units else s_at
        d_lower = d_units[-1].stop if d_units else d_at
    return Matching(stages=stages, fixed=fixed)


def _side_label(g: ModelGraph, span: tuple[int, int] | None, fallback: str | None) -> str | None:
    """The label of block 0 on one side (``span`` is its regions there)."""
    if span is None or span[0] < 0 or span[1] > len(g.regions) or span[0] >= span[1]:
        return fallback
    return block_label(g.graph, g.regions, span)


def _next_pos(pairs: list[tuple], k: int, side: int, end: int) -> int:
    for s_d in pairs[k + 1:]:
        t = s_d[side]
        if t is not None:
            return _pos(t)
    return end


# ---------------------------------------------------------------------------- verification


def _role(names: list[str]) -> list[tuple]:
    """Each tensor's place inside its unit, from the names alone: the part below the
    unit's common module prefix, every child index replaced by its rank among the
    indices the unit uses at that place (``layers.0.blocks.{2,3}`` -> 0, 1 for a pair of
    blocks; ``blocks.2`` with ``gammas.2`` -> 0 and 0)."""
    split = [n.split(".") for n in names]
    k = 0
    while split and all(len(s) > k + 1 for s in split) and len({s[k] for s in split}) == 1:
        k += 1
    seen: dict[tuple, list[str]] = {}
    out = []
    for s in split:
        role: list = []
        for part in s[k:]:
            if part.isdigit():
                vals = seen.setdefault(tuple(role), [])
                if part not in vals:
                    vals.append(part)
                role.append(vals.index(part))
            else:
                role.append(part)
        out.append(tuple(role))
    return out


def _mod(key: tuple[str, ...], mg: ModelGraph) -> str:
    return key[-1] if key else f"the top level of {mg.name}"


def unit_problem(mg: ModelGraph, unit: Unit) -> str | None:
    """Why ``unit`` is not one whole block of ``mg``'s module hierarchy, or None."""
    cross = crossing_modules(mg.graph, mg.regions, unit.start, unit.stop)
    if cross:
        return (f"it takes only part of module `{cross[0]}` (the unit the graph repeats starts inside a block "
                "of the module hierarchy)")
    return None


def verify(src: ModelGraph, dst: ModelGraph, mt: Matching, sources: list[list[int]]) -> None:
    """Check a plan against both graphs before any tensor moves (never silently wrong):
    fixed regions pair one to one with identical signatures; every target block takes all
    its tensors from exactly one source block of the same stage, with the same signature,
    each tensor from the same place in the block; no block is stitched from parts of two
    modules; a stage's blocks share one parent module. Raises SegmentMismatchError naming
    the first offending target block."""
    used_s: set[int] = set()
    covered: set[int] = set()
    for a, b in mt.fixed:
        if src.regions[a].signature != dst.regions[b].signature or a in used_s or b in covered:
            raise SegmentMismatchError(
                f"{dst.name} {_describe(dst, b)} would be filled from {src.name} {_describe(src, a)}, "
                "which is not the same computation; refusing to transfer a wrong ticket")
        used_s.add(a)
        covered.add(b)
    for sm, srcs in zip(mt.stages, sources):
        off = 1 if sm.has_block0 else 0
        keys = {}
        for side, mg, units in (("source", src, sm.src_units), ("target", dst, sm.dst_units)):
            for u in units:
                why = unit_problem(mg, u)
                if why:
                    raise SegmentMismatchError(
                        f"{side} block {u.label} in stage {sm.index} of {mg.name} is not one block: {why}. "
                        "Refusing to transfer a wrong ticket.")
            ks = [stage_key(mg.graph, mg.regions, u.start, u.stop) for u in units]
            for u, k in zip(units, ks):
                if k != ks[0]:
                    raise SegmentMismatchError(
                        f"stage {sm.index} ({sm.label}) of {mg.name} would hold blocks of two modules: "
                        f"{units[0].label} (in `{_mod(ks[0], mg)}`) and {u.label} (in `{_mod(k, mg)}`); "
                        "refusing to transfer a wrong ticket")
            keys[side] = ks[0] if ks else None
        ks, kd = keys["source"], keys["target"]
        if ks is not None and kd is not None and ks[:len(kd)] != kd and kd[:len(ks)] != ks:
            raise SegmentMismatchError(
                f"stage {sm.index}: target blocks in `{_mod(kd, dst)}` would come from source blocks in "
                f"`{_mod(ks, src)}`, another stage of the module hierarchy; refusing to transfer a wrong ticket")
        for j, du in enumerate(sm.dst_units):
            if srcs[j + off] < 0:  # grown (transfer(grow="identity")): the target's own block, no source
                continue
            su = sm.src_units[srcs[j + off] - off]
            where = f"target block {du.label} (stage {sm.index}, {sm.label}) <- source block {su.label}"
            if du.sig_id != su.sig_id:
                raise SegmentMismatchError(f"{where}: the blocks compute different functions (signatures "
                                           f"{su.sig_id} vs {du.sig_id}); refusing to transfer a wrong ticket")
            dn = [n for n, _ in du.params + du.buffers]
            sn = [n for n, _ in su.params + su.buffers]
            if len(dn) != len(sn):
                raise SegmentMismatchError(f"{where}: {len(sn)} source tensors for {len(dn)} target tensors")
            for a, b, ra, rb in zip(dn, sn, _role(dn), _role(sn)):
                if ra != rb:
                    raise SegmentMismatchError(
                        f"{where}: tensor {a} would come from {b}, which has another role in its block; "
                        "refusing to transfer a wrong ticket")
    for sm in mt.stages:
        for u in sm.dst_units:
            covered.update(range(u.start, u.stop))
    if len(covered) != len(dst.regions):
        r = min(set(range(len(dst.regions))) - covered)
        raise SegmentMismatchError(f"{dst.name} {_describe(dst, r)} gets no source in the plan; refusing to transfer "
                                   "an incomplete ticket")
