"""The annotated networkx graph of a captured model (the input of unit analysis).

:func:`build_graph` captures the model (:mod:`.capture`), propagates shapes
(:mod:`.shapes`) and returns a :class:`Traced`: a plain ``networkx.DiGraph`` with one
node per fx node, plus a virtual ``__input__`` source (:data:`SOURCE`) that feeds every
placeholder so the graph has one entry. Each node carries the attributes declared by
:class:`NodeAttrs` (op kind, target, module scope, the parameters/buffers it reads, its
output shape, ...), made by :func:`node_attrs`; the graph itself those of
:class:`GraphAttrs`. The model is never modified, and stays the source of truth for
parameters: the graph is for analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence, TypedDict

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from ..masks import canonical_names
from .capture import capture, fetch, is_regulariser
from .shapes import WEIGHTED_MODULES

SOURCE = "__input__"
"""Name of the virtual node that feeds every placeholder (so the graph has one entry)."""

TensorList = list[tuple[str, tuple[int, ...]]]
"""``[(qualified tensor name, shape), ...]``, in module order."""


class NodeAttrs(TypedDict):
    """The attributes of every node of a built graph (``g.nodes[name]``), as torch.fx's
    ``node.meta`` for its nodes: one declared schema, made only by :func:`node_attrs`.
    Readers index it as a dict (``g.nodes[n]["kind"]``)."""

    op: str
    """The fx op: ``placeholder``, ``get_attr``, ``call_module``, ``call_function``,
    ``call_method``, ``output``; ``source`` for :data:`SOURCE`."""
    target: str
    """``str(node.target)``: a module/tensor qualified name, a function, a method name."""
    kind: str
    """What the node computes, readable: the module class (``Conv2d``), the function's
    qualified name (``add``, ``aten.linear.default``), the method name, else ``op``."""
    scope: tuple[str, ...]
    """Qualified names of the modules enclosing the node, outermost first (a
    ``call_module`` node's own module excluded)."""
    params: TensorList
    """Parameters the node reads (a tied parameter under its canonical name); tensors
    several modules share are left out (they belong to no block)."""
    buffers: TensorList
    """Buffers the node reads, as ``params`` (prune's ``*_mask`` buffers left out)."""
    shape: Any
    """Output shape: a tuple of ints, a tuple of those (or of ``(key, shape)`` pairs) for
    several outputs, ``None`` for a non-tensor value."""
    args: tuple
    """Hashable description of the arguments (``("node", name)`` for inputs); for
    regularisers the tensor inputs only, their rates often differ per block."""
    index: int
    """Position in the fx graph (``-1`` for :data:`SOURCE`)."""
    module_repr: str
    """``extra_repr()`` of a called module (empty for regularisers and non-modules)."""
    weighted: bool
    """The node applies a layer's weights (conv, linear; their functional and ATen forms)."""
    noop: bool
    """Identity, dropout, stochastic depth: no op for a trained block's function."""
    const: bool
    """A value that depends on no fed input: a placeholder beyond the fed inputs, or a
    value torch.export computed from shapes and buffers (masks, rotary tables)."""
    default: Any
    """For a ``const`` node: its default (a placeholder) or ``("side", kind, shape)``;
    else ``None``. Enters unit signatures in place of the node's wiring."""


def node_attrs(*, op: str, target: str, kind: str, index: int, scope: tuple[str, ...] = (),
               params: TensorList | None = None, buffers: TensorList | None = None, shape: Any = None,
               args: tuple = (), module_repr: str = "", weighted: bool = False, noop: bool = False,
               const: bool = False, default: Any = None) -> NodeAttrs:
    """The one constructor of :class:`NodeAttrs` (every key set, defaults for a node that
    reads no tensor and does nothing special)."""
    return NodeAttrs(op=op, target=target, kind=kind, scope=scope, params=params if params is not None else [],
                     buffers=buffers if buffers is not None else [], shape=shape, args=args, index=index,
                     module_repr=module_repr, weighted=weighted, noop=noop, const=const, default=default)


class GraphAttrs(TypedDict):
    """The graph-level attributes of a built graph (``g.graph``). Keys starting with ``_``
    are caches of :mod:`.units`."""

    module_types: dict[str, str]
    """Qualified module name -> its class's ``__qualname__``, every module of the model."""
    containers: set[str]
    """Names of the model's ``Sequential``/``ModuleList``/``ModuleDict`` modules."""
    shared: list[str]
    """Tensors read from several modules (tied weights, a module every block calls),
    sorted: carried over once by name, never part of a block."""


def _shape_of(node: fx.Node) -> Any:
    tm = node.meta.get("tensor_meta")
    if tm is None:  # torch.export puts (fake) values on its nodes instead
        return _shape_meta(node.meta.get("val"))
    if hasattr(tm, "shape"):
        return tuple(tm.shape)
    if isinstance(tm, (tuple, list)):
        return tuple(_shape_meta(t) for t in tm)
    if isinstance(tm, dict):
        return tuple((k, _shape_meta(v)) for k, v in sorted(tm.items()))
    return None


def _shape_meta(tm: Any) -> Any:
    if hasattr(tm, "shape"):
        return tuple(int(v) for v in tm.shape)
    if isinstance(tm, (tuple, list)):
        return tuple(_shape_meta(t) for t in tm)
    return None


def _scope(node: fx.Node) -> tuple[str, ...]:
    """Qualified names of the modules enclosing ``node`` (outermost first), excluding the
    leaf module a call_module node calls."""
    stack = node.meta.get("nn_module_stack") or {}
    names = tuple(v[0] if isinstance(v, tuple) else str(v) for v in stack.values())
    if node.op == "call_module" and names and names[-1] == node.target:
        names = names[:-1]
    return names


def _target_label(gm: nn.Module, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        t = node.target
        return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)
    if node.op == "call_method":
        return str(node.target)
    return node.op


def _shared_tensors(tensors: dict[fx.Node, tuple[list, list]]) -> set[str]:
    """Tensors read by nodes of different modules (tied weights, a module shared by every
    block); a module calling one of its layers twice keeps it as its own."""
    scopes: dict[str, set[tuple[str, ...]]] = {}
    for node, (params, bufs) in tensors.items():
        for name, _ in params + bufs:
            where = _scope(node) + ((str(node.target),) if node.op == "call_module" else ())
            scopes.setdefault(name, set()).add(where)
    return {n for n, sc in scopes.items() if len(sc) > 1}


def _side_constants(fxg: fx.Graph, gm: nn.Module) -> set[fx.Node]:
    """Nodes of an exported graph that depend on no input and on no parameter: values
    torch.export computed from shapes and buffers (causal masks, rotary tables, position
    ids). They are constants of the blocks that read them, not data flow between blocks."""
    live: set[fx.Node] = set()
    for node in fxg.nodes:
        if node.op == "placeholder":
            live.add(node)
        elif node.op == "get_attr" and isinstance(fetch(gm, node.target), nn.Parameter):
            live.add(node)
        elif any(a in live for a in node.all_input_nodes):
            live.add(node)
    side = {n for n in fxg.nodes if n not in live and n.op in ("call_function", "call_method", "call_module")}
    # a buffer only such values read (rotary inv_freq) is part of them
    side |= {n for n in fxg.nodes if n.op == "get_attr" and n not in live and n.users and all(u in side for u in n.users)}
    return side


def _tensor_names(gm: nn.Module, node: fx.Node, alias: dict[str, str] | None = None
                  ) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
    """(parameters, buffers) the node reads, as (qualified name, shape), in module order.
    torch.nn.utils.prune's ``*_orig``/``*_mask`` appear under the public name / not at all;
    a tied parameter under its canonical name (``alias``: :func:`masks.canonical_names`)."""
    params, bufs = _tensor_names_raw(gm, node)
    if alias:
        params = [(alias.get(n, n), s) for n, s in params]
    return params, bufs


def _tensor_names_raw(gm: nn.Module, node: fx.Node) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
    params: list[tuple[str, tuple]] = []
    bufs: list[tuple[str, tuple]] = []
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        pre = f"{node.target}." if node.target else ""
        mask_bufs = set()
        # sorted by name inside the module: torch.nn.utils.prune re-registers a pruned
        # ``weight`` as ``weight_orig`` after ``bias``, which must not change the order
        for n, p in sorted(mod.named_parameters(remove_duplicate=False), key=lambda kv: kv[0].removesuffix("_orig")):
            if n.endswith("_orig"):
                n = n[: -len("_orig")]
                mask_bufs.add(n + "_mask")
            params.append((pre + n, tuple(p.shape)))
        for n, b in sorted(mod.named_buffers(remove_duplicate=False), key=lambda kv: kv[0]):
            if n in mask_bufs:
                continue
            bufs.append((pre + n, tuple(b.shape)))
    elif node.op == "get_attr":
        obj = fetch(gm, node.target)
        if isinstance(obj, nn.Parameter):
            params.append((node.target, tuple(obj.shape)))
        elif isinstance(obj, torch.Tensor):
            bufs.append((node.target, tuple(obj.shape)))
    return params, bufs


def _const(v: Any) -> Any:
    """A hashable, stable description of a non-node argument (for signatures)."""
    if isinstance(v, fx.Node):
        return ("node", v.name)
    if isinstance(v, (list, tuple)):
        return tuple(_const(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _const(x)) for k, x in sorted(v.items()))
    if isinstance(v, slice):
        return ("slice", _const(v.start), _const(v.stop), _const(v.step))
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format)):
        return v
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape))
    return type(v).__name__


