"""Trace a model with torch.fx and propagate shapes on meta tensors.

The output is a plain ``networkx.DiGraph`` (one node per fx node, plus a virtual
``__input__`` source) whose nodes carry the op kind, the target, the module scope, the
parameters/buffers the node reads and its output shape. The model itself is never
modified: shape propagation swaps meta copies of its tensors in only for the duration
of the call (``torch.func.functional_call``), so no data is computed or written.
"""

from __future__ import annotations

import contextlib
from collections import abc
import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import networkx as nx
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError, ModelTypeError, TraceError
from ..masks import canonical_names

SOURCE = "__input__"
"""Name of the virtual node that feeds every placeholder (so the graph has one entry)."""

_CANDIDATE_SIZES = (32, 64, 224)


def _timm_leaves() -> tuple[list[type], list[Any]]:
    """The modules and functions timm publishes as non-traceable (empty without timm)."""
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # timm < 1.0 kept the lists in a private module
        try:
            from timm.models._features_fx import _autowrap_functions, _leaf_modules
        except ImportError:  # pragma: no cover - timm is a dependency, but stay usable without it
            return [], []
        return list(_leaf_modules), [f for f in _autowrap_functions if callable(f)]
    return list(get_notrace_modules()), [f for f in get_notrace_functions() if callable(f)]


class _Tracer(fx.Tracer):
    """fx tracer with extra leaf types; remembers the module being traced so that a
    failure can name it."""

    def __init__(self, leaf_types: tuple[type, ...], autowrap: tuple[Any, ...]):
        super().__init__(autowrap_functions=autowrap)
        self.leaf_types = leaf_types
        self.scope_stack: list[tuple[str, type]] = []
        self._pnames: dict[int, str] | None = None
        self.failed_in: tuple[str, type] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if _is_regulariser(m):  # one opaque no-op, whatever its forward does in training
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        # Same result as fx's default, but with a name lookup table instead of a scan
        # over root.named_parameters() per access (quadratic on deep timm models).
        if isinstance(attr_val, nn.Parameter):
            if self._pnames is None:
                self._pnames = {id(p): n for n, p in self.root.named_parameters()}
            n = self._pnames.get(id(attr_val))
            if n is not None:
                if n not in parameter_proxy_cache:
                    parameter_proxy_cache[n] = self.create_proxy("get_attr", n, (), {})
                return parameter_proxy_cache[n]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m, forward, args, kwargs):
        self.scope_stack.append((self.path_of_module(m), type(m)))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module wins
                self.failed_in = self.scope_stack[-1]
            raise
        finally:
            self.scope_stack.pop()


def _model_label(model: nn.Module, name: str | None = None) -> str:
    return name or type(model).__name__


