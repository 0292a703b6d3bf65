"""Transfer a ticket from a Hugging Face checkpoint folder to a new one, streamed (issue 23).

``transfer_folder(src, dst, num_hidden_layers=...)`` never holds the model: it builds the
source and target models on the meta device from the configs (shapes only), plans the
transfer between them (:func:`elastigraph.transfer`), and then writes the target's
safetensors shards one at a time, each tensor read from the source's shards when it is
needed (``safe_open``), masked, and dropped once its shard is written. Magnitude or N:M
pruning of the source is done the same way (:func:`elastigraph.prune._core.select` reads
one tensor at a time). Peak memory: about one output shard, one tensor and the bool
masks (1 byte a prunable weight), whatever the size of the model.

The output is the folder :func:`elastigraph.models.hf_folder.save_pretrained` writes
(config, sharded safetensors with an index, the mask file, ``elastigraph.json``), so
``from_pretrained`` and :func:`elastigraph.models.hf_folder.load_pretrained` read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from . import masks as _masks
from .errors import ConfigError, MaskError, ModelTypeError
from .models import hf_folder
from .prune import _core

INDEX_FILE = "model.safetensors.index.json"


class _Shards(Mapping[str, torch.Tensor]):
    """A folder's safetensors tensors by name, each read from disk when asked for (one
    tensor in memory at a time); ``shape``/``dtype`` come from the headers."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / INDEX_FILE
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors") if p.name != hf_folder.MASK_FILE)
        if not files:
            raise ModelTypeError(f"{folder} has no safetensors weights (model.safetensors or {INDEX_FILE})")
        self.folder = folder
        self._where = {}
        for f in files:
            with safe_open(str(folder / f), framework="pt") as h:
                self._where.update({k: f for k in h.keys()})

    def _file(self, key: str):
        from safetensors import safe_open

        return safe_open(str(self.folder / self._where[key]), framework="pt")

    def __getitem__(self, key: str) -> torch.Tensor:
        # opened per read: a file kept open stays mapped, and every page read from it
        # would count in the process's resident memory until the end
        with self._file(key) as h:
            return h.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        with self._file(key) as h:
            return tuple(h.get_slice(key).get_shape())


