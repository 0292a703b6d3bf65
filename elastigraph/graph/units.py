"""Regions, units, segments and stages, found from the traced graph's structure.

* **cut points**: nodes every tensor path from input to output passes through (the
  dominator chain of the output node, rooted at the virtual input), computed on the
  tensor data flow: side values that are no tensors (``x.shape``, ``size()``, getitem
  on them, ``dim()``, asserts) are constants for their readers, so a shape read before
  a stage and used after it does not fuse the stage. A *context* (:func:`context_edges`:
  a value made outside a chain of blocks and read past one of them, such as GCViT's
  per-stage query or CSPNet's half that bypasses the blocks) is an outside input of
  the blocks too. Cut points split the graph into a chain of minimal
  single-entry/single-exit **regions** (a residual block is one region, a plain
  conv/relu is one region each, a transformer block is two).
* A region's **signature** is its op sequence with module attributes, parameter and
  buffer shapes, activation shapes and its internal wiring: equal signatures mean the
  regions compute the same function of the same shapes with tensors in the same order.
  Tracer node names inside constants (``Proxy(getitem_3)`` in an assert's f-string)
  are normalised out.
* **units** are the period of a repeating run of region signatures (smallest period
  first). Of the phases a period allows, a unit never takes part of one module and
  part of another (:func:`crossing_modules`), and a segment's units share one parent
  module (:func:`stage_key`); among the rest the phase is anchored where a unit opens
  a module or starts at a conv/linear. A **segment** is a maximal run of >= 2
  identical units.
* A **stage** is a segment plus, where present, the shape-changing block just before it
  (ResNet's downsampling block 0): a sibling module of the same type as the units, or,
  in flat models (VGG), the same op skeleton with other shapes. A stage of block 0 plus
  a single unit (ResNet-18) repeats nothing; it is found as a shape-preserving block
  module right after a sibling of its type, or when matching against a deeper sibling.
* Dropout / stochastic depth / Identity are no-ops in signatures (their rates differ
  per block; block 0 often gets an Identity where the others have a DropPath).

Module names only label results, break ties in the phase and veto units that cut a
module; they never decide which regions are identical.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .build import SOURCE, Traced

_TensorList = list[tuple[str, tuple]]


@dataclass
class Region:
    """A minimal single-entry/single-exit piece of the graph between two cut points."""

    index: int
    nodes: list[str]
    entry: str
    exit: str
    in_shape: Any
    out_shape: Any
    params: _TensorList
    buffers: _TensorList
    signature: tuple
    sig_id: str
    anchor: int
    skeleton: tuple
    modules: list[str]

    @property
    def has_weights(self) -> bool:
        return bool(self.params)


@dataclass
class Unit:
    """Consecutive regions ``[start, stop)`` that together form one repeatable block."""

    start: int
    stop: int
    label: str
    params: _TensorList
    buffers: _TensorList
    sig_id: str


@dataclass
class Segment:
    """A run of identical units (``pattern`` = their region signatures)."""

    pattern: tuple
    sig_id: str
    units: list[Unit]

    @property
    def start(self) -> int:
        return self.units[0].start if self.units else -1

    @property
    def stop(self) -> int:
        return self.units[-1].stop if self.units else -1


@dataclass
class Stage:
    """A segment plus its optional fixed block 0 (regions ``block0``)."""

    index: int
    label: str
    segment: Segment
    block0: tuple[int, int] | None
    block0_label: str | None = None

    @property
    def n_blocks(self) -> int:
        return len(self.segment.units) + (self.block0 is not None)


@dataclass
class Decomposition:
    """Regions of one traced model plus what lives outside every region."""

    regions: list[Region]
    unowned_params: _TensorList = field(default_factory=list)
    unowned_buffers: _TensorList = field(default_factory=list)


def _digest(obj: Any) -> str:
    return hashlib.sha1(repr(obj).encode()).hexdigest()[:10]


def _through_noops(g: nx.DiGraph, name: str) -> str:
    """Follow no-op nodes (identity, dropout, stochastic depth) back to their input."""
    while g.nodes[name].get("noop"):
        preds = [p for p in g.predecessors(name) if not g.nodes[p]["const"]]
        if len(preds) != 1:
            break
        name = preds[0]
    return name


def _remap(v: Any, local: dict[str, int], entry: str, g: nx.DiGraph) -> Any:
    """Replace node references in an args structure by region-relative positions
    (no-op nodes are looked through: an Identity in one block and a DropPath in the
    next do not make them different)."""
    if isinstance(v, tuple):
        if len(v) == 2 and v[0] == "node" and isinstance(v[1], str):
            name = _through_noops(g, v[1])
            if g.nodes[name]["const"]:
                return ("default", g.nodes[name]["default"])
            if name in local:
                return ("n", local[name])
            if name == entry or name == _through_noops(g, entry):
                return ("in",)
            return ("ext", g.nodes[name]["kind"], g.nodes[name]["shape"])
        return tuple(_remap(x, local, entry, g) for x in v)
    if isinstance(v, str) and "Proxy(" in v:
        # an f-string of a traced value (``torch._assert(..., f"got {x.shape}")``) holds
        # the tracer's node name, which differs per block: not part of the function
        return _PROXY.sub("Proxy(.)", v)
    return v


_PROXY = re.compile(r"Proxy\([^)]*\)")


def is_side_value(g: nx.DiGraph, name: str) -> bool:
    """A computed value that is no tensor (``x.shape``, ``size()``, ``getitem`` on them,
    ``dim()``, an assert): a constant for the blocks that read it, not data flow."""
    a = g.nodes[name]
    return a["op"] in ("call_function", "call_method") and a["shape"] is None


def side_flow(g: nx.DiGraph) -> nx.DiGraph:
    """``g`` without the edges leaving side values: ``B, C, H, W = x.shape`` read before a
    stage and used after it must not make the stage's blocks one region."""
    key = ("_side_flow", g.number_of_nodes(), g.number_of_edges())
    cached = g.graph.get("_cache_sf")
    if cached is not None and cached[0] == key:
        return cached[1]
    side = [n for n in g.nodes if n != SOURCE and is_side_value(g, n)]
    flow = g.copy(as_view=False)
    flow.remove_edges_from([(n, s) for n in side for s in g.successors(n)])
    g.graph["_cache_sf"] = (key, flow)
    return flow


