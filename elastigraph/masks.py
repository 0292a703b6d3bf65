"""One mask type for the whole library: ``{parameter name: bool tensor}``.

Everything that produces or consumes a ticket's mask (transfer, pruning, training,
files) goes through this module: validation, which tensors are prunable, installing a
mask into a model's forward (``torch.nn.utils.prune`` style) and reading it back, mask
files (safetensors; open_lth / E-LTH ``mask.pth`` read safely) and sparsity reports.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import safe_open as _st_open
from safetensors import torch as _st
from torch import nn
from torch.nn.utils import prune as _tprune

from .errors import MaskError, MaskTypeError

Mask = dict[str, torch.Tensor]
"""Parameter name (as in ``model.named_parameters()``) -> bool tensor of the same shape."""


def _model_label(model: nn.Module, name: str | None) -> str:
    return name or type(model).__name__


def _param_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Parameter names and shapes; for a model pruned with torch.nn.utils.prune the
    ``weight_orig`` entries are reported under their public name ``weight``."""
    shapes: dict[str, torch.Size] = {}
    for n, p in model.named_parameters():
        if n.endswith("_orig"):
            n = n[: -len("_orig")]
        shapes[n] = p.shape
    return shapes


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Tensors that several modules share (tied weights: GPT-2's LM head and token
    embedding; a module used by every block): ``{canonical name: [all its names]}``,
    canonical first. The canonical name is the one ``model.named_parameters()`` reports;
    masks, plans and tickets name a tied tensor by it only, so it is masked once and
    copied once (its other names follow the tie)."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n.removesuffix("_orig"))
    return {ns[0]: ns for ns in by_id.values() if len(ns) > 1}


def canonical_names(model: nn.Module) -> dict[str, str]:
    """``{alias: canonical name}`` for every other name of a tied parameter (see :func:`tied_names`)."""
    return {alias: ns[0] for ns in tied_names(model).values() for alias in ns[1:]}


def check_mask(model: nn.Module, mask: Mapping[str, torch.Tensor], *, model_name: str | None = None) -> Mask:
    """Validate ``mask`` against ``model`` and return a new dict of bool CPU tensors.

    Accepts bool tensors or numeric tensors holding only 0 and 1, for any subset of the
    model's parameters. Raises :class:`MaskError` naming the offending key.
    """
    if not isinstance(model, nn.Module):
        from .errors import ModelTypeError

        raise ModelTypeError(f"check_mask needs an nn.Module, got {type(model).__name__}")
    label = _model_label(model, model_name)
    if not isinstance(mask, Mapping):
        raise MaskTypeError(
            f"mask for {label} must be a dict of parameter name -> 0/1 tensor, got {type(mask).__name__}"
        )
    shapes = _param_shapes(model)
    alias = canonical_names(model)
    out: Mask = {}
    for key, t in mask.items():
        if not isinstance(key, str):
            raise MaskTypeError(f"mask for {label}: key {key!r} is not a string parameter name")
        if not isinstance(t, torch.Tensor):
            raise MaskTypeError(f"mask for {label}: entry {key!r} is a {type(t).__name__}, expected a tensor")
        if key in alias:  # another name of a tied parameter: one tensor, one mask entry
            if alias[key] in mask:
                raise MaskError(f"mask for {label}: {key!r} and {alias[key]!r} are one tied parameter; "
                                f"give its mask once, under {alias[key]!r}")
            key = alias[key]
        if key not in shapes:
            close = [n for n in shapes if n.endswith(key.split(".")[-1])][:3]
            hint = f"; parameters with a similar name: {close}" if close else ""
            raise MaskError(
                f"mask key {key!r} is not a parameter of {label} "
                f"(mask keys must be names from model.named_parameters(){hint})"
            )
        if tuple(t.shape) != tuple(shapes[key]):
            raise MaskError(
                f"mask entry {key!r} has shape {tuple(t.shape)} but {label}.{key} has shape {tuple(shapes[key])}"
            )
        out[key] = _to_bool(key, t, f"for {label}")
    return out