def optional_inputs(model: nn.Module, n_inputs: int = 1) -> dict[str, Any]:
    """``forward`` arguments beyond the first ``n_inputs`` that have a default (Hiera's
    ``mask=None``, ``pre_logits=False``): bound to it when tracing (fx ``concrete_args``),
    so that ``if mask is not None`` branches are not traced as if the input were given."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a C-implemented or odd forward: nothing to bind
        return {}
    out = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        if i >= max(n_inputs, 1) and (p.default is None or isinstance(p.default, (bool, int, float, str))):
            out[p.name] = p.default
    return out


def _n_inputs(example_input: Any) -> int:
    """How many inputs ``example_input`` feeds (a list of tensors or shapes: one each)."""
    if isinstance(example_input, (tuple, list)) and example_input and all(
            isinstance(v, (torch.Tensor, tuple, list, torch.Size)) for v in example_input):
        return len(example_input)
    return 1


def check_leaf_modules(leaf_modules: Any) -> tuple[type, ...]:
    """``leaf_modules`` as a tuple of ``nn.Module`` subclasses, else :class:`ConfigError`
    (not a TraceError: a bad argument must not send :func:`build_graph` to its
    torch.export fallback, which would ignore it)."""
    if isinstance(leaf_modules, (str, bytes)) or not isinstance(leaf_modules, abc.Iterable):
        raise ConfigError(f"leaf_modules must be a list of module classes (e.g. leaf_modules=(MyBlock,)), "
                          f"got {leaf_modules!r}")
    out = tuple(leaf_modules)
    bad = [t for t in out if not (isinstance(t, type) and issubclass(t, nn.Module))]
    if bad:
        raise ConfigError(f"leaf_modules must be nn.Module subclasses (e.g. leaf_modules=(MyBlock,)), got {bad[:3]}")
    return out


def trace(model: nn.Module, leaf_modules: Iterable[type] = (), *, model_name: str | None = None,
          n_inputs: int = 1) -> fx.Graph:
    """Symbolically trace ``model`` (timm's non-traceable layers kept as leaves) into an
    fx Graph whose targets are ``model``'s qualified names. Optional ``forward`` arguments
    beyond the first ``n_inputs`` are bound to their defaults (:func:`optional_inputs`;
    traced as given if that fails). Raises :class:`TraceError`."""
    if not isinstance(model, nn.Module):
        raise ModelTypeError(f"expected an nn.Module to trace, got {type(model).__name__}")
    leaf_modules = check_leaf_modules(leaf_modules)
    timm_mods, timm_fns = _timm_leaves()
    tracer = _Tracer(tuple(leaf_modules) + tuple(timm_mods), tuple(timm_fns))
    label = _model_label(model, model_name)
    before = set(model.__dict__)
    concrete = optional_inputs(model, n_inputs)
    try:
        graph = None
        if concrete:
            try:
                graph = tracer.trace(model, concrete_args=concrete)
            except Exception:  # a forward that needs its optional inputs traced: trace them
                tracer = _Tracer(tuple(leaf_modules) + tuple(timm_mods), tuple(timm_fns))
        if graph is None:
            graph = tracer.trace(model)
        else:  # fx's checks that a bound input is None at run time: not part of the model
            for node in list(graph.nodes):
                if node.op == "call_function" and getattr(node.target, "__name__", "") == "_assert_is_none":
                    graph.erase_node(node)
    except Exception as e:  # torch.fx raises TraceError/TypeError/RuntimeError/... by design
        where = tracer.failed_in or ("", type(model))
        qual, cls = where
        name = f"module {qual!r} ({cls.__name__})" if qual else f"the forward of {cls.__name__}"
        # marking a submodule a leaf can help; marking the whole model one cannot (nothing
        # would be left to analyse)
        fix = (f"Mark that module type as a leaf with leaf_modules=({cls.__name__},) (it is then treated as one "
               "opaque op), or make its forward traceable." if qual else
               "The failure is in the model's own forward, so a leaf_modules entry cannot help; its forward "
               "must be traceable, or capturable by torch.export with the inputs it needs (example_input).")
        raise TraceError(f"torch.fx cannot trace {label}: it failed inside {name}: {type(e).__name__}: {e}. {fix}") from e
    finally:
        # fx stores tensor constants met while tracing as attributes of the root module;
        # move them off the user's model onto the graph
        constants = {k: model.__dict__.pop(k) for k in set(model.__dict__) - before}
        _drop_cached_proxies(model)
    graph._elastigraph_constants = constants  # type: ignore[attr-defined]
    return graph


# ---------------------------------------------------------------------------- torch.export capture


class _Outputs(nn.Module):
    """Runs ``m`` and returns the tensors of its output reached through tuples, lists and
    dicts (a Hugging Face ``ModelOutput`` is a dict). Other objects -- a key/value cache
    -- are dropped, so that nothing but the model's results leaves the graph."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, *args: Any) -> tuple:
        return tuple(_tensor_leaves(self.m(*args)))


def _tensor_leaves(o: Any) -> list[torch.Tensor]:
    if isinstance(o, torch.Tensor):
        return [o]
    if isinstance(o, dict):
        return [t for v in o.values() for t in _tensor_leaves(v)]
    if isinstance(o, (list, tuple)):
        return [t for v in o for t in _tensor_leaves(v)]
    return []


def _wants_ids(model: nn.Module) -> bool:
    """True if the model's first layer with weights is an embedding table: its input is
    token ids (integers), not real values."""
    first = next((m for m in model.modules()
                  if any(True for _ in m.parameters(recurse=False)) or isinstance(m, _WEIGHTED)), None)
    return isinstance(first, nn.Embedding)


def _export_args(model: nn.Module, example: Any, label: str) -> list[torch.Tensor]:
    """Real tensors (zeros; token ids where the model starts with an embedding) for
    torch.export, on the model's device."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = torch.long if _wants_ids(model) else torch.float32
    out = []
    for a in _as_meta_args(example, label, dtype == torch.long):
        if isinstance(example, torch.Tensor) and example.device.type != "meta":
            out.append(example.to(dev))
            continue
        out.append(torch.zeros(a.shape, dtype=a.dtype, device=dev))
    if isinstance(example, (tuple, list)) and example and all(isinstance(v, torch.Tensor) for v in example):
        out = [v.to(dev) if v.device.type != "meta" else o for v, o in zip(example, out)]
    return out


def export_graph(model: nn.Module, example_input: Any = None, *,
                 model_name: str | None = None) -> tuple[fx.Graph, tuple]:
    """Capture ``model`` with non-strict ``torch.export`` into an fx Graph in the form
    :func:`trace` returns: ``get_attr`` targets are ``model``'s parameter names, every node
    carries its ``nn_module_stack`` (module names relative to ``model``) and its output
    shape. Used where torch.fx symbolic tracing fails. The model is run on fake tensors
    (no compute); its parameters are not modified. Returns the graph and the input shapes
    used (``example_input=None``: the first of :func:`default_inputs` that exports)."""
    label = _model_label(model, model_name)
    if not hasattr(torch, "export"):  # pragma: no cover - torch >= 2.2 has it
        raise TraceError(f"torch.export is not available in torch {torch.__version__} to capture {label}")
    cands = default_inputs(model) if example_input is None else [example_input]
    if not cands:
        raise TraceError(f"cannot guess an input for {label} (no conv/linear/embedding layer); pass example_input=")
    errors = []
    for cand in cands:
        args = _export_args(model, cand, label)
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), _quiet_warnings():
                ep = torch.export.export(_Outputs(model), tuple(args), strict=False)
                gm = ep.module()
        except Exception as e:  # export raises many types (Unsupported, UserError, RuntimeError, ...)
            errors.append(f"{[tuple(a.shape) for a in args]}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        graph = _rebase_exported(gm, model)
        graph._elastigraph_rejected = errors  # type: ignore[attr-defined]
        return graph, tuple(tuple(a.shape) for a in args)
    raise TraceError(f"torch.export cannot capture {label} ({'; '.join(errors)}); pass an example_input= the "
                     "model accepts, or make its forward exportable")


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _rebase_exported(gm: fx.GraphModule, model: nn.Module) -> fx.Graph:
    """Make the exported graph refer to ``model`` (not the wrapper): strip the wrapper's
    ``m.`` prefix from get_attr targets and module stacks, drop export's guard and
    metadata-assert nodes, keep tensors export created (lifted constants) as graph
    constants, and give each get_attr the module scope of its first user."""
    graph = gm.graph
    constants: dict[str, Any] = {}
    for node in list(graph.nodes):
        if node.op == "call_module" and not node.users:  # export's input guards (_guards_fn)
            graph.erase_node(node)
            continue
        if node.op == "call_function" and "_assert" in getattr(node.target, "__name__", "") and not node.users:
            graph.erase_node(node)
            continue
        stack = node.meta.get("nn_module_stack") or {}
        new_stack = {}
        for k, v in stack.items():
            path, cls = v if isinstance(v, tuple) else (str(v), None)
            path = path[2:] if path.startswith("m.") else "" if path == "m" else path
            if path:
                new_stack[k] = (path, cls)
        node.meta["nn_module_stack"] = new_stack
        if node.op == "get_attr":
            target = node.target[2:] if node.target.startswith("m.") else node.target
            value = _fetch(gm, node.target)
            if not isinstance(_fetch(model, target), torch.Tensor):
                constants[target] = value
            node.target = target
    for node in graph.nodes:
        if node.op == "get_attr" and node.users:
            node.meta["nn_module_stack"] = dict(next(iter(node.users)).meta.get("nn_module_stack") or {})
    graph._elastigraph_constants = constants  # type: ignore[attr-defined]
    return graph


def _drop_cached_proxies(model: nn.Module) -> None:
    """Remove fx proxies a forward cached in its module's dicts while being traced (timm's
    LeViT keeps ``attention_bias_cache`` in eval mode): the next trace would read a value
    of the previous graph ("Node ... referenced nonexistent value")."""
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, dict) and value and not isinstance(value, nn.Module):
                stale = [k for k, v in value.items() if isinstance(v, fx.Proxy)]
                for k in stale:
                    del value[k]


F = torch.nn.functional
# Ops whose output has the input's shape and dtype. Several of them go through slow
# Python decompositions on the meta device (batch norm, relu6, hardswish: ~1 ms each),
# so shape propagation answers them directly.
_SAME_SHAPE_MODULES = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity,
    nn.modules.dropout._DropoutNd,
)
_SAME_SHAPE_FNS = {
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish, F.dropout,
    F.batch_norm, F.layer_norm, F.group_norm, torch.sigmoid, torch.relu, torch.tanh, F.sigmoid, F.tanh,
}


class _MetaShapeProp(ShapeProp):
    """ShapeProp over (module, graph) without building a GraphModule, with shortcuts for
    shape-preserving ops (see ``_SAME_SHAPE_*``)."""

    def __init__(self, module: nn.Module, graph: fx.Graph, constants: dict[str, Any]):
        fx.Interpreter.__init__(self, module, graph=graph)
        self.fake_module = None
        self.fake_mode = None
        self.real_module = module
        self.constants = constants

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in self.constants:
            return self.constants[target]
        return super().get_attr(target, args, kwargs)

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        mod = self.fetch_attr(target)
        if isinstance(mod, _SAME_SHAPE_MODULES) and len(args) == 1 and isinstance(args[0], torch.Tensor):
            return torch.empty_like(args[0])
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in _SAME_SHAPE_FNS and args and isinstance(args[0], torch.Tensor):
            return torch.empty_like(args[0])
        return super().call_function(target, args, kwargs)


class _PropWrapper(nn.Module):
    """Runs ShapeProp on ``g`` so that functional_call can swap meta tensors into it."""

    def __init__(self, model: nn.Module, graph: fx.Graph):
        super().__init__()
        self.g = model
        self.fx_graph = graph
        self.constants: dict[str, Any] = {}

    def forward(self, *args: torch.Tensor) -> Any:
        return _MetaShapeProp(self.g, self.fx_graph, self.constants).propagate(*args)


def _to_meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta")


def default_inputs(model: nn.Module) -> list[tuple[int, ...]]:
    """Candidate example input shapes (batch 2), in the order tried: the first conv's
    channels at 32 pixels, timm's ``pretrained_cfg['input_size']``, then 64 and 224
    pixels (a first linear layer: its ``in_features``). Small first: the same input
    then fits siblings whose configs differ (EfficientNet-B0 224 vs B1 240)."""
    cands: list[tuple[int, ...]] = []
    if _wants_ids(model):  # a language model: 8 token ids (fits every position table)
        return [(2, 8)]
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), None)
    if isinstance(first, nn.Linear):
        cands.append((2, first.in_features))
    elif first is not None:
        nd = 1 if isinstance(first, nn.Conv1d) else 3 if isinstance(first, nn.Conv3d) else 2
        # the channels the model declares (timm's in_chans) beat the first conv's: TResNet's
        # first conv sees 48 channels, after a space-to-depth of the 3 input channels
        c = _declared_chans(model) or first.in_channels
        for s in _CANDIDATE_SIZES:
            cands.append((2, c) + (s,) * nd)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        size = tuple(int(v) for v in cfg["input_size"])
        if first is not None and not isinstance(first, nn.Linear) and len(size) == 3:
            size = (_declared_chans(model) or first.in_channels,) + size[1:]
        cands.insert(1 if cands else 0, (2,) + size)
    # a size the model declares itself (timm's PatchEmbed.img_size, torchvision's ViT
    # image_size) beats timm's pretrained_cfg, which does not follow img_size overrides
    declared = next((getattr(m, a) for m in model.modules() for a in ("img_size", "image_size")
                     if isinstance(getattr(m, a, None), (int, tuple, list))), None)
    if declared is not None and isinstance(first, nn.Conv2d):
        hw = (declared, declared) if isinstance(declared, int) else tuple(int(v) for v in declared)
        if len(hw) == 2:
            cands.insert(1 if cands else 0, (2, _declared_chans(model) or first.in_channels) + hw)
    # no declared image size, but patch and window sizes (windowed attention): the
    # smallest size whose token grid holds a whole window after 3 downsamplings
    patch, window = _declared_int(model, "patch_size"), _declared_int(model, "window_size")
    if declared is None and patch and window and isinstance(first, nn.Conv2d):
        side = patch * window * 8
        cands.insert(1 if cands else 0, (2, _declared_chans(model) or first.in_channels, side, side))
    seen: list[tuple[int, ...]] = []
    for c in cands:
        if c not in seen:
            seen.append(c)
    return seen


def unwrap_compiled(model: Any) -> Any:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else ``model``:
    tracing and tensor names work on the original module (same tensors, no compile)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(model, nn.Module) and isinstance(inner, nn.Module) else model


@contextlib.contextmanager
def keep_plain_tensors(model: nn.Module):
    """Restore, on exit, every tensor a module holds as a plain attribute (not a parameter
    or buffer). ``torch.nn.utils.prune``'s pre-forward hook sets ``module.weight =
    weight_orig * weight_mask`` on each forward: a forward on swapped-in meta tensors
    would otherwise leave ``weight`` a meta tensor in the caller's model."""
    saved = [(m, k, v) for m in model.modules() for k, v in list(vars(m).items()) if isinstance(v, torch.Tensor)]
    try:
        yield
    finally:
        for m, k, v in saved:
            m.__dict__[k] = v