def context_edges(g: nx.DiGraph, flow: nx.DiGraph) -> list[tuple[str, str]]:
    """Edges of ``flow`` that carry a *context* past the blocks of a container
    (a ``Sequential``/``ModuleList``/``ModuleDict`` of >= 2 modules that run as a chain,
    each entry after the first reading another's output):

    * a value made outside every entry and read inside an entry with another entry run
      in between (GCViT's global query, made once per stage and read by every other
      block; a decoder's encoder output);
    * a value made before the first entry and read after the last one, outside them,
      where the entries are modules of one type (CSPNet's split-off half, concatenated
      after the blocks; a residual around a whole stage).

    Such a value is the same input for every block it reaches, like a shape or a rotary
    table: the blocks stay separable (it is part of their signatures as an outside
    value), and a deeper or shallower sibling reads it the same way. Parallel branches
    (a ``ModuleList`` of paths that all read one input) are no chain and keep their
    edges, and so does a residual around a block's own body of different layers."""
    idx, entry_of, entries, chained = _chain_entries(g, flow)
    if not entries:
        return []
    types = g.graph.get("module_types", {})
    # a chain: every entry after the first reads another's output; a value goes around
    # a chain only of modules of one type (blocks), not around a Sequential of different
    # layers (a block's conv/norm/act body, around which its own residual goes)
    chains = {c for c, es in entries.items() if len(es) >= 2 and all(m in chained[c] for _, _, m in es[1:])}
    same = {c for c in chains if len({types.get(m) for _, _, m in entries[c]}) == 1}
    out = []
    for u, v in flow.edges:
        if u == SOURCE or u not in idx or v not in idx:
            continue
        eu, ev = entry_of.get(u, {}), entry_of.get(v, {})
        iu, iv = idx[u], idx[v]
        for c in chains:
            es = entries[c]
            if c in eu or iv <= iu:
                continue
            if c in ev:  # read inside an entry, with another entry run in between
                if any(m != ev[c] and a > iu and b < iv for a, b, m in es):
                    out.append((u, v))
                    break
            elif c in same and iu < es[0][0] and iv > es[-1][1] and _inside_parent(g, u, v, c):
                out.append((u, v))  # around every entry
                break
    return out