def _check_tensor(key: str, t: torch.Tensor, where: str) -> None:
    """A mask entry must be a dense tensor with data (not meta, not sparse, not a
    zero-stride broadcast view that would expand to far more entries than it stores)."""
    if t.is_meta:
        raise MaskTypeError(f"mask entry {key!r} {where} is a meta tensor (it has no values); "
                            "build the mask on the CPU or load it from a file")
    if t.layout != torch.strided:
        raise MaskTypeError(f"mask entry {key!r} {where} has layout {t.layout}; pass a dense tensor (t.to_dense())")
    if t.dtype != torch.bool and not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype in _INT_DTYPES):
        raise MaskTypeError(f"mask entry {key!r} {where} has dtype {t.dtype}; use bool or a 0/1 int/float tensor")


def _check_stored(key: str, t: Any, where: str) -> None:
    """A tensor read from a file may not declare more entries than its storage holds (a
    zero-stride view in a 256 KiB .pth can declare 256 M entries)."""
    if isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_meta and t.numel() > 0 \
            and t.untyped_storage().nbytes() < t.numel() * t.element_size():
        raise MaskError(
            f"mask entry {key!r} {where} declares {t.numel():,} entries but stores "
            f"{t.untyped_storage().nbytes():,} bytes (a broadcast view); refusing to expand it"
        )


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _to_bool(key: str, t: torch.Tensor, where: str) -> torch.Tensor:
    """A new bool CPU copy of the 0/1 tensor ``t``; :class:`MaskError` if it is not binary."""
    _check_tensor(key, t, where)
    if t.dtype == torch.bool:
        return t.detach().to("cpu").clone()
    td = t.detach().to("cpu")
    if td.is_complex() or not bool(((td == 0) | (td == 1)).all()):
        bad = td[(td != 0) & (td != 1)].flatten()[:3].tolist()
        raise MaskError(
            f"mask entry {key!r} {where} is not binary (found values such as {bad}); "
            "use a bool tensor or one holding only 0 and 1"
        )
    return td != 0


_LOOKUPS = (nn.Embedding, nn.EmbeddingBag)
_MAPS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_lookup_cache: dict[type, bool] = {}


def _is_lookup(cls: type) -> bool:
    """Whether modules of class ``cls`` use their ``weight`` as a lookup table (an
    embedding: rows picked by index) rather than as a linear map: nn.Embedding and
    nn.EmbeddingBag and their subclasses, or a class whose ``forward`` calls
    ``embedding(...)`` or indexes ``self.weight[...]``."""
    if issubclass(cls, _LOOKUPS):
        return True
    if issubclass(cls, _MAPS):
        return False
    if cls not in _lookup_cache:
        import inspect

        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            src = ""
        _lookup_cache[cls] = "embedding(" in src or "self.weight[" in src
    return _lookup_cache[cls]


def _maps(m: nn.Module) -> list[str]:
    """The attribute names of ``m``'s own parameters that it uses as a linear map or a
    convolution kernel (see :func:`prunable_parameters`)."""
    own = m._parameters
    if isinstance(m, nn.MultiheadAttention):
        return [n for n in _MHA_WEIGHTS if own.get(n, own.get(n + "_orig")) is not None]
    w = own.get("weight_orig", own.get("weight"))  # weight_orig: already pruned with torch.nn.utils.prune
    if w is None or w.dim() < 2 or _is_lookup(type(m)):
        return []
    return ["weight"]