def _declared_int(model: nn.Module, attr: str) -> int | None:
    """The first square ``attr`` (an int, or a pair of equal ints) a module declares."""
    for m in model.modules():
        v = getattr(m, attr, None)
        if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1]:
            v = v[0]
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _declared_chans(model: nn.Module) -> int | None:
    """Input channels the model declares (``in_chans`` on it or its patch embedding)."""
    for m in (model, getattr(model, "patch_embed", None), getattr(model, "stem", None)):
        c = getattr(m, "in_chans", None) if m is not None else None
        if isinstance(c, int) and not isinstance(c, bool) and c > 0:
            return c
    return None


def infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The first of :func:`default_inputs` that ``model`` accepts, without the batch
    dimension; checked with a forward on meta tensors (no compute, the model untouched)."""
    state = {k: _to_meta(v) for k, v in [*model.named_parameters(), *model.named_buffers()]}
    errors = []
    dtype = torch.long if _wants_ids(model) else torch.float32
    for shape in default_inputs(model):
        try:
            with torch.no_grad(), keep_plain_tensors(model):
                x = torch.empty((1,) + shape[1:], device="meta", dtype=dtype)
                torch.func.functional_call(model, state, (x,), strict=False)
            return shape[1:]
        except Exception as e:  # a shape the model rejects: try the next one
            errors.append(f"{shape[1:]}: {type(e).__name__}")
    raise ModelTypeError(
        f"cannot tell the input shape of {type(model).__name__} (tried {'; '.join(errors) or 'nothing: no conv or linear layer'}); "
        "pass the input shape explicitly"
    )


def propagate_shapes(graph: fx.Graph, example_input: Any, model: nn.Module, *, model_name: str | None = None) -> tuple:
    """Annotate ``graph``'s nodes (traced from ``model``) with ``tensor_meta`` using meta tensors (no compute, the
    model's tensors untouched). ``example_input``: a tensor, a shape, or a list/tuple of
    tensors for multi-input models; ``None`` tries :func:`default_inputs`. Returns the
    input shapes used."""
    label = _model_label(model, model_name)
    if example_input is None:
        cands = default_inputs(model)
        if not cands:
            raise TraceError(f"cannot guess an input shape for {label} (no conv/linear layer); pass example_input=")
    else:
        cands = [example_input]
    wrapper = _PropWrapper(model, graph)
    errors: list[str] = []
    meta_state = {f"g.{k}": _to_meta(v) for k, v in _all_tensors(model)}
    consts = getattr(graph, "_elastigraph_constants", {})
    wrapper.constants = {k: _to_meta(v) if isinstance(v, torch.Tensor) else v for k, v in consts.items()}
    ids = _wants_ids(model)
    for cand in cands:
        args = _as_meta_args(cand, label, ids)
        err = _try_propagate(wrapper, meta_state, args)
        if err is None:
            graph._elastigraph_rejected = errors  # type: ignore[attr-defined]
            return tuple(tuple(a.shape) for a in args)
        errors.append(err)
    # Some ops cannot run on meta tensors (data-dependent leaf modules, .item()): run the
    # first candidate for real, on a copy of the model's tensors so nothing is updated.
    if any("meta" in e for e in errors):
        real_state = {f"g.{k}": v.detach().clone() for k, v in _all_tensors(model)}
        wrapper.constants = dict(consts)
        args = [torch.zeros(a.shape, dtype=a.dtype) for a in _as_meta_args(cands[0], label, ids)]
        err = _try_propagate(wrapper, real_state, args)
        if err is None:
            return tuple(tuple(a.shape) for a in args)
        errors.append(err)
    raise TraceError(
        f"shape propagation through {label} failed for every example input tried ({'; '.join(errors)}). "
        "Pass example_input= (a tensor or an input shape such as (1, 3, 224, 224)) that the model accepts."
    )


def _all_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers, non-persistent buffers included (they are not in the
    state_dict but must be swapped too, e.g. attention index tables). One name per
    (module, attribute): a module shared by several blocks is reachable under several
    names, and swapping its tensor twice would leave a meta tensor in it when
    functional_call restores them. Tied tensors held by different modules (GPT-2's LM
    head and embedding) keep one name per module (swapped with ``tie_weights=False``)."""
    owners = dict(model.named_modules(remove_duplicate=False))
    seen: set[tuple[int, str]] = set()
    out = []
    for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        mod, _, attr = n.rpartition(".")
        key = (id(owners[mod]), attr)
        if key not in seen:
            seen.add(key)
            out.append((n, t))
    return out