def _chain_entries(g: nx.DiGraph, flow: nx.DiGraph):
    """For each container: its entries with their first and last node index, in order;
    which entries read another entry's output; and each node's entry per container."""
    containers = g.graph.get("containers", ())
    idx = {n: g.nodes[n]["index"] for n in flow.nodes if n != SOURCE}
    entry_of: dict[str, dict[str, str]] = {}  # node -> {container: its entry there}
    span: dict[tuple[str, str], list[int]] = {}  # (container, entry) -> [first, last] index
    for n in idx:
        if g.nodes[n]["op"] not in ("call_module", "call_function", "call_method"):
            continue
        for m in scope_of(g, n, with_leaf=True):
            c = m.rpartition(".")[0] if "." in m else ""
            if c in containers and m:
                entry_of.setdefault(n, {})[c] = m
                sp = span.setdefault((c, m), [idx[n], idx[n]])
                sp[0], sp[1] = min(sp[0], idx[n]), max(sp[1], idx[n])
    entries: dict[str, list[tuple[int, int, str]]] = {}
    for (c, m), (a, b) in span.items():
        entries.setdefault(c, []).append((a, b, m))
    for c in entries:
        entries[c].sort()
    chained: dict[str, set[str]] = {c: set() for c in entries}  # entries reading another entry's output
    for u, v in flow.edges:
        eu, ev = entry_of.get(u, {}), entry_of.get(v, {})
        for c, e in ev.items():
            if c in eu and eu[c] != e:
                chained[c].add(e)
    return idx, entry_of, entries, chained


def _inside_parent(g: nx.DiGraph, u: str, v: str, container: str) -> bool:
    """Both nodes run in the module that holds ``container`` (a stage going around its own
    blocks, not the model's input read at its end)."""
    parent = container.rpartition(".")[0] if "." in container else ""
    if not parent:
        return True
    return parent in scope_of(g, u, with_leaf=True) and parent in scope_of(g, v, with_leaf=True)


def multi_stream_blocks(g: nx.DiGraph, regions: list[Region]) -> list[str]:
    """Entries of chains of blocks of one type that hand each other two or more tensors
    (TNT's inner and outer streams): no single node lies between two such blocks, so
    they fuse into one region. Returned only where they did (two blocks of the chain
    share a region); traced as single calls (leaf modules), each block is one node
    its successor reads, and the blocks are units again."""
    flow = tensor_flow(g)
    idx, entry_of, entries, chained = _chain_entries(g, flow)
    types = g.graph.get("module_types", {})
    held = module_regions(g, regions)
    chains = {c for c, es in entries.items() if len(es) >= 2 and all(m in chained[c] for _, _, m in es[1:])}
    out: list[str] = []
    for c, es in entries.items():
        names = [m for _, _, m in es]
        if c not in chains or len({types.get(m) for m in names}) != 1:
            continue
        if any(c2.startswith(m + ".") for c2 in chains for m in names):
            continue  # stages holding chains of their own (PiT's (x, cls) stages): the inner blocks are the units
        handed: dict[tuple[str, str], set[str]] = {}
        for u, v in flow.edges:
            eu, ev = entry_of.get(u, {}).get(c), entry_of.get(v, {}).get(c)
            if eu is not None and ev is not None and eu != ev:
                handed.setdefault((eu, ev), set()).add(u)
        pairs = list(zip(names, names[1:]))
        if not all(len(handed.get(p, ())) >= 2 for p in pairs):
            continue
        if any(held.get(a, set()) & held.get(b, set()) for a, b in pairs):
            out += names
    return out


def tensor_flow(g: nx.DiGraph) -> nx.DiGraph:
    """The data flow the regions are cut from: :func:`side_flow` without the
    :func:`context_edges` (values that go past blocks to reach later ones)."""
    key = ("_tensor_flow", g.number_of_nodes(), g.number_of_edges())
    cached = g.graph.get("_cache_tf")
    if cached is not None and cached[0] == key:
        return cached[1]
    flow = side_flow(g).copy(as_view=False)
    flow.remove_edges_from(context_edges(g, flow))
    g.graph["_cache_tf"] = (key, flow)
    return flow