def prunable_parameters(
    model: nn.Module,
    *,
    include_first: bool = True,
    include_last: bool = True,
    layer_types: tuple[type[nn.Module], ...] | None = None,
) -> list[str]:
    """Names of the weights that pruning considers, in module order: every weight a module
    uses as a linear map or a convolution kernel, decided by what the module computes and
    not by its class name.

    The rule: a module's own ``weight`` with 2 or more dimensions is prunable (nn.Linear,
    nn.Conv*, Hugging Face's ``Conv1D`` in GPT-2, timm's ``StdConv2d``, any custom layer
    that multiplies its input by a weight matrix), and so are nn.MultiheadAttention's
    input projections. Biases, norms (1-D) and embeddings never are: an embedding is a
    weight used as a lookup table (nn.Embedding, nn.EmbeddingBag, or a module whose
    ``forward`` calls ``embedding(...)`` / indexes ``self.weight[...]``). A tensor is
    judged by its uses: an embedding tied to a linear head (GPT-2's ``wte`` and
    ``lm_head``) is that head's weight, prunable as the head and named once by its
    canonical name (the lookup then reads the same masked tensor), so a tied and an
    untied LM head are treated alike; it sits last, where ``include_last=False`` drops it.
    ``include_first``/``include_last`` switch the first such weight (the stem) and the
    last one (the classifier). ``layer_types``: consider only the ``weight`` of modules
    of these classes instead."""
    alias = canonical_names(model)
    names = []
    for mname, m in model.named_modules(remove_duplicate=False):
        if layer_types is not None:
            attrs = ["weight"] if isinstance(m, layer_types) and getattr(m, "weight", None) is not None else []
        else:
            attrs = _maps(m)
        for attr in attrs:
            name = f"{mname}.{attr}" if mname else attr
            name = alias.get(name, name)  # a tied weight: once, under its canonical name
            if name not in names:
                names.append(name)
    if names and not include_first:
        names = names[1:]
    if names and not include_last:
        names = names[:-1]
    return names


def full_mask(model: nn.Module, names: Iterable[str] | None = None) -> Mask:
    """An all-ones (dense) mask over ``names`` (default: :func:`prunable_parameters`)."""
    shapes = _param_shapes(model)
    if names is None:
        names = prunable_parameters(model)
        if not names:
            raise MaskError(f"{type(model).__name__} has no prunable weights (no module uses a weight of 2 or more "
                            "dimensions as a linear map or a convolution kernel): a mask over it would prune "
                            "nothing; pass names=[...] to choose tensors")
    names = list(names)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise MaskError(f"{type(model).__name__} has no parameter(s) {missing[:3]}")
    return {n: torch.ones(shapes[n], dtype=torch.bool) for n in names}


def _split(name: str) -> tuple[str, str]:
    mod, _, attr = name.rpartition(".")
    return mod, attr


class _BoolMask(_tprune.CustomFromMask):
    """torch's ``CustomFromMask`` multiplying by the mask buffer as it is (bool): torch's
    own ``apply_mask`` converts the mask to the weight's dtype first, and autograd keeps that
    float copy, the size of the weight, alive with every effective weight. The product is
    the same numbers (``w * True == w``, ``w * False == 0 * w``), forward and backward."""

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        mask = getattr(module, self._tensor_name + "_mask")
        orig = getattr(module, self._tensor_name + "_orig")
        return orig * mask


def install(model: nn.Module, mask: Mapping[str, torch.Tensor], *, model_name: str | None = None) -> nn.Module:
    """Put ``mask`` into ``model``'s forward with ``torch.nn.utils.prune`` (``weight_orig``
    parameter, ``weight_mask`` buffer, a pre-forward hook). Pruned entries of the
    effective weight are exactly zero whatever the optimizer does to ``weight_orig``.
    Entries already installed are replaced. Returns ``model``.

    The ``weight_mask`` buffers are bool (1 byte an entry, not a float copy of the model;
    torch's hook multiplies ``weight_orig`` by the mask converted to its dtype, the same
    numbers as a float 0/1 mask). For a plain model with the pruned entries zeroed and no
    hooks, use :func:`zero_pruned`."""
    m = check_mask(model, mask, model_name=model_name)
    tied = tied_names(model)
    for name, b in m.items():
        fmask = None
        # a tied parameter is masked in every module that uses it, with one shared
        # ``_orig`` parameter and one shared ``_mask`` buffer: the tie holds while pruned
        for each in tied.get(name, [name]):
            mod_name, attr = _split(each)
            module = model.get_submodule(mod_name)
            existing = getattr(module, attr + "_mask", None)
            if isinstance(existing, torch.Tensor):
                if fmask is None or existing is not fmask:
                    existing.copy_(b)
                fmask = existing
                # refresh the effective weight now rather than at the next forward
                setattr(module, attr, getattr(module, attr + "_orig") * existing)
                continue
            # What prune.custom_from_mask does, minus its ones_like + extra product per
            # tensor (half of the cost on a large model): same attributes, buffer and hook,
            # so prune.remove and from_model treat it as any torch-pruned tensor.
            orig = module._parameters[attr]
            if fmask is None:
                fmask = b.to(device=orig.device, dtype=torch.bool)
            method = _BoolMask(fmask)
            method._tensor_name = attr
            del module._parameters[attr]
            module.register_parameter(attr + "_orig", orig)
            module.register_buffer(attr + "_mask", fmask)
            setattr(module, attr, method.apply_mask(module))
            module.register_forward_pre_hook(method)
    return model


