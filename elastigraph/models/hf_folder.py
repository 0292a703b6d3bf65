"""A transferred ticket as a Hugging Face folder: what ``from_pretrained`` loads.

``save_pretrained(ticket, model, path)`` writes the target model of a transfer (``model``,
an ``hf:`` model such as ``create("hf:llama", num_hidden_layers=4, ...)``) with the ticket
applied and its mask baked in, so that ``transformers.AutoModelForCausalLM.from_pretrained
(path)`` loads it unchanged, with no elastigraph code::

    path/config.json             the target's config (its new layer count)
    path/model.safetensors       the weights, exactly zero where the mask prunes
    path/generation_config.json  (causal language models)
    path/mask.safetensors        the mask (:func:`elastigraph.masks.save_mask`), to keep
                                 training under it
    path/elastigraph.json        the plan, the sparsities, the caller's metadata

Transformers writes the weights itself, so tied tensors (GPT-2's LM head is its token
embedding) are saved once, as it expects (safetensors refuses shared tensors). The folder
is written under a temporary sibling name and renamed into place only when complete.
``load_pretrained(path)`` reads it back as ``(model, mask)`` and checks that every pruned
weight is zero. Needs the ``hf`` extra (``pip install 'elastigraph[hf]'``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from .. import masks as _masks
from ..errors import ConfigError, MaskError, ModelTypeError, OutputPathError, SegmentMismatchError

if TYPE_CHECKING:  # the transfer layer sits above models/: used by type only
    from ..transfer import Ticket

FOLDER_FORMAT_VERSION = 1
"""Version written into every ``elastigraph.json``; newer folders are refused by :func:`load_pretrained`."""
MASK_FILE = "mask.safetensors"
INFO_FILE = "elastigraph.json"


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ModelTypeError("writing or reading a Hugging Face folder needs transformers: "
                             "pip install 'elastigraph[hf]'") from e
    return transformers


def _check_model(model: Any) -> None:
    """``model`` must be a transformers ``PreTrainedModel`` (it has a config to write)."""
    if not isinstance(model, nn.Module):
        raise ModelTypeError(f"save_pretrained needs the transfer's target model (a transformers PreTrainedModel), "
                             f"got {type(model).__name__}")
    transformers = _transformers()
    if not isinstance(model, transformers.PreTrainedModel):
        raise ModelTypeError(f"{type(model).__name__} is not a Hugging Face transformers model (PreTrainedModel), so "
                             "there is no config for from_pretrained to read; build the target with an 'hf:' name "
                             "(create('hf:llama', num_hidden_layers=4, ...)) or save a plain model's ticket with "
                             "elastigraph.save_mask and Ticket.weights")


def _check_path(path: Any, overwrite: bool) -> Path:
    """The destination folder: not a file, nothing above it a file; an existing folder
    only if it is empty, or (with ``overwrite``) an earlier output of this module."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path):
        raise OutputPathError(f"the Hugging Face folder path must be a str or pathlib.Path, got {path!r}")
    p = Path(path)
    for parent in reversed(p.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"Hugging Face folder {str(p)!r}: {str(parent)!r} is a file, not a folder; "
                                  "choose another path")
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"Hugging Face folder {str(p)!r} is an existing file; give a folder path (new or empty)")
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise OutputPathError(f"Hugging Face folder {str(p)!r} exists and is not empty; choose a new folder or "
                                  "pass overwrite=True (CLI: --overwrite) to replace an earlier output")
        if not (p / INFO_FILE).is_file():
            raise OutputPathError(f"Hugging Face folder {str(p)!r} is not empty and holds no {INFO_FILE}: it was not "
                                  "written by elastigraph, so overwrite=True will not delete it; choose another path")
    return p