def _try_propagate(wrapper: nn.Module, state: dict[str, torch.Tensor], args: list[torch.Tensor]) -> str | None:
    """Run shape propagation; None on success, else a one-line description of the failure."""
    try:
        # ShapeProp prints a traceback before re-raising; failures here are expected
        # while probing input sizes, so keep them off the user's terminal.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), keep_plain_tensors(wrapper):
            torch.func.functional_call(wrapper, state, tuple(args), strict=False, tie_weights=False)
        return None
    except Exception as e:
        cause = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else e
        msg = str(e)
        where = msg.split(" with meta=")[0].replace("ShapeProp error for: ", "at ") if "ShapeProp error" in msg else ""
        return f"{[tuple(a.shape) for a in args]}: {type(cause).__name__}: {str(cause)[:160]} {where}".strip()


def _shape_ok(v: Any) -> bool:
    """An input shape: a non-empty tuple/list/Size of positive (non-bool) ints."""
    return isinstance(v, (tuple, list, torch.Size)) and len(v) > 0 and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in v)


def _as_meta_args(example: Any, label: str, ids: bool = False) -> list[torch.Tensor]:
    """Meta tensors for ``example``; shapes become float inputs, or token ids (int64) when
    ``ids`` (a model whose first layer is an embedding)."""
    dtype = torch.long if ids else torch.float32
    shapes = [example] if isinstance(example, (tuple, list, torch.Size)) and example and all(
        isinstance(v, int) for v in example) else (list(example) if isinstance(example, (tuple, list)) and example and all(
            isinstance(v, (tuple, list, torch.Size)) for v in example) else [])
    for sh in shapes:
        if not _shape_ok(sh):
            raise TraceError(f"example_input shape {tuple(sh)} for {label} has a dimension that is not a positive "
                             "integer below 2**31; give a shape like (1, 3, 32, 32)")
    if isinstance(example, torch.Tensor):
        return [_to_meta(example)]
    if isinstance(example, (tuple, list, torch.Size)) and example and all(isinstance(v, int) for v in example):
        return [torch.empty(tuple(example), device="meta", dtype=dtype)]
    if isinstance(example, (tuple, list)) and example and all(isinstance(v, torch.Tensor) for v in example):
        return [_to_meta(v) for v in example]
    if isinstance(example, (tuple, list)) and example and all(isinstance(v, (tuple, list, torch.Size)) for v in example):
        return [torch.empty(tuple(v), device="meta", dtype=dtype) for v in example]
    raise TraceError(
        f"example_input for {label} must be a tensor, an input shape like (1, 3, 32, 32), or a list of "
        f"those for a multi-input model; got {type(example).__name__}"
    )


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
        elif node.op == "get_attr" and isinstance(_fetch(gm, node.target), nn.Parameter):
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
        obj = _fetch(gm, node.target)
        if isinstance(obj, nn.Parameter):
            params.append((node.target, tuple(obj.shape)))
        elif isinstance(obj, torch.Tensor):
            bufs.append((node.target, tuple(obj.shape)))
    return params, bufs