def zero_pruned(model: nn.Module, mask: Mapping[str, torch.Tensor], *, model_name: str | None = None) -> nn.Module:
    """Set the entries ``mask`` prunes to zero in ``model``'s weights, in place, with no
    hooks, buffers or copies: a plain dense-with-zeros model (what a checkpoint folder
    holds). Training it does not keep the zeros; :func:`install` does. A mask already
    installed on a weight is made permanent first. Returns ``model``."""
    m = check_mask(model, mask, model_name=model_name)
    if any(n in m for n in from_model(model)):
        remove(model)
    with torch.no_grad():
        for name, b in m.items():
            p = model.get_parameter(name)
            p.masked_fill_(~b.to(p.device), 0)
    return model


def from_model(model: nn.Module) -> Mask:
    """Read the masks that ``torch.nn.utils.prune`` installed in ``model`` (its
    ``*_mask`` buffers), keyed by the public parameter name (``layer.weight``)."""
    out: Mask = {}
    alias = canonical_names(model)
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _tprune.BasePruningMethod):
                hooks = hook._pruning_methods if isinstance(hook, _tprune.PruningContainer) else [hook]
                attr = hooks[-1]._tensor_name
                buf = getattr(module, attr + "_mask")
                name = f"{mod_name}.{attr}" if mod_name else attr
                name = alias.get(name, name)  # a tied parameter: one entry
                if name not in out:
                    out[name] = buf.detach().to("cpu") != 0
    return out


def remove(model: nn.Module) -> nn.Module:
    """Make installed masks permanent (``prune.remove``): plain parameters again, with
    pruned entries zero. Returns ``model``."""
    tied = tied_names(model)
    for name in list(from_model(model)):
        first: nn.Parameter | None = None
        for each in tied.get(name, [name]):
            mod_name, attr = _split(each)
            module = model.get_submodule(mod_name)
            if not hasattr(module, attr + "_mask"):
                continue
            if first is not None:  # the other names of a tied parameter: the same tensor again
                _tprune.remove(module, attr)
                del module._parameters[attr]
                module.register_parameter(attr, first)
                continue
            keep = getattr(module, attr + "_mask") != 0
            _tprune.remove(module, attr)
            # prune.remove folds orig * mask, which leaves NaN/inf where a diverged run put
            # them under the mask; pruned entries must be exactly zero whatever happened.
            with torch.no_grad():
                p = getattr(module, attr)
                p.copy_(torch.where(keep, p, torch.zeros((), dtype=p.dtype, device=p.device)))
            first = p
    return model


def plain_state(state: Mapping[str, torch.Tensor], *, fold_mask: bool = True) -> dict[str, torch.Tensor]:
    """A state_dict with ``torch.nn.utils.prune`` entries under their public names:
    ``x_orig`` becomes ``x`` — with pruned entries zeroed when ``fold_mask``, the raw
    (e.g. rewound) values otherwise — and ``x_mask`` is dropped. Other entries are the
    same tensors, in the same order."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        base = k[: -len("_orig")] if k.endswith("_orig") else None
        if base is not None and base + "_mask" in state:
            if fold_mask:
                keep = state[base + "_mask"] != 0
                v = torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device))
            out[base] = v
        elif k.endswith("_mask") and k[: -len("_mask")] + "_orig" in state:
            continue
        else:
            out[k] = v
    return out


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` that also works while masks are installed: the effective
    ``weight`` that ``torch.nn.utils.prune`` keeps as a plain (non-leaf) attribute makes
    ``deepcopy`` raise; the copy gets a detached one, recomputed by its hook on forward.
    ``model`` itself is not touched."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def density(mask: Mapping[str, torch.Tensor]) -> float:
    """Fraction of entries kept over all tensors of ``mask`` (1.0 for an empty mask)."""
    total = sum(t.numel() for t in mask.values())
    kept = sum(int(torch.count_nonzero(t)) for t in mask.values())
    return kept / total if total else 1.0


def sparsity(mask: Mapping[str, torch.Tensor]) -> float:
    """1 - :func:`density`."""
    return 1.0 - density(mask)


# --------------------------------------------------------------------------------------
# Mask files: safetensors (our format) and the ``mask.pth`` files of open_lth / E-LTH.
# --------------------------------------------------------------------------------------

MASK_FORMAT_VERSION = 1
"""Version written into every mask file by :func:`save_mask`; newer files are refused."""

_META_FORMAT = "elastigraph.format"
_META_VERSION = "elastigraph.format_version"
_META_SPARSITY = "elastigraph.sparsity"
_META_KEYS = "elastigraph.keys"
_META_USER = "elastigraph.metadata"
_FORMATS_HINT = (
    "readable formats: an elastigraph mask file (.safetensors, written by save_mask) or an "
    "open_lth / E-LTH mask.pth (torch.save of a dict of 0/1 tensors)"
)


def _as_path(path: Any, what: str) -> Path:
    """``path`` as a Path; :class:`MaskTypeError` for anything that is not a str/PathLike."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path):
        raise MaskTypeError(f"{what} must be a file path (str or pathlib.Path), got {path!r}")
    return Path(path)