def cut_points(g: nx.DiGraph, sink: str) -> list[str]:
    """Nodes on every tensor path from the virtual input to ``sink``, input first, sink
    last (side values such as shapes are constants, see :func:`tensor_flow`)."""
    idom = nx.immediate_dominators(tensor_flow(g), SOURCE)
    chain = [sink]
    while chain[-1] != SOURCE:
        chain.append(idom[chain[-1]])
    return chain[::-1]


def decompose(traced: Traced) -> Decomposition:
    """Split a traced graph into the chain of regions between consecutive cut points."""
    g = traced.graph
    order = traced.order
    sink = next(n for n in reversed(order) if g.nodes[n]["op"] == "output")
    # dominators of the tensor data flow: a side value (a shape read before a stage and
    # used after it) is a constant for its readers, not an edge around every block
    idom = nx.immediate_dominators(tensor_flow(g), SOURCE)
    cuts = [sink]
    while cuts[-1] != SOURCE:
        cuts.append(idom[cuts[-1]])
    cuts.reverse()
    cut_index = {c: i for i, c in enumerate(cuts)}
    n_regions = len(cuts) - 1
    region_of: dict[str, int] = {}

    def nearest_cut(n: str) -> int:
        path = []
        d = n
        while d not in cut_index and d not in region_of:
            path.append(d)
            d = idom[d]
        r = cut_index[d] if d in cut_index else region_of[d]
        for p in path:
            region_of[p] = r
        return r

    for n in order:
        if n in cut_index:
            region_of[n] = cut_index[n] - 1
    # nodes that feed only a context (GCViT's global query, see :func:`context_edges`):
    # with their latest input, before the blocks that read it
    flow = tensor_flow(g)
    plain = side_flow(g)
    ctx_only: set[str] = set()
    if flow.number_of_edges() != plain.number_of_edges():
        ctx_only = nx.ancestors(plain, sink) - nx.ancestors(flow, sink)
    for n in order:
        if n in idom and n not in region_of and n not in ctx_only:
            nearest_cut(n)
    # values computed only from side values (``dim() == 3``, its assert, a tensor built
    # from a shape): the region of their latest input
    derived = []
    for n in order:
        if n not in region_of:
            preds = [region_of[p] for p in g.predecessors(n) if p in region_of]
            if preds:
                region_of[n] = max(preds)
                derived.append(n)
    # ... unless every reader is in a later region and that region runs nothing in the
    # node's own module: a side value a block passes on (MViTv2's feature size, unpacked
    # by the stage after its last block), or a value a block computes from a context
    # alone (``sigmoid(q)`` of a stage's query), belongs to the region that reads it, or
    # that block would differ from the others
    scopes: dict[int, set[tuple]] = {}
    moved = set(derived)
    for n, r in region_of.items():
        if n != SOURCE and n not in moved and g.nodes[n]["op"] in ("call_module", "call_function", "call_method"):
            scopes.setdefault(r, set()).add(scope_of(g, n))
    for n in reversed(derived):
        if n in ctx_only or scope_of(g, n) in scopes.get(region_of[n], ()):
            continue
        succ = [region_of[s] for s in g.successors(n) if s in region_of]
        if succ and min(succ) > region_of[n]:
            region_of[n] = min(succ)
    # nodes not reachable from the inputs (get_attr, constants): the region of their
    # first consumer
    for n in reversed(order):
        if n not in region_of:
            succ = [region_of[s] for s in g.successors(n) if s in region_of]
            region_of[n] = min(succ) if succ else 0
    members: list[list[str]] = [[] for _ in range(n_regions)]
    for n in order:
        if not g.nodes[n]["const"]:  # unfed inputs (defaults) are constants of their users
            members[max(region_of[n], 0)].append(n)

    seen_t: set[str] = set()
    regions: list[Region] = []
    for r in range(n_regions):
        nodes = members[r]
        entry, exit_ = cuts[r], cuts[r + 1]
        local = {n: i for i, n in enumerate(nodes)}
        sig = []
        params: _TensorList = []
        bufs: _TensorList = []
        skeleton = []
        modules = []
        sig_nodes = [n for n in nodes if not g.nodes[n].get("noop")]
        local = {n: i for i, n in enumerate(sig_nodes)}
        for n in nodes:
            a = g.nodes[n]
            if a.get("noop"):
                continue
            sig.append((a["op"], a["kind"], a["module_repr"], tuple(s for _, s in a["params"]),
                        tuple(s for _, s in a["buffers"]), a["shape"], _remap(a["args"], local, entry, g)))
            if a["op"] in ("call_module", "call_function", "call_method"):
                skeleton.append(a["kind"])
            if a["op"] == "call_module":
                modules.append(a["target"])
            for name, shape in a["params"]:
                if name not in seen_t:
                    seen_t.add(name)
                    params.append((name, shape))
            for name, shape in a["buffers"]:
                if name not in seen_t:
                    seen_t.add(name)
                    bufs.append((name, shape))
        in_shape = g.nodes[entry]["shape"]
        signature = (in_shape, tuple(sig))
        regions.append(Region(
            index=r, nodes=nodes, entry=entry, exit=exit_, in_shape=in_shape,
            out_shape=g.nodes[exit_]["shape"], params=params, buffers=bufs, signature=signature,
            sig_id=_digest(signature), anchor=_anchor(g, nodes, entry), skeleton=tuple(skeleton), modules=modules,
        ))
    gm = traced.gm
    unowned_p = [(n.removesuffix("_orig"), tuple(p.shape)) for n, p in gm.named_parameters()
                 if n.removesuffix("_orig") not in seen_t]
    masks = {n.removesuffix("_orig") + "_mask" for n, _ in gm.named_parameters() if n.endswith("_orig")}
    unowned_b = [(n, tuple(b.shape)) for n, b in gm.named_buffers() if n not in seen_t and n not in masks]
    return Decomposition(regions=regions, unowned_params=unowned_p, unowned_buffers=unowned_b)