class _Lazy(Mapping[str, torch.Tensor]):
    """The prunable ``names`` of a model over a :class:`_Shards` (its checkpoint keys)."""

    def __init__(self, shards: _Shards, names: list[str], key_of: Mapping[str, str]):
        self.shards, self.names, self.key_of = shards, names, key_of

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.shards[self.key_of[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _meta_model(config: Any) -> torch.nn.Module:
    transformers = hf_folder._transformers()
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _source_keys(model: torch.nn.Module, shards: _Shards) -> dict[str, str]:
    """Model state key -> checkpoint key (tied aliases: the copy the checkpoint holds)."""
    tied = _masks.tied_names(model)
    out = {}
    for k in model.state_dict():
        for alias in [k, *tied.get(k, [])]:
            if alias in shards._where:
                out[k] = alias
                break
        else:
            for names in tied.values():
                if k in names:
                    hit = next((a for a in names if a in shards._where), None)
                    if hit:
                        out[k] = hit
            if k not in out:
                raise ModelTypeError(f"the checkpoint has no tensor for {k!r} of {type(model).__name__}")
    return out


def transfer_folder(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    num_hidden_layers: int,
    mask: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    sparsity: float | None = None,
    n_m: str | tuple[int, int] | None = None,
    strategy: str | None = None,
    shard_bytes: int = 1 << 30,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Stretch or squeeze the checkpoint folder ``src`` to ``num_hidden_layers`` layers
    into the new folder ``dst``, streamed tensor by tensor. The ticket's mask is ``mask``
    (a mask file or dict for ``src``'s model), else a magnitude mask of ``src``'s
    weights (``sparsity``: global, or ``n_m="2:4"``: N:M), else dense. Returns ``dst``."""
    transformers = hf_folder._transformers()
    from safetensors.torch import save_file

    from .transfer import transfer

    src = Path(src)
    if not (src / "config.json").is_file():
        raise ModelTypeError(f"{src} is not a Hugging Face model folder (no config.json)")
    if isinstance(num_hidden_layers, bool) or not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
        raise ConfigError(f"transfer_folder: num_hidden_layers must be a positive integer, got {num_hidden_layers!r}")
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise ConfigError(f"transfer_folder: shard_bytes must be a positive integer, got {shard_bytes!r}")
    given = sum(x is not None for x in (mask, sparsity, n_m))
    if given > 1:
        raise ConfigError("transfer_folder: give one of mask, sparsity and n_m")
    dest = hf_folder._check_path(dst, overwrite)
    meta_info = hf_folder._check_metadata(metadata)

    config = transformers.AutoConfig.from_pretrained(str(src))
    dst_config = transformers.AutoConfig.from_pretrained(str(src))
    dst_config.num_hidden_layers = num_hidden_layers
    src_model, dst_model = _meta_model(config), _meta_model(dst_config)
    shards = _Shards(src)
    key_of = _source_keys(src_model, shards)

    names = _masks.prunable_parameters(src_model)
    if isinstance(mask, (str, os.PathLike)):
        src_mask = _masks.read_mask(mask, model=src_model)
    elif mask is not None:
        src_mask = _masks.check_mask(src_model, mask)
    elif sparsity is not None:
        sparsity = _core.check_unit(sparsity, "sparsity", "transfer_folder")
        one = torch.ones((), dtype=torch.bool)
        current = {n: one.expand(shards.shape(key_of[n])) for n in names}  # all alive, no memory
        src_mask = _core.select(_Lazy(shards, names, key_of), current, scope="global", density=1.0 - sparsity,
                                method="transfer_folder", transform=torch.abs, nonnegative=True)
    elif n_m is not None:
        nm = _core.parse_n_m(n_m, "transfer_folder")
        src_mask = {}
        for n in names:
            il = _core.input_last(src_model, n)
            w = shards[key_of[n]]
            keep = _core.n_m_keep(_core.as_rows(w.abs(), il), _core.as_rows(torch.ones(w.shape, dtype=torch.bool), il),
                                  *nm, name=n, method="transfer_folder")
            src_mask[n] = _core.from_rows(keep, w, il)
            del w
    else:
        src_mask = _masks.full_mask(src_model, names)

    # planned with the smallest masked tensor alone: the plan (which source tensor feeds
    # each target one) does not depend on the mask's values, and transfer() would hold a
    # checked copy of the whole mask; the target mask is then the source's entries, shared
    # by reference (a copied block's tensors cloned, as transfer() does)
    probe = min(src_mask, key=lambda k: src_mask[k].numel())
    ticket = transfer(src_model, {probe: src_mask[probe]}, dst_model, strategy=strategy)
    dst_mask: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for n in _masks.prunable_parameters(dst_model):
        s_ = ticket.sources.get(n)
        if s_ in src_mask:
            dst_mask[n] = src_mask[s_].clone() if s_ in used else src_mask[s_]
            used.add(s_)
    dst_state = dst_model.state_dict(keep_vars=True)
    aliases = set(_masks.canonical_names(dst_model))  # tied tensors are written once

    tmp = dest.with_name(f".{dest.name}.streaming.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}
    size = total = 0
    files: list[list[str]] = []
    zeros = 0

    def flush() -> None:
        nonlocal pending, size
        if pending:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(pending, str(tmp / name), metadata={"format": "pt"})
            files.append(list(pending))
            for k in pending:
                weight_map[k] = name
        pending, size = {}, 0

    for key, t in dst_state.items():
        if key in aliases:
            continue
        skey = ticket.sources.get(key)
        if skey is None:
            raise MaskError(f"transfer_folder: target tensor {key!r} has no source tensor in the plan")
        value = shards[key_of[skey]]
        if tuple(value.shape) != tuple(t.shape):
            raise MaskError(f"transfer_folder: {key!r} has shape {tuple(t.shape)} but its source {skey!r} has "
                            f"{tuple(value.shape)}")
        if key in dst_mask:
            value = value.masked_fill(~dst_mask[key], 0)
            zeros += int((value == 0).sum())
        nbytes = value.numel() * value.element_size()
        if pending and size + nbytes > shard_bytes:
            flush()
        pending[key] = value.contiguous()
        size += nbytes
        total += nbytes
    flush()
    n = len(files)
    for i, keys in enumerate(files):  # the names transformers gives shards: model-0000i-of-0000n
        old, new = f"model-{i + 1:05d}.safetensors", f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(tmp / old, tmp / new)
        for k in keys:
            weight_map[k] = new
    (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    dst_config.save_pretrained(str(tmp))
    _masks.save_mask(dst_mask, tmp / hf_folder.MASK_FILE,
                     metadata={"plan_dst": ticket.plan.dst, "architecture": type(dst_model).__name__, **meta_info})
    masked = sum(m.numel() for m in dst_mask.values())
    info = {
        "format": "elastigraph.hf_folder",
        "format_version": hf_folder.FOLDER_FORMAT_VERSION,
        "architecture": type(dst_model).__name__,
        "model_type": getattr(dst_config, "model_type", None),
        "num_hidden_layers": num_hidden_layers,
        "plan": ticket.plan.to_dict(),
        "mapping": ticket.plan.mapping_string(),
        "sparsity": {"source": _masks.sparsity(src_mask), "target": _masks.sparsity(dst_mask),
                     "weights": zeros / masked if masked else 0.0},
        "mask_file": hf_folder.MASK_FILE,
        "masked_tensors": len(dst_mask),
        "unmapped": list(ticket.unmapped),
        "reinit": list(ticket.reinit),
        "metadata": meta_info,
        "streamed_from": str(src),
    }
    (tmp / hf_folder.INFO_FILE).write_text(json.dumps(info, indent=2, allow_nan=False) + "\n")
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest
