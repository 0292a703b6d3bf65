"""Capture a model's computation as an fx graph.

Two ways, tried in order by :func:`capture`:

* :func:`trace`: ``torch.fx`` symbolic tracing, with the leaf-module and autowrap lists
  timm publishes for its own layers; fast, and module calls stay single nodes.
* :func:`export_graph`: non-strict ``torch.export`` (ATen ops, each with the module it
  ran in), for models whose forward torch.fx cannot trace (data-dependent Python, e.g.
  every Hugging Face transformers model). Rebased so that it reads like a traced graph.

Either way the result is a :class:`Capture`. The model is not modified: tensors fx met
while tracing are moved off it into ``Capture.constants``. Shapes are the job of
:mod:`.shapes`; the networkx graph that of :mod:`.build`.
"""

from __future__ import annotations

import contextlib
import io
from collections import abc
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError, ModelTypeError, TraceError
from .shapes import as_meta_args, default_inputs, propagate_shapes, wants_token_ids


@dataclass
class Capture:
    """A captured graph and what came with it."""

    graph: fx.Graph
    """The fx graph; ``get_attr``/``call_module`` targets are the model's qualified names."""
    method: str
    """``"torch.fx"`` (symbolic tracing) or ``"torch.export"`` (the non-strict fallback)."""
    constants: dict[str, Any] = field(default_factory=dict)
    """Values the graph's ``get_attr`` nodes read that are not the model's tensors
    (constants fx met while tracing, tensors torch.export lifted), by target name."""
    input_shapes: tuple | None = None
    """The input shapes the graph's ``tensor_meta``/``val`` were computed for; ``None``
    while shapes are still to be propagated (a fresh symbolic trace)."""
    rejected: list[str] = field(default_factory=list)
    """Example inputs tried before the one used, each with why the model refused it."""


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
        if is_regulariser(m):  # one opaque no-op, whatever its forward does in training
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


def is_regulariser(mod: nn.Module) -> bool:
    """Dropout / stochastic depth: no-ops for the function a trained block computes (kept
    as opaque leaves when tracing, and as no-ops in the graph)."""
    if isinstance(mod, nn.modules.dropout._DropoutNd):
        return True
    name = type(mod).__name__
    return not any(True for _ in mod.parameters()) and any(k in name for k in ("DropPath", "DropBlock", "StochasticDepth"))