def scope_of(g: nx.DiGraph, n: str, with_leaf: bool = False) -> tuple[str, ...]:
    """Qualified names of the modules node ``n`` runs in, outermost first; ``with_leaf``:
    a ``call_module`` node's own module too."""
    a = g.nodes[n]
    s = tuple(a["scope"])
    if with_leaf and a["op"] == "call_module":
        s = s + (a["target"],)
    return s


def _anchor(g: nx.DiGraph, nodes: list[str], entry: str) -> int:
    """How well a unit may start at this region: 2 if it opens a new module of the
    hierarchy (the first op runs in other modules than the entry), +1 if its first
    compute op is a conv/linear."""
    first = next((n for n in nodes if g.nodes[n]["op"] in ("call_module", "call_function", "call_method")
                  and not g.nodes[n].get("noop")), None)
    if first is None:
        return 0
    score = 0
    es = scope_of(g, entry) if entry != SOURCE else ()
    fs = scope_of(g, first)
    if fs != es:  # leaves the entry's module or enters a new one (also from the top level)
        score += 2
    if g.nodes[first]["weighted"]:
        score += 1
    return score


def make_unit(g: nx.DiGraph, regions: list[Region], start: int, stop: int) -> Unit:
    """The unit made of regions ``[start, stop)``: its label, tensors and signature id."""
    params = [t for r in regions[start:stop] for t in r.params]
    bufs = [t for r in regions[start:stop] for t in r.buffers]
    pattern = tuple(r.signature for r in regions[start:stop])
    return Unit(start=start, stop=stop, label=span_label(g, regions, start, stop), params=params, buffers=bufs,
                sig_id=_digest(pattern))


def _common_scope(g: nx.DiGraph, regions: list[Region], start: int, stop: int) -> tuple[str, ...]:
    scopes = [scope_of(g, n, with_leaf=True) for r in regions[start:stop] for n in r.nodes
              if g.nodes[n]["op"] in ("call_module", "call_function", "call_method")]
    if not scopes:
        return ()
    common = scopes[0]
    for s in scopes[1:]:
        k = 0
        while k < min(len(common), len(s)) and common[k] == s[k]:
            k += 1
        common = common[:k]
    return common