_WEIGHTED_FNS = {torch.nn.functional.linear, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
                 torch.nn.functional.conv3d}


# the same ops as torch.export records them (ATen overloads)
_WEIGHTED_FNS |= {getattr(torch.ops.aten, op).default for op in
                  ("linear", "addmm", "mm", "conv1d", "conv2d", "conv3d", "convolution", "embedding")}


_REGULARISER_FNS = ("dropout", "drop_path", "stochastic_depth", "drop_block")


def _args_signature(node: fx.Node) -> tuple:
    """Arguments as they enter a signature; for regularisers (dropout, stochastic depth)
    only the tensor inputs, since their rates often differ per block."""
    if _is_regulariser_fn(node):
        return (tuple(_const(a) for a in node.all_input_nodes), ())
    return (_const(node.args), _const(node.kwargs))


def _is_regulariser_fn(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target)).lower()
    return node.op == "call_function" and any(k in name for k in _REGULARISER_FNS)


@dataclass
class Traced:
    """A traced model: the model (``gm``: the root the fx graph's targets refer to), the fx
    graph, the annotated DiGraph and the input shapes used."""

    gm: nn.Module
    fx_graph: fx.Graph
    graph: nx.DiGraph
    """Nodes: fx node names and :data:`SOURCE`, attributes :class:`NodeAttrs`; graph
    attributes :class:`GraphAttrs`."""
    input_shapes: tuple
    order: list[str] = field(default_factory=list)
    """The fx node names in graph order."""
    rejected: list[str] = field(default_factory=list)
    """Example inputs tried before the one used, each with why the model refused it."""
    capture: str = "torch.fx"
    """How the graph was captured: ``"torch.fx"`` (symbolic tracing, module calls kept as
    nodes) or ``"torch.export"`` (non-strict export, the fallback for models torch.fx
    cannot trace, e.g. Hugging Face transformers; ATen ops with their module scope)."""