def fetch(root: nn.Module, target: str) -> Any:
    """The object at the dotted ``target`` under ``root`` (``None`` where a part is missing)."""
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def unwrap_compiled(model: Any) -> Any:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, else ``model``:
    tracing and tensor names work on the original module (same tensors, no compile)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(model, nn.Module) and isinstance(inner, nn.Module) else model


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
    (not a TraceError: a bad argument must not send :func:`capture` to its torch.export
    fallback, which would ignore it)."""
    if isinstance(leaf_modules, (str, bytes)) or not isinstance(leaf_modules, abc.Iterable):
        raise ConfigError(f"leaf_modules must be a list of module classes (e.g. leaf_modules=(MyBlock,)), "
                          f"got {leaf_modules!r}")
    out = tuple(leaf_modules)
    bad = [t for t in out if not (isinstance(t, type) and issubclass(t, nn.Module))]
    if bad:
        raise ConfigError(f"leaf_modules must be nn.Module subclasses (e.g. leaf_modules=(MyBlock,)), got {bad[:3]}")
    return out


def trace(model: nn.Module, leaf_modules: Iterable[type] = (), *, model_name: str | None = None,
          n_inputs: int = 1) -> Capture:
    """Symbolically trace ``model`` (timm's non-traceable layers kept as leaves) into an
    fx Graph whose targets are ``model``'s qualified names (shapes not yet propagated).
    Optional ``forward`` arguments beyond the first ``n_inputs`` are bound to their
    defaults (:func:`optional_inputs`; traced as given if that fails). Raises
    :class:`TraceError`."""
    if not isinstance(model, nn.Module):
        raise ModelTypeError(f"expected an nn.Module to trace, got {type(model).__name__}")
    leaf_modules = check_leaf_modules(leaf_modules)
    timm_mods, timm_fns = _timm_leaves()
    tracer = _Tracer(tuple(leaf_modules) + tuple(timm_mods), tuple(timm_fns))
    label = model_name or type(model).__name__
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
        # move them off the user's model into Capture.constants
        constants = {k: model.__dict__.pop(k) for k in set(model.__dict__) - before}
        _drop_cached_proxies(model)
    return Capture(graph=graph, method="torch.fx", constants=constants)


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


def _export_args(model: nn.Module, example: Any, label: str) -> list[torch.Tensor]:
    """Real tensors (zeros; token ids where the model starts with an embedding) for
    torch.export, on the model's device."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = torch.long if wants_token_ids(model) else torch.float32
    out = []
    for a in as_meta_args(example, label, dtype == torch.long):
        if isinstance(example, torch.Tensor) and example.device.type != "meta":
            out.append(example.to(dev))
            continue
        out.append(torch.zeros(a.shape, dtype=a.dtype, device=dev))
    if isinstance(example, (tuple, list)) and example and all(isinstance(v, torch.Tensor) for v in example):
        out = [v.to(dev) if v.device.type != "meta" else o for v, o in zip(example, out)]
    return out


def export_graph(model: nn.Module, example_input: Any = None, *, model_name: str | None = None) -> Capture:
    """Capture ``model`` with non-strict ``torch.export`` into an fx Graph in the form
    :func:`trace` returns: ``get_attr`` targets are ``model``'s parameter names, every node
    carries its ``nn_module_stack`` (module names relative to ``model``) and its output
    shape. Used where torch.fx symbolic tracing fails. The model is run on fake tensors
    (no compute); its parameters are not modified. ``Capture.input_shapes``: the input shapes
    used (``example_input=None``: the first of :func:`default_inputs` that exports)."""
    label = model_name or type(model).__name__
    if not hasattr(torch, "export"):  # pragma: no cover - torch >= 2.2 has it
        raise TraceError(f"torch.export is not available in torch {torch.__version__} to capture {label}")
    cands = default_inputs(model) if example_input is None else [example_input]
    if not cands:
        raise TraceError(f"cannot guess an input for {label} (no conv/linear/embedding layer); pass example_input=")
    errors = []
    own_checks = True  # every failure an argument check of the model's own code
    for cand in cands:
        args = _export_args(model, cand, label)
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), _quiet_warnings():
                ep = torch.export.export(_Outputs(model), tuple(args), strict=False)
                gm = ep.module()
        except Exception as e:  # export raises many types (Unsupported, UserError, RuntimeError, ...)
            errors.append(f"{[tuple(a.shape) for a in args]}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
            own_checks &= type(e).__module__ == "builtins" and isinstance(e, (ValueError, TypeError))
            continue
        graph, constants = _rebase_exported(gm, model)
        return Capture(graph=graph, method="torch.export", constants=constants,
                       input_shapes=tuple(tuple(a.shape) for a in args), rejected=errors)
    if own_checks:
        raise _InputRejected(
            f"{label} rejects the example input: its own forward raised ({'; '.join(errors)}) before anything could "
            "be captured. It needs other or more inputs than those given (an encoder-decoder also needs its "
            "decoder's inputs): pass them all as example_input=[tensor, ...] in the order of its forward's "
            "arguments, or transfer the part that takes one input (its encoder)")
    raise TraceError(f"torch.export cannot capture {label} ({'; '.join(errors)}); pass an example_input= the "
                     "model accepts, or make its forward exportable")


class _InputRejected(TraceError):
    """The model's own code refused the example input (a missing or wrong argument): the
    cause of a failed capture, whatever torch.fx said before."""


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _rebase_exported(gm: fx.GraphModule, model: nn.Module) -> tuple[fx.Graph, dict[str, Any]]:
    """Make the exported graph refer to ``model`` (not the wrapper): strip the wrapper's
    ``m.`` prefix from get_attr targets and module stacks, drop export's guard and
    metadata-assert nodes, return tensors export created (lifted constants) as constants
    beside the graph, and give each get_attr the module scope of its first user."""
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
            value = fetch(gm, node.target)
            if not isinstance(fetch(model, target), torch.Tensor):
                constants[target] = value
            node.target = target
    for node in graph.nodes:
        if node.op == "get_attr" and node.users:
            node.meta["nn_module_stack"] = dict(next(iter(node.users)).meta.get("nn_module_stack") or {})
    return graph, constants


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


def capture(model: nn.Module, example_input: Any = None, leaf_modules: Sequence[type] = (), *,
            model_name: str | None = None) -> Capture:
    """``model``'s graph with its output shapes: torch.fx symbolic tracing first (fast,
    keeps module calls), then shape propagation on meta tensors; where tracing fails
    (data-dependent Python, e.g. every Hugging Face transformers model), non-strict
    ``torch.export``. ``Capture.method`` says which was used. Raises :class:`TraceError`
    naming the model and what would work."""
    leaf_modules = check_leaf_modules(leaf_modules)  # a bad argument must not fall back to export, which ignores it
    try:
        cap = trace(model, leaf_modules, model_name=model_name, n_inputs=_n_inputs(example_input))
    except TraceError as fx_error:
        try:
            return export_graph(model, example_input, model_name=model_name)
        except _InputRejected as ex_error:  # the real cause: say it first
            raise TraceError(f"{ex_error}. (torch.fx symbolic tracing had failed before: {fx_error})") from ex_error
        except TraceError as ex_error:
            raise TraceError(f"{fx_error} The torch.export fallback failed too: {ex_error}") from ex_error
    cap.input_shapes, cap.rejected = propagate_shapes(cap.graph, example_input, model, constants=cap.constants,
                                                      model_name=model_name)
    return cap