def check_output(model: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """The checks :func:`save_pretrained` makes on ``model`` and ``path`` before any work,
    for callers (the CLI) that want a bad destination to fail before a long transfer."""
    _check_model(getattr(model, "_orig_mod", model))
    return _check_path(path, overwrite)


def _check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"save_pretrained metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"save_pretrained metadata must be JSON-serialisable (str, numbers, lists, dicts): {e}") from None
    return dict(metadata)


def _check_layout(model: nn.Module) -> None:
    """The config must describe the model it goes with: a model built from it (on the
    meta device, no memory) has the same tensors. Catches a config whose layer count no
    longer matches the layers (a model edited after it was built), which from_pretrained
    would load with a warning and randomly initialised layers."""
    config = model.config
    try:
        with torch.device("meta"):
            ref = type(model)(config)
    except Exception:  # a class that cannot be built on the meta device: nothing to compare with
        return
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    if own != want:
        layers = getattr(config, "num_hidden_layers", None)
        missing, extra = sorted(set(want) - set(own)), sorted(set(own) - set(want))
        shape = sorted(k for k in set(own) & set(want) if own[k] != want[k])
        raise SegmentMismatchError(
            f"the config of {type(model).__name__} (num_hidden_layers={layers}) does not describe the model: a model "
            f"built from it would have {len(missing)} tensor(s) this one lacks ({missing[:3]}), lack {len(extra)} it "
            f"has ({extra[:3]}) and differ in shape at {shape[:3]}; build the target from its config "
            "(create('hf:...', num_hidden_layers=N)) instead of editing its layers afterwards")


def _baked_sparsity(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> float:
    """Share of exact zeros over the masked tensors of ``model`` (plain parameters); a
    pruned entry that is not zero is an error naming the tensor."""
    params = dict(model.named_parameters())
    zeros = total = 0
    for name, keep in mask.items():
        p = params[name].detach()
        bad = int(torch.count_nonzero(p[~keep.to(p.device)]))
        if bad:
            raise MaskError(f"{type(model).__name__}.{name}: {bad} weight(s) the mask prunes are not zero")
        zeros += p.numel() - int(torch.count_nonzero(p))
        total += p.numel()
    return zeros / total if total else 0.0


def save_pretrained(
    ticket: "Ticket",
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` with ``ticket`` applied as a Hugging Face folder at ``path`` and
    return the folder's path.

    ``model``: the transfer's target (a transformers ``PreTrainedModel``, e.g.
    ``create("hf:llama", num_hidden_layers=4, ...)``); it is not modified: the ticket goes
    into a copy (memory for one more model), whose mask is then made permanent (pruned
    weights exactly zero); a model that already has the ticket applied is fine too.
    ``metadata``: a JSON-serialisable dict stored in ``elastigraph.json`` and the mask file.
    ``path`` must not exist or be an empty folder; ``overwrite=True`` replaces an earlier
    output of this function (a folder holding ``elastigraph.json``), nothing else.
    ``elastigraph.json`` holds the plan, ``sparsity`` (``source``: the source mask's,
    ``target``: the transferred mask's, ``weights``: the share of zeros measured in the
    saved masked tensors, never below ``target``) and ``metadata``.

    Raises :class:`~elastigraph.errors.ModelTypeError` for a model that is not a Hugging
    Face one, :class:`~elastigraph.errors.SegmentMismatchError` for a ticket planned for
    another model, :class:`~elastigraph.errors.OutputPathError` for a path that is a file
    or a non-empty folder."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: the model it holds
    _check_model(model)
    dest = _check_path(path, overwrite)
    meta = _check_metadata(metadata)
    if not all(hasattr(ticket, a) for a in ("mask", "weights", "plan", "apply")):
        raise ModelTypeError(f"save_pretrained needs an elastigraph Ticket (from elastigraph.transfer), "
                             f"got {type(ticket).__name__}")
    label = type(model).__name__
    work = _masks.copy_model(model)
    ticket.apply(work)  # SegmentMismatchError naming what differs if it was planned for another model
    mask = _masks.from_model(work)
    _masks.remove(work)
    _check_layout(work)
    baked = _baked_sparsity(work, mask)
    sp = ticket.sparsity()
    config = work.config
    info = {
        "format": "elastigraph.hf_folder",
        "format_version": FOLDER_FORMAT_VERSION,
        "architecture": label,
        "model_type": getattr(config, "model_type", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "plan": ticket.plan.to_dict(),
        "mapping": ticket.plan.mapping_string(),
        "sparsity": {"source": sp["src"], "target": sp["dst"], "weights": baked},
        "mask_file": MASK_FILE,
        "masked_tensors": len(mask),
        "unmapped": list(getattr(ticket, "unmapped", [])),
        "reinit": list(getattr(ticket, "reinit", [])),
        "metadata": meta,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
    old = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.old")
    tmp.mkdir()
    try:
        work.save_pretrained(str(tmp))
        if not any(tmp.glob("*.safetensors")):
            raise ModelTypeError(f"transformers saved {label} without safetensors weights "
                                 f"({sorted(p.name for p in tmp.iterdir())}); upgrade transformers (>= 4.40)")
        _masks.save_mask(mask, tmp / MASK_FILE, metadata={"plan_dst": ticket.plan.dst, "architecture": label, **meta})
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, allow_nan=False) + "\n")
        if dest.exists():  # an empty folder or (overwrite) an earlier output: moved aside, then removed
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return dest


def load_pretrained(path: str | os.PathLike[str], **from_pretrained_kwargs: Any) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Read a folder written by :func:`save_pretrained`: ``(model, mask)``. The model
    class is the one its config names (``architectures``; ``AutoModelForCausalLM`` when
    it names none transformers has), loaded from local files only; keyword arguments go
    to ``from_pretrained`` (``dtype=``, ``device_map=``). The mask is checked against the
    model, and every weight it prunes must be exactly zero (:class:`MaskError` naming
    the tensor otherwise: the weights were edited or trained without the mask)."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path):
        raise ModelTypeError(f"load_pretrained needs the folder's path (str or pathlib.Path), got {path!r}")
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"Hugging Face folder {str(p)!r} does not exist or is not a folder")
    if not (p / MASK_FILE).is_file():
        raise FileNotFoundError(f"{str(p)!r} has no {MASK_FILE}: it is not a folder written by "
                                "elastigraph.save_pretrained (plain Hugging Face folders load with from_pretrained)")
    info_path = p / INFO_FILE
    version = None
    if info_path.is_file() and info_path.stat().st_size <= 1 << 24:
        with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError, RecursionError):
            version = json.loads(info_path.read_text()).get("format_version")
    if isinstance(version, int) and version > FOLDER_FORMAT_VERSION:
        raise ConfigError(f"{info_path} has format version {version}; this elastigraph reads versions "
                          f"<= {FOLDER_FORMAT_VERSION} (upgrade elastigraph)")
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(str(p), local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) and arch.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = transformers.AutoModelForCausalLM
    model = cls.from_pretrained(str(p), local_files_only=True, **from_pretrained_kwargs)
    mask = _masks.check_mask(model, _masks.load_mask(p / MASK_FILE), model_name=f"{cls.__name__} from {p}")
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        w = params[name].detach()
        bad = int(torch.count_nonzero(w[~keep.to(w.device)]))
        if bad:
            raise MaskError(f"{p}: {name} has {bad:,} nonzero weight(s) where {MASK_FILE} prunes "
                            f"({int((~keep).sum()):,} pruned); the weights were changed without the mask")
    return model, mask


__all__ = ["save_pretrained", "load_pretrained", "check_output", "FOLDER_FORMAT_VERSION", "MASK_FILE", "INFO_FILE"]
