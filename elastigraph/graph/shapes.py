"""Example inputs and output shapes of a traced model, found on meta tensors.

* Input guessing: :func:`default_inputs` lists candidate input shapes from what the
  model declares (first conv/linear layer, timm's ``pretrained_cfg``, ``img_size``,
  patch and window sizes; token ids for a model that starts with an embedding);
  :func:`infer_input_shape` picks the first one a forward accepts.
* Shape propagation: :func:`propagate_shapes` runs an fx graph on meta copies of the
  model's tensors (swapped in with ``torch.func.functional_call`` only for the call), so
  no data is computed and the model is never modified; each node gets ``tensor_meta``.

Nothing here captures a graph (:mod:`.capture`) or builds the networkx one (:mod:`.build`).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ModelTypeError, TraceError

_CANDIDATE_SIZES = (32, 64, 224)

WEIGHTED_MODULES = (nn.modules.conv._ConvNd, nn.Linear)
"""Module types that hold a layer's weights (the first one tells the input's channels)."""


def wants_token_ids(model: nn.Module) -> bool:
    """True if the model's first layer with weights is an embedding table: its input is
    token ids (integers), not real values."""
    first = next((m for m in model.modules()
                  if any(True for _ in m.parameters(recurse=False)) or isinstance(m, WEIGHTED_MODULES)), None)
    return isinstance(first, nn.Embedding)


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
    if wants_token_ids(model):  # a language model: 8 token ids (fits every position table)
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
    dtype = torch.long if wants_token_ids(model) else torch.float32
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


def propagate_shapes(graph: fx.Graph, example_input: Any, model: nn.Module, *, constants: dict[str, Any] | None = None,
                     model_name: str | None = None) -> tuple[tuple, list[str]]:
    """Annotate ``graph``'s nodes (traced from ``model``) with ``tensor_meta`` using meta
    tensors (no compute, the model's tensors untouched). ``example_input``: a tensor, a
    shape, or a list/tuple of tensors for multi-input models; ``None`` tries
    :func:`default_inputs`. ``constants``: the tensors tracing moved off the model
    (:attr:`.capture.Capture.constants`). Returns the input shapes used and the
    candidates rejected before them, each with why the model refused it."""
    label = model_name or type(model).__name__
    if example_input is None:
        cands = default_inputs(model)
        if not cands:
            raise TraceError(f"cannot guess an input shape for {label} (no conv/linear layer); pass example_input=")
    else:
        cands = [example_input]
    wrapper = _PropWrapper(model, graph)
    errors: list[str] = []
    meta_state = {f"g.{k}": _to_meta(v) for k, v in _all_tensors(model)}
    consts = constants or {}
    wrapper.constants = {k: _to_meta(v) if isinstance(v, torch.Tensor) else v for k, v in consts.items()}
    ids = wants_token_ids(model)
    for cand in cands:
        args = as_meta_args(cand, label, ids)
        err = _try_propagate(wrapper, meta_state, args)
        if err is None:
            return tuple(tuple(a.shape) for a in args), errors
        errors.append(err)
    # Some ops cannot run on meta tensors (data-dependent leaf modules, .item()): run the
    # first candidate for real, on a copy of the model's tensors so nothing is updated.
    if any("meta" in e for e in errors):
        real_state = {f"g.{k}": v.detach().clone() for k, v in _all_tensors(model)}
        wrapper.constants = dict(consts)
        args = [torch.zeros(a.shape, dtype=a.dtype) for a in as_meta_args(cands[0], label, ids)]
        err = _try_propagate(wrapper, real_state, args)
        if err is None:  # the first candidate is the one used: nothing was rejected before it
            return tuple(tuple(a.shape) for a in args), []
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


def as_meta_args(example: Any, label: str, ids: bool = False) -> list[torch.Tensor]:
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