def module_regions(g: nx.DiGraph, regions: list[Region]) -> dict[str, set[int]]:
    """Module qualified name -> indices of the regions holding a node run inside it."""
    key = ("_module_regions", id(regions), len(regions))
    cached = g.graph.get("_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    out: dict[str, set[int]] = {}
    for r in regions:
        for n in r.nodes:
            for m in scope_of(g, n, with_leaf=True):
                out.setdefault(m, set()).add(r.index)
    g.graph["_cache"] = (key, out)
    return out


def _is_tight(g: nx.DiGraph, regions: list[Region], start: int, stop: int, scope: tuple[str, ...]) -> bool:
    """True if ``scope`` (a module) is entered only by nodes of regions [start, stop)."""
    if not scope:
        return False
    held = module_regions(g, regions).get(scope[-1], set())
    return bool(held) and all(start <= i < stop for i in held)


def tight_scope(g: nx.DiGraph, regions: list[Region], start: int, stop: int) -> tuple[str, ...] | None:
    """Module path down to the outermost module that only regions [start, stop) enter
    (``('layer1', 'layer1.0')``), or None (flat models such as VGG)."""
    sc = _common_scope(g, regions, start, stop)
    for k in range(1, len(sc) + 1):
        if _is_tight(g, regions, start, stop, sc[:k]):
            return sc[:k]
    return None


def span_label(g: nx.DiGraph, regions: list[Region], start: int, stop: int) -> str:
    """Readable name of regions ``[start, stop)``: the module only they enter, else their
    first..last module, else ``regions[start:stop]``."""
    sc = tight_scope(g, regions, start, stop)
    if sc:
        return sc[-1]
    mods = [m for r in regions[start:stop] for m in r.modules]
    if not mods:
        return f"regions[{start}:{stop}]"
    return mods[0] if len(mods) == 1 else f"{mods[0]}..{mods[-1]}"


def _sig_ids(regions: list[Region]) -> list[int]:
    """Small ints standing for region signatures (equal int <=> equal signature)."""
    table: dict[tuple, int] = {}
    return [table.setdefault(r.signature, len(table)) for r in regions]


def find_segments(g: nx.DiGraph, regions: list[Region]) -> list[Segment]:
    """Maximal runs (>= 2) of identical, weight-carrying units, smallest period first.

    Of the phases a period allows, a unit never takes part of a module and part of
    another (the module tree says where blocks start: ``mlp`` of block i + ``attn`` of
    block i+1 is no block), and a segment's units share one parent module (adjacent
    stages of identical blocks are two segments; pieces of blocks that repeat once per
    parent are no segment); among the rest, anchored starts, then more repeats win."""
    sigs = _sig_ids(regions)
    k = len(sigs)
    taken = [False] * k
    found: list[Segment] = []
    whole: dict[tuple[int, int], bool] = {}
    keys: dict[tuple[int, int], tuple] = {}

    def is_whole(a: int, b: int) -> bool:
        if (a, b) not in whole:
            whole[(a, b)] = not crossing_modules(g, regions, a, b)
        return whole[(a, b)]

    def parent(a: int, b: int) -> tuple:
        if (a, b) not in keys:
            keys[(a, b)] = stage_key(g, regions, a, b)
        return keys[(a, b)]

    for p in range(1, k // 2 + 1):
        t = 0
        while t + p < k:
            if sigs[t] != sigs[t + p]:
                t += 1
                continue
            a = t
            while t + p < k and sigs[t] == sigs[t + p]:
                t += 1
            b = t + p  # regions [a, b) repeat with period p
            best = None
            runs: dict[int, list[tuple[int, int]]] = {}  # phase -> its runs of >= 2 units
            for s in range(p):
                if not any(regions[i].has_weights for i in range(a + s, min(a + s + p, b))):
                    continue
                st = a + s
                while st + 2 * p <= b:
                    reps = 0
                    while (st + (reps + 1) * p <= b and not any(taken[st + reps * p: st + (reps + 1) * p])
                           and is_whole(st + reps * p, st + (reps + 1) * p)
                           and parent(st + reps * p, st + (reps + 1) * p) == parent(st, st + p)):
                        reps += 1
                    if reps >= 2:
                        runs.setdefault(s, []).append((st, reps))
                        key = (regions[st].anchor, reps, -s)
                        if best is None or key > best[0]:
                            best = (key, s)
                    st += max(reps, 1) * p
            if best is not None:
                # every run of the chosen phase: adjacent stages of identical blocks
                # (VOLO's network.2/3/4) are one run of the graph, split by parent module
                for st, reps in runs[best[1]]:
                    for i in range(st, st + reps * p):
                        taken[i] = True
                    found.append(segment_at(g, regions, st, p, reps))
    found.sort(key=lambda s: s.start)
    return found


def find_single_units(g: nx.DiGraph, regions: list[Region], segments: list[Segment]) -> list[Segment]:
    """Stages of block 0 + one unit (ResNet-18's layer2): nothing repeats, so periodicity
    cannot see them. A candidate is a weight-carrying, shape-preserving group of regions
    that exactly covers one module, opens a new module at its start, and follows a
    sibling module of the same type (its block 0) -- the module tree cross-checks what
    the graph's shapes allow. (Containers such as nn.Sequential are never blocks here.)"""
    taken = {i for seg in segments for u in seg.units for i in range(u.start, u.stop)}
    out: list[Segment] = []
    lower = 0
    ends = sorted((seg.start, seg.stop) for seg in segments)
    # outermost modules first: a block of a stage holds modules of its own that may look
    # like a stage (MaxViT's layer: window then grid attention, siblings of one type);
    # once the block is taken, with its block 0, nothing inside either is a stage
    for mod, held in sorted(module_regions(g, regions).items(), key=lambda kv: (kv[0].count("."), min(kv[1]))):
        a, b = min(held), max(held) + 1
        if len(held) != b - a or taken & set(range(a, b)) or not regions[a].anchor & 2:
            continue
        grp = regions[a:b]
        if not any(r.has_weights for r in grp) or grp[0].in_shape != grp[-1].out_shape:
            continue
        sc = tight_scope(g, regions, a, b)
        if not sc or sc[-1] != mod or mod in g.graph.get("containers", ()):
            continue  # a block is a module with its own forward, not a Sequential of layers
        lower = max([e for s, e in ends if e <= a] + [u.stop for seg in out for u in seg.units if u.stop <= a] + [0])
        b0 = find_block0(g, regions, a, b - a, (a, b), lower)
        if b0 is None or taken & set(range(*b0)):
            continue
        out.append(segment_at(g, regions, a, b - a, 1))
        taken |= set(range(a, b)) | set(range(*b0))
    out.sort(key=lambda s: s.start)
    return out


def segment_at(g: nx.DiGraph, regions: list[Region], start: int, p: int, reps: int) -> Segment:
    pattern = tuple(r.signature for r in regions[start:start + p])
    units = [make_unit(g, regions, start + i * p, start + (i + 1) * p) for i in range(reps)]
    return Segment(pattern=pattern, sig_id=_digest(pattern), units=units)


def find_block0(g: nx.DiGraph, regions: list[Region], seg_start: int, unit_len: int,
                unit_span: tuple[int, int] | None, lower: int) -> tuple[int, int] | None:
    """The fixed, shape-changing block 0 right before a segment starting at region
    ``seg_start`` (regions ``[lower, seg_start)`` are free to take), or None.

    ``unit_span`` is one unit of the segment (from either model) used for its module
    scope; in flat models the block 0 must have the unit's op skeleton."""
    if seg_start <= lower:
        return None
    if unit_span is not None:
        us, ue = unit_span
        sc = tight_scope(g, regions, us, ue)
        if sc:
            parent = sc[:-1]
            unit_mod = sc[-1]
            start = seg_start
            owner = None
            while start > lower:
                r = regions[start - 1]
                scopes = [scope_of(g, n, with_leaf=True) for n in r.nodes
                          if g.nodes[n]["op"] in ("call_module", "call_function", "call_method")]
                if not scopes:
                    break
                s0 = {s[len(parent)] if len(s) > len(parent) and s[:len(parent)] == parent else None for s in scopes}
                if len(s0) != 1 or None in s0:
                    break
                mod = next(iter(s0))
                if mod == unit_mod or (owner is not None and mod != owner):
                    break
                if owner is None:
                    if (_module_type(g, mod) != _module_type(g, unit_mod)
                            or mod.rpartition(".")[0] != unit_mod.rpartition(".")[0]):
                        break
                    owner = mod
                start -= 1
            return (start, seg_start) if owner is not None else None
    start = seg_start - unit_len
    if start < lower or unit_span is None:
        return None
    first = regions[start]
    skel = tuple(k for r in regions[start:seg_start] for k in r.skeleton)
    uskel = tuple(k for r in regions[unit_span[0]:unit_span[1]] for k in r.skeleton)
    if skel == uskel and first.anchor & 1 and first.in_shape != regions[seg_start - 1].out_shape:
        return (start, seg_start)
    return None


def _module_type(g: nx.DiGraph, qualname: str) -> str | None:
    return g.graph.get("module_types", {}).get(qualname)


# ------------------------------------------------------------ the module hierarchy as a check
#
# Units come from the graph; the module tree cannot make two units identical, but it is the
# strongest evidence of where a block starts and which stage it belongs to. A unit that
# takes part of one module's tensors and part of another's (``mlp`` of block i with
# ``attn`` of block i+1) has the wrong phase; units of one segment held by different
# parent modules (VOLO's ``network.2`` and ``network.3``) belong to different stages.


def _module_tensors(g: nx.DiGraph, regions: list[Region]) -> dict[str, frozenset[str]]:
    """Module qualified name -> the names of the parameters/buffers the graph reads under it."""
    key = ("_module_tensors", id(regions), len(regions))
    cached = g.graph.get("_cache_mt")
    if cached is not None and cached[0] == key:
        return cached[1]
    out: dict[str, set[str]] = {}
    for r in regions:
        for name, _ in r.params + r.buffers:
            parts = name.split(".")
            for k in range(1, len(parts)):
                out.setdefault(".".join(parts[:k]), set()).add(name)
    frozen = {m: frozenset(s) for m, s in out.items()}
    g.graph["_cache_mt"] = (key, frozen)
    return frozen


def unit_tensor_names(regions: list[Region], start: int, stop: int) -> list[str]:
    return [n for r in regions[start:stop] for n, _ in r.params + r.buffers]


def crossing_modules(g: nx.DiGraph, regions: list[Region], start: int, stop: int) -> list[str]:
    """Modules whose tensors regions ``[start, stop)`` take only in part while also
    taking tensors outside them: a block stitched from pieces of two modules.
    Containers (Sequential, ModuleList, ParameterList, ...) have no forward of their own
    and hold blocks rather than being one: a unit may take one of their entries."""
    names = unit_tensor_names(regions, start, stop)
    if not names:
        return []
    mine = frozenset(names)
    mt = _module_tensors(g, regions)
    types = g.graph.get("module_types", {})
    seen: set[str] = set(g.graph.get("containers", ()))
    seen |= {m for m, t in types.items() if t in ("ParameterList", "ParameterDict")}
    out: list[str] = []
    for name in names:
        parts = name.split(".")
        for k in range(1, len(parts)):
            mod = ".".join(parts[:k])
            if mod in seen:
                continue
            seen.add(mod)
            held = mt.get(mod, frozenset())
            if held and not held <= mine and not mine <= held:
                out.append(mod)
    return out


def stage_key(g: nx.DiGraph, regions: list[Region], start: int, stop: int) -> tuple[str, ...]:
    """The module path that holds a unit as one of its repeated children: down to the
    parent of the outermost module covering exactly the unit (``layer2`` for
    ``layer2.1``), else the modules common to all its ops (``layers.0.blocks`` for a pair
    of Swin blocks). A stage with a single block may give a shorter path (its container
    covers the block too): compare paths from different depths by prefix."""
    sc = tight_scope(g, regions, start, stop)
    if sc:
        return sc[:-1]
    return _common_scope(g, regions, start, stop)


__all__ = [
    "Region", "Unit", "Segment", "Stage", "Decomposition", "decompose", "cut_points", "tensor_flow", "side_flow",
    "context_edges", "multi_stream_blocks", "is_side_value",
    "find_segments", "find_single_units", "segment_at", "find_block0", "make_unit", "scope_of", "module_regions",
    "tight_scope", "span_label", "crossing_modules", "stage_key", "unit_tensor_names",
]