def _fetch(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


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


_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
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


def _is_regulariser(mod: nn.Module) -> bool:
    """Dropout / stochastic depth: no-ops for the function a trained block computes."""
    if isinstance(mod, nn.modules.dropout._DropoutNd):
        return True
    name = type(mod).__name__
    return not any(True for _ in mod.parameters()) and any(k in name for k in ("DropPath", "DropBlock", "StochasticDepth"))


@dataclass
class Traced:
    """A traced model: the model (``gm``: the root the fx graph's targets refer to), the fx
    graph, the annotated DiGraph and the input shapes used."""

    gm: nn.Module
    fx_graph: fx.Graph
    graph: nx.DiGraph
    input_shapes: tuple
    order: list[str] = field(default_factory=list)
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
    ``torch.export`` (see :func:`export_graph`). ``Traced.capture`` says which was used."""
    leaf_modules = check_leaf_modules(leaf_modules)
    try:
        fxg = trace(model, leaf_modules, model_name=model_name, n_inputs=_n_inputs(example_input))
        capture = "torch.fx"
    except TraceError as fx_error:
        try:
            fxg, shapes = export_graph(model, example_input, model_name=model_name)
        except TraceError as ex_error:
            raise TraceError(f"{fx_error} The torch.export fallback failed too: {ex_error}") from ex_error
        capture = "torch.export"
    else:
        shapes = propagate_shapes(fxg, example_input, model, model_name=model_name)
    gm = model
    g = nx.DiGraph()
    g.add_node(SOURCE, op="source", target="", kind="source", scope=(), params=[], buffers=[], shape=None,
               args=(), index=-1, module_repr="", weighted=False, noop=False, const=False, default=None)
    g.graph["module_types"] = {n: type(m).__qualname__ for n, m in model.named_modules()}
    g.graph["containers"] = {n for n, m in model.named_modules()
                             if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))}
    order: list[str] = []
    n_fed = len(shapes)  # placeholders beyond the fed inputs keep their defaults: constants
    alias = canonical_names(model)
    tensors = {node: _tensor_names(gm, node, alias) for node in fxg.nodes}
    shared = _shared_tensors(tensors)
    g.graph["shared"] = sorted(shared)
    side = _side_constants(fxg, gm) if capture == "torch.export" else set()
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
            weighted = isinstance(mod, _WEIGHTED)
            noop = isinstance(mod, nn.Identity) or _is_regulariser(mod)
            # regularisers (dropout, stochastic depth) do not change the math of a trained
            # block; their rates often differ per block and must not break segments.
            mrepr = "" if _is_regulariser(mod) else mod.extra_repr()
        elif node.op == "call_function":
            weighted = node.target in _WEIGHTED_FNS
            noop = _is_regulariser_fn(node)
        g.add_node(
            node.name,
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
        )
        order.append(node.name)
        for inp in node.all_input_nodes:
            g.add_edge(inp.name, node.name)
        if feeds:
            g.add_edge(SOURCE, node.name)
            n_fed -= 1
    return Traced(gm=gm, fx_graph=fxg, graph=g, input_shapes=shapes, order=order, capture=capture,
                  rejected=list(getattr(fxg, "_elastigraph_rejected", [])))