def _as_mask(mask: Mapping[str, torch.Tensor], where: str) -> Mask:
    """Validate a model-free mask (str keys, 0/1 tensors) and return bool CPU copies."""
    if not isinstance(mask, Mapping):
        raise MaskTypeError(f"{where}: expected a dict of name -> 0/1 tensor, got {type(mask).__name__}")
    out: Mask = {}
    for key, t in mask.items():
        if not isinstance(key, str):
            raise MaskTypeError(f"{where}: key {key!r} is not a string parameter name")
        if not isinstance(t, torch.Tensor):
            raise MaskTypeError(f"{where}: entry {key!r} is a {type(t).__name__}, expected a tensor")
        out[key] = _to_bool(key, t, where)
    return out


def mask_file_header(keys: list[str], sparsity_: float, metadata: Mapping[str, Any] | None,
                     path: Any = "") -> dict[str, str]:
    """The safetensors metadata of a mask file (format, version, sparsity, key order, the
    user's ``metadata`` as JSON): what :func:`save_mask` writes, for writers that stream a
    mask file tensor by tensor (:func:`elastigraph.transfer_folder`)."""
    header = {
        _META_FORMAT: "mask",
        _META_VERSION: str(MASK_FORMAT_VERSION),
        _META_SPARSITY: repr(float(sparsity_)),
        _META_KEYS: json.dumps(list(keys)),
    }
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise MaskTypeError(f"metadata for mask file {path} must be a dict, got {type(metadata).__name__}")
        try:
            header[_META_USER] = json.dumps(dict(metadata), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise MaskTypeError(
                f"metadata for mask file {path} must be JSON-serialisable (str, numbers, lists, dicts): {e}"
            ) from e
    return header


def save_mask(
    mask: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``mask`` to a safetensors file (bool tensors, key order, sparsity and format
    version in the header; ``metadata`` must be JSON-serialisable). The write is atomic:
    a temporary file in the same folder is renamed over ``path`` only when complete."""
    path = _as_path(path, "save_mask path")
    m = _as_mask(mask, f"mask to save to {path}")
    header = mask_file_header(list(m), sparsity(m), metadata, path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write mask file {path}: folder {path.parent} does not exist")
    from .io import atomic_write

    atomic_write(path, lambda tmp: _st.save_file({k: v.contiguous() for k, v in m.items()}, tmp, metadata=header),
                 mkdir=False)


def _sniff(path: Path) -> str:
    """'safetensors', 'torch' (zip or legacy pickle written by torch.save) or 'unknown'."""
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist or is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # zip archive / legacy pickle
        return "torch"
    return "unknown"


MAX_MASK_BYTES = 1 << 30
"""What a mask file may hold (or inflate to) when no model says how large its mask can
be: 1 GiB. With a model the bound is :func:`mask_budget` of its shapes."""


def mask_budget(model: nn.Module | None) -> int:
    """Bytes a mask file for ``model`` may hold once inflated: every parameter stored at
    8 bytes an entry (float64/int64, the widest a mask file uses) plus 1 MiB for the
    container (pickle, header, metadata); :data:`MAX_MASK_BYTES` without a model."""
    if model is None:
        return MAX_MASK_BYTES
    return sum(math.prod(s) for s in _param_shapes(model).values()) * 8 + (1 << 20)


def _bound_file(path: Path, model: nn.Module | None, model_name: str | None) -> None:
    """Refuse a mask file that holds, or declares it will inflate to, more bytes than a
    mask of ``model`` can need -- from the file's size and, for a torch zip archive, the
    uncompressed sizes its central directory declares (torch extracts an entry into a
    buffer of its declared size), before any payload is read."""
    budget = mask_budget(model)
    whose = f"a mask of {_model_label(model, model_name)} ({budget:,} bytes at most)" if model is not None else \
        f"the {budget:,} bytes a mask file may hold without a model to check it against"
    size = path.stat().st_size
    if size > budget:
        raise MaskError(f"mask file {path} is {size:,} bytes, more than {whose}; is it the mask of another model?")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if not is_zip:
        return
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise MaskTypeError(f"mask file {path} is not a readable torch.save file ({e}); {_FORMATS_HINT}") from None
    for i in infos:  # torch.save stores entries uncompressed; a high ratio is a bomb whatever the budget
        if i.compress_type != zipfile.ZIP_STORED and i.file_size > 100 * i.compress_size + (1 << 20):
            raise MaskError(
                f"mask file {path}: entry {i.filename!r} inflates {i.compress_size:,} bytes to {i.file_size:,} "
                "(torch.save does not compress); refused before reading (a compressed-file bomb)")
    total = sum(i.file_size for i in infos)
    if total > budget or len(infos) > 100_000:
        big = max(infos, key=lambda i: i.file_size)
        raise MaskError(
            f"mask file {path} ({size:,} bytes) declares {total:,} bytes once inflated in {len(infos):,} entries "
            f"(largest: {big.filename!r}, {big.file_size:,} bytes), more than {whose}; refused before reading "
            "(a compressed-file bomb, or the file of a much larger model)")


def _read_safetensors(path: Path, model: nn.Module | None = None,
                      model_name: str | None = None) -> tuple[Mask, dict[str, str]]:
    try:
        with _st_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            if model is not None:  # keys and declared shapes first: nothing read yet
                _fits(model, {k: _Declared(f.get_slice(k).get_shape()) for k in f.keys()}, f"mask file {path}",
                      model_name)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except MaskError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise MaskTypeError(f"mask file {path} is not a readable safetensors file ({e}); {_FORMATS_HINT}") from e
    version = header.get(_META_VERSION)
    if version is not None and (not (version.isascii() and version.isdigit()) or int(version) > MASK_FORMAT_VERSION):
        raise MaskTypeError(
            f"mask file {path} has format version {version!r}; this elastigraph reads versions "
            f"<= {MASK_FORMAT_VERSION} (upgrade elastigraph)"
        )
    try:
        order = json.loads(header.get(_META_KEYS, "[]"))
        if not isinstance(json.loads(header.get(_META_USER, "{}")), dict):
            raise ValueError(f"{_META_USER} is not a JSON object")
        if not math.isfinite(float(header.get(_META_SPARSITY, "0"))):
            raise ValueError(f"{_META_SPARSITY} is not a finite number")
    except (ValueError, RecursionError) as e:
        raise MaskTypeError(f"mask file {path} has a corrupt elastigraph header ({e}); write it again with save_mask") from e
    if isinstance(order, list) and sorted(order) == sorted(tensors):
        tensors = {k: tensors[k] for k in order}
    return _as_mask(tensors, f"mask file {path}"), header


def load_mask(path: str | os.PathLike[str]) -> Mask:
    """Read a safetensors mask file (as written by :func:`save_mask`, or any safetensors
    file of 0/1 tensors) into bool tensors, in the order they were saved."""
    path = _as_path(path, "load_mask path")
    kind = _sniff(path)
    if kind != "safetensors":
        hint = "; it looks like a torch.save file: use load_lth_mask or read_mask" if kind == "torch" else ""
        raise MaskTypeError(f"mask file {path} is not a safetensors file{hint}; {_FORMATS_HINT}")
    _bound_file(path, None, None)
    return _read_safetensors(path)[0]


def mask_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a mask file written by :func:`save_mask`: ``format_version``,
    ``sparsity`` and the user ``metadata`` dict (None/empty for foreign safetensors files)."""
    path = _as_path(path, "mask_metadata path")
    if _sniff(path) != "safetensors":
        raise MaskTypeError(f"mask file {path} is not a safetensors file; only save_mask files carry metadata")
    header = _read_safetensors(path)[1]
    return {  # _read_safetensors has checked that each of these parses
        "format_version": int(header[_META_VERSION]) if _META_VERSION in header else None,
        "sparsity": float(header[_META_SPARSITY]) if _META_SPARSITY in header else None,
        "metadata": json.loads(header[_META_USER]) if _META_USER in header else {},
    }


class _Declared:
    """A tensor's shape as a file header declares it (nothing read): for :func:`_fits`."""

    def __init__(self, shape: Any):
        self.shape = tuple(shape)


def _fits(model: nn.Module | None, obj: Any, where: str, model_name: str | None) -> None:
    """With ``model``: every key names one of its parameters and every declared shape is
    its shape -- checked on the raw file contents, before any tensor is converted (a
    small file can declare a huge tensor)."""
    if model is None or not isinstance(obj, Mapping):
        return
    shapes = _param_shapes(model)
    label = _model_label(model, model_name)
    for key, t in obj.items():
        if isinstance(key, str) and key not in shapes:
            raise MaskError(f"{where}: key {key!r} is not a parameter of {label}; is it the mask of another model?")
        if isinstance(key, str) and isinstance(t, (torch.Tensor, _Declared)) and tuple(t.shape) != tuple(shapes[key]):
            raise MaskError(f"{where}: entry {key!r} has shape {tuple(t.shape)} but {label}.{key} has shape "
                            f"{tuple(shapes[key])}; is it the mask of another model?")


def load_lth_mask(path: str | os.PathLike[str], *, model: nn.Module | None = None,
                  model_name: str | None = None) -> Mask:
    """Read an open_lth / E-LTH ``mask.pth`` (``torch.save`` of a dict of int/float 0/1
    tensors keyed by state_dict names) with ``weights_only=True``: files holding anything
    but tensors and plain containers are refused, never unpickled."""
    path = _as_path(path, "load_lth_mask path")
    kind = _sniff(path)
    if kind == "safetensors":
        raise MaskTypeError(f"mask file {path} is a safetensors file: use load_mask or read_mask")
    _bound_file(path, model, model_name)
    try:
        # A file object, not the path: torch.load reroutes paths ending in .safetensors.
        with open(path, "rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MaskTypeError(
            f"refused to load mask file {path}: it holds objects other than tensors and plain "
            f"containers, which could run code when unpickled ({str(e).splitlines()[0]}); {_FORMATS_HINT}"
        ) from e
    except Exception as e:  # corrupt zip, truncated pickle, not a torch file at all
        raise MaskTypeError(f"mask file {path} is not a readable torch.save file ({e}); {_FORMATS_HINT}") from e
    if not isinstance(obj, Mapping):
        raise MaskTypeError(
            f"mask file {path} holds a {type(obj).__name__}, expected a dict of name -> 0/1 tensor; {_FORMATS_HINT}"
        )
    for key, t in obj.items():
        _check_stored(str(key), t, f"in mask file {path}")
    _fits(model, obj, f"mask file {path}", model_name)
    return _as_mask(obj, f"mask file {path}")


def read_mask(path: str | os.PathLike[str], *, model: nn.Module | None = None,
              model_name: str | None = None) -> Mask:
    """Read any mask file elastigraph knows, choosing the reader by the file's content
    (safetensors header or torch.save archive), not its suffix. One entry point for the CLI.
    With ``model``, keys and declared shapes are checked against it before any tensor is
    materialised, and the result is :func:`check_mask`-ed."""
    path = _as_path(path, "read_mask path")
    kind = _sniff(path)
    if kind == "safetensors":
        _bound_file(path, model, model_name)
        m = _read_safetensors(path, model, model_name)[0]
        return check_mask(model, m, model_name=model_name) if model is not None else m
    if kind == "torch":
        m = load_lth_mask(path, model=model, model_name=model_name)
        return check_mask(model, m, model_name=model_name) if model is not None else m
    raise MaskTypeError(f"mask file {path} is in no format elastigraph reads; {_FORMATS_HINT}")


# --------------------------------------------------------------------------------------
# Sparsity reports
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSparsity:
    """One tensor's row of a :class:`SparsityReport`."""

    name: str
    shape: tuple[int, ...]
    numel: int
    kept: int
    in_mask: bool = True
    """False for a prunable parameter of the model that the mask does not cover (counted dense)."""

    @property
    def density(self) -> float:
        return self.kept / self.numel if self.numel else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density


@dataclass(frozen=True)
class SparsityReport:
    """Per-tensor and global kept/total counts of a mask. Print it with rich (``__rich__``)
    or ``str()``; ``to_dict()`` is JSON-ready."""

    rows: tuple[LayerSparsity, ...]
    model_name: str | None = None

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def density(self) -> float:
        return self.kept / self.numel if self.numel else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def not_in_mask(self) -> list[str]:
        """Prunable parameters of the model absent from the mask, counted as dense."""
        return [r.name for r in self.rows if not r.in_mask]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict: totals plus one entry per tensor."""
        return {
            "model": self.model_name,
            "numel": self.numel,
            "kept": self.kept,
            "density": self.density,
            "sparsity": self.sparsity,
            "not_in_mask": self.not_in_mask,
            "layers": [
                {
                    "name": r.name,
                    "shape": list(r.shape),
                    "numel": r.numel,
                    "kept": r.kept,
                    "density": r.density,
                    "in_mask": r.in_mask,
                }
                for r in self.rows
            ],
        }

    def __rich__(self) -> Any:
        from rich.table import Table

        from rich.markup import escape

        title = f"Sparsity of {escape(self.model_name)}" if self.model_name else "Sparsity"
        missing = self.not_in_mask
        caption = (
            f"* {len(missing)} prunable tensor(s) not in the mask, counted as dense" if missing else None
        )
        table = Table(title=title, caption=caption, show_footer=True)
        table.add_column("tensor", footer="total")
        table.add_column("shape")
        table.add_column("params", justify="right", footer=f"{self.numel:,}")
        table.add_column("kept", justify="right", footer=f"{self.kept:,}")
        table.add_column("density", justify="right", footer=f"{self.density:.2%}")
        table.add_column("sparsity", justify="right", footer=f"{self.sparsity:.2%}")
        for r in self.rows:
            table.add_row(
                escape(r.name) + ("" if r.in_mask else " *"),
                "x".join(map(str, r.shape)) or "scalar",
                f"{r.numel:,}",
                f"{r.kept:,}",
                f"{r.density:.2%}",
                f"{r.sparsity:.2%}",
            )
        return table

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(file=io.StringIO(), width=110, color_system=None, force_terminal=False)
        console.print(self)
        return console.file.getvalue()


def sparsity_report(
    mask: Mapping[str, torch.Tensor], model: nn.Module | None = None, *, model_name: str | None = None
) -> SparsityReport:
    """Kept/total counts per tensor of ``mask`` and overall. With ``model``, the mask is
    checked against it and prunable parameters the mask omits are counted as dense rows
    (flagged ``in_mask=False``), in the model's parameter order."""
    if model is None:
        m = _as_mask(mask, "mask given to sparsity_report")
        rows = [LayerSparsity(k, tuple(t.shape), t.numel(), int(torch.count_nonzero(t))) for k, t in m.items()]
        return SparsityReport(tuple(rows), model_name)
    m = check_mask(model, mask, model_name=model_name)
    shapes = _param_shapes(model)
    names = set(m) | set(prunable_parameters(model))
    rows = []
    for n in shapes:
        if n not in names:
            continue
        if n in m:
            rows.append(LayerSparsity(n, tuple(m[n].shape), m[n].numel(), int(torch.count_nonzero(m[n]))))
        else:
            numel = math.prod(shapes[n])
            rows.append(LayerSparsity(n, tuple(shapes[n]), numel, numel, in_mask=False))
    return SparsityReport(tuple(rows), model_name or type(model).__name__)