def build_graph(model: nn.Module, example_input: Any = None, leaf_modules: Sequence[type] = (),
                *, model_name: str | None = None) -> Traced:
    """Capture ``model``'s graph, propagate shapes and return the annotated DiGraph (see
    module doc). torch.fx symbolic tracing first (fast, keeps module calls); where it fails
    (data-dependent Python, e.g. every Hugging Face transformers model), non-strict
    ``torch.export`` (see :func:`.capture.capture`). ``Traced.capture`` says which was used."""
    cap = capture(model, example_input, leaf_modules, model_name=model_name)
    fxg, shapes = cap.graph, cap.input_shapes
    assert shapes is not None  # capture() propagates shapes on the graphs it traces
    gm = model
    alias = canonical_names(model)
    tensors = {node: _tensor_names(gm, node, alias) for node in fxg.nodes}
    shared = _shared_tensors(tensors)
    g = nx.DiGraph()
    g.graph.update(GraphAttrs(
        module_types={n: type(m).__qualname__ for n, m in model.named_modules()},
        containers={n for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))},
        shared=sorted(shared),
    ))
    g.add_node(SOURCE, **node_attrs(op="source", target="", kind="source", index=-1))
    order: list[str] = []
    n_fed = len(shapes)  # placeholders beyond the fed inputs keep their defaults: constants
    side = _side_constants(fxg, gm) if cap.method == "torch.export" else set()
    for i, node in enumerate(fxg.nodes):
        params, bufs = tensors[node]
        # a tensor several places of the graph use (tied weights, a module shared by every
        # block) belongs to no block: it is carried over once, by name, as the tie says
        params = [t for t in params if t[0] not in shared]
        bufs = [t for t in bufs if t[0] not in shared]
        feeds = node.op == "placeholder" and n_fed > 0
        mrepr, weighted, noop = "", False, False
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            weighted = isinstance(mod, WEIGHTED_MODULES)
            noop = isinstance(mod, nn.Identity) or is_regulariser(mod)
            # regularisers (dropout, stochastic depth) do not change the math of a trained
            # block; their rates often differ per block and must not break segments.
            mrepr = "" if is_regulariser(mod) else mod.extra_repr()
        elif node.op == "call_function":
            weighted = node.target in _WEIGHTED_FNS
            noop = _is_regulariser_fn(node)
        g.add_node(node.name, **node_attrs(
            op=node.op,
            target=str(node.target),
            kind=_target_label(gm, node),
            scope=_scope(node),
            params=params,
            buffers=bufs,
            shape=_shape_of(node),
            args=_args_signature(node),
            index=i,
            module_repr=mrepr,
            weighted=weighted,
            noop=noop and len(node.all_input_nodes) >= 1,
            const=(node.op == "placeholder" and not feeds) or node in side,
            default=(_const(node.args[0]) if node.op == "placeholder" and node.args
                     else ("side", _target_label(gm, node), _shape_of(node)) if node in side else None),
        ))
        order.append(node.name)
        for inp in node.all_input_nodes:
            g.add_edge(inp.name, node.name)
        if feeds:
            g.add_edge(SOURCE, node.name)
            n_fed -= 1
    return Traced(gm=gm, fx_graph=fxg, graph=g, input_shapes=shapes, order=order, capture=cap.method,
                  rejected=list(cap.rejected))
