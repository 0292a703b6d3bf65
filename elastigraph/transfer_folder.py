"""Transfer a ticket from a Hugging Face checkpoint folder to a new one, streamed (issue 23).

``transfer_folder(src, dst, num_hidden_layers=...)`` never holds the model, nor its mask:
it builds the source and target models on the meta device from the configs (shapes
only), plans the transfer between them (:func:`elastigraph.transfer`), and then writes
the target tensor by tensor: each read from the source's shards when it is needed
(plain reads, nothing mapped), its mask made from it (a global magnitude threshold found beforehand in
bounded memory by :func:`elastigraph.prune._core.select_rule`, or its N:M groups, or read
from a given mask file), masked in place, and appended to the output shard and to the mask
file, whose safetensors headers are written first (:class:`_StreamedFile`). Peak memory:
the interpreter with torch and transformers, the meta models and the plan, and about
three copies of the largest tensor (its values, its mask, a comparison), whatever the
size of the model or of the output shards.

The output is the folder :func:`elastigraph.models.hf_folder.save_pretrained` writes
(config, sharded safetensors with an index, the mask file, ``elastigraph.json``), so
``from_pretrained`` and :func:`elastigraph.models.hf_folder.load_pretrained` read it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from . import masks as _masks
from .errors import ConfigError, MaskError, ModelTypeError
from .models import hf_folder
from .prune import _core

INDEX_FILE = "model.safetensors.index.json"


_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
           torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
           torch.float64: "F64"}
_TORCH = {v: k for k, v in _DTYPES.items()}
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8}
MAX_HEADER = 100 << 20
"""The largest safetensors header read (safetensors' own limit)."""


class _SafetensorsFile:
    """A safetensors file's header, and its tensors read one at a time with plain file
    reads into a fresh tensor: nothing is mapped (``safe_open`` maps the whole file
    writable copy-on-write, which counts as data memory, RLIMIT_DATA, however little of it
    is read), and the tensor is the only copy, owned by the caller."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 2 <= n <= min(MAX_HEADER, size - 8):
                    raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
                header = json.loads(f.read(n))
            self.metadata = header.pop("__metadata__", None) or {}
            self.start = 8 + n
            self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
            for k, v in header.items():
                dtype, shape, (begin, end) = v["dtype"], tuple(int(d) for d in v["shape"]), v["data_offsets"]
                if dtype in _ITEMSIZE and (end - begin != math.prod(shape) * _ITEMSIZE[dtype] or begin < 0
                                           or self.start + end > size):
                    raise ValueError(f"tensor {k!r}: offsets {begin}..{end} do not hold {dtype} {shape} in the file")
                self.tensors[k] = (dtype, shape, int(begin), int(end))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise ModelTypeError(f"{path} is not a readable safetensors file ({e})") from None

    def read(self, key: str) -> torch.Tensor:
        dtype, shape, begin, end = self.tensors[key]
        if dtype not in _TORCH:
            raise ModelTypeError(f"{key!r} in {self.path} is stored as {dtype}; streamed transfers read "
                                 f"{sorted(_TORCH.values())}")
        if sys.byteorder != "little":  # safetensors is little-endian
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as h:
                return h.get_tensor(key)
        buf = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.start + begin)
            if buf.numel() and f.readinto(memoryview(buf.numpy())) != buf.numel():
                raise ModelTypeError(f"{self.path} ends inside tensor {key!r}")
        return buf.view(_TORCH[dtype]).reshape(shape)


class _Shards(Mapping[str, torch.Tensor]):
    """A folder's safetensors tensors by name, each read from disk when asked for (one
    tensor in memory at a time); ``shape``/``dtype`` come from the headers."""

    def __init__(self, folder: Path):
        index = folder / INDEX_FILE
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors") if p.name != hf_folder.MASK_FILE)
        if not files:
            raise ModelTypeError(f"{folder} has no safetensors weights (model.safetensors or {INDEX_FILE})")
        self.folder = folder
        self._where: dict[str, _SafetensorsFile] = {}
        self._info: dict[str, tuple[str, tuple[int, ...]]] = {}
        for f in files:
            h = _SafetensorsFile(folder / f)
            for k, (dtype, shape, _b, _e) in h.tensors.items():
                self._where[k] = h
                self._info[k] = (dtype, shape)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].read(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._info[key][1]

    def info(self, key: str) -> tuple[str, tuple[int, ...]]:
        """``(safetensors dtype, shape)`` of ``key``, from its file's header."""
        return self._info[key]


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


class _StreamedFile:
    """One safetensors file written tensor by tensor. Its header (every name, dtype,
    shape and offset) is known before any tensor is, so it is written first and each
    tensor's bytes are appended as it comes: only the tensor being written is in memory
    (``safetensors.save_file`` needs them all at once). The metadata can be rewritten at
    :meth:`close` (a mask file's sparsity, known only at the end): ``spare`` bytes of
    padding are left in the header for it."""

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None, spare: int = 0):
        if sys.byteorder != "little":  # safetensors stores little-endian bytes; these are the host's
            raise ModelTypeError("transfer_folder writes safetensors bytes as they are in memory, which needs a "
                                 "little-endian machine")
        self.path, self.entries, self._next = path, entries, 0
        self._table: dict[str, Any] = {}
        offset = 0
        for name, dtype, shape in entries:
            size = math.prod(shape) * _ITEMSIZE[dtype]
            self._table[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        self.size = offset
        head = self._header(metadata)
        self._room = (len(head) + spare + 7) // 8 * 8  # safetensors pads its header to 8 bytes
        self._f = open(path, "wb")
        self._f.write(self._room.to_bytes(8, "little") + head.ljust(self._room, b" "))

    def _header(self, metadata: Mapping[str, str] | None) -> bytes:
        table = dict(self._table)
        if metadata:
            table = {"__metadata__": dict(metadata), **table}
        return json.dumps(table, separators=(",", ":")).encode()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want, dtype, shape = self.entries[self._next]
        if name != want or _DTYPES.get(tensor.dtype) != dtype or tuple(tensor.shape) != tuple(shape):
            raise MaskError(f"{self.path.name}: expected {want!r} {dtype} {tuple(shape)} next, got {name!r} "
                            f"{tensor.dtype} {tuple(tensor.shape)}")
        self._next += 1
        if tensor.numel():
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            self._f.write(memoryview(flat.view(torch.uint8).numpy()))  # the tensor's own bytes, no copy

    def close(self, metadata: Mapping[str, str] | None = None) -> None:
        if self._next != len(self.entries):
            raise MaskError(f"{self.path.name}: {len(self.entries) - self._next} tensor(s) never written")
        if metadata is not None:
            head = self._header(metadata)
            if len(head) > self._room:
                raise MaskError(f"{self.path.name}: the final header ({len(head)} bytes) outgrew its room ({self._room})")
            self._f.seek(8)
            self._f.write(head.ljust(self._room, b" "))
        self._f.close()

    def abort(self) -> None:
        self._f.close()


class _SourceMask:
    """The source's mask, one tensor at a time: ``keep(name, weight)`` is the bool mask
    of source tensor ``name`` (``weight``: its values, already read), a fresh tensor the
    caller may change, made when the target tensor it feeds is written; no mask of the
    whole model is ever held.
    ``names``: the masked source tensors; ``sparsity``: of the whole source mask."""

    names: list[str]
    sparsity: float

    def keep(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _DenseMask(_SourceMask):
    def __init__(self, names: list[str]):
        self.names, self.sparsity = names, 0.0

    def keep(self, name, weight):
        return torch.ones(weight.shape, dtype=torch.bool)


class _GivenMask(_SourceMask):
    """A mask dict, or a mask file read one tensor at a time (safetensors; a torch.save
    file is read whole), checked against the source model (keys, shapes, 0/1 values)."""

    def __init__(self, mask: Any, model: torch.nn.Module, label: str):
        self._file = None
        if isinstance(mask, (str, os.PathLike)) and _masks._sniff(Path(mask)) == "safetensors":
            path = Path(mask)
            _masks._bound_file(path, model, label)
            try:
                self._file = _SafetensorsFile(path)
            except ModelTypeError as e:
                raise MaskError(str(e)) from None
            declared = {k: _masks._Declared(v[1]) for k, v in self._file.tensors.items()}
            _masks._fits(model, declared, f"mask file {path}", label)
            self.names = list(declared)
            kept = total = 0
            for n in self.names:  # read once to count (and to check every entry is 0/1)
                m = self._read(n)
                kept, total = kept + int(torch.count_nonzero(m)), total + m.numel()
            self.sparsity = 1.0 - kept / total if total else 0.0
        else:
            given = _masks.read_mask(mask, model=model, model_name=label) if isinstance(mask, (str, os.PathLike)) \
                else _masks.check_mask(model, mask, model_name=label)
            self._dict, self.names, self.sparsity = given, list(given), _masks.sparsity(given)

    def _read(self, name: str) -> torch.Tensor:
        t = self._file.read(name)
        if t.dtype != torch.bool:
            return _masks._to_bool(name, t, f"in mask file {self._file.path}")
        if bool((t.view(torch.uint8) > 1).any()):  # bytes other than 0/1 are no valid bools
            raise MaskError(f"mask entry {name!r} in mask file {self._file.path} holds bytes other than 0 and 1")
        return t

    def keep(self, name, weight):
        return self._read(name) if self._file is not None else self._dict[name].clone()


class _MagnitudeMask(_SourceMask):
    """Global magnitude at ``sparsity``: the threshold found in bounded memory over the
    lazily read weights (:func:`elastigraph.prune._core.select_rule`), each tensor's
    mask made from its own values; the same masks as ``prune.magnitude``."""

    def __init__(self, weights: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], sparsity: float):
        self.names = list(weights)
        one = torch.ones((), dtype=torch.bool)
        current = {n: one.expand(shapes[n]) for n in self.names}  # all alive, no memory
        self.rule = _core.select_rule(weights, current, density=1.0 - sparsity, method="transfer_folder",
                                      transform=torch.abs, nonnegative=True)
        total = sum(math.prod(shapes[n]) for n in self.names)
        self.sparsity = 1.0 - self.rule.kept / total if total else 0.0

    def keep(self, name, weight):
        return self.rule.keep(name, weight)


class _NMMask(_SourceMask):
    """N:M magnitude: each run of M inputs keeps its N largest |w| (ties: lower index)."""

    def __init__(self, model: torch.nn.Module, names: list[str], shapes: Mapping[str, tuple[int, ...]],
                 n_m: tuple[int, int]):
        self.model, self.names, (self.n, self.m) = model, names, n_m
        kept = total = 0
        for name in names:  # whole groups in every tensor, checked before anything is written
            il = _core.input_last(model, name)
            shape = shapes[name]
            cols = math.prod(shape[1:]) if il else shape[0]
            if cols % self.m:
                raise ConfigError(f"transfer_folder: {name} has {cols} inputs per output, not a multiple of "
                                  f"M={self.m}; N:M pruning needs whole groups (give a mask= made with names=[...])")
            kept, total = kept + math.prod(shape) // self.m * self.n, total + math.prod(shape)
        self.sparsity = 1.0 - kept / total if total else 0.0

    def keep(self, name, weight):
        il = _core.input_last(self.model, name)
        rows = _core.as_rows(weight, il)
        keep = _core.n_m_keep(rows, None, self.n, self.m, name=name, method="transfer_folder", transform=torch.abs)
        return _core.from_rows(keep, weight, il)


_Item = tuple[str, str, str, tuple[int, ...]]  # (target key, source key, safetensors dtype, shape)


def _layout(dst_model: torch.nn.Module, sources: Mapping[str, str], shards: _Shards, key_of: Mapping[str, str],
            shard_bytes: int, src: Path) -> tuple[list[_Item], list[list[_Item]]]:
    """What the target's files hold, from the meta model's shapes and the source headers'
    dtypes: every tensor to write (tied aliases once), checked, and their split into
    output shards of at most ``shard_bytes`` (a larger tensor alone)."""
    aliases = set(_masks.canonical_names(dst_model))  # tied tensors are written once
    plan: list[_Item] = []
    for key, t in dst_model.state_dict().items():
        if key in aliases:
            continue
        skey = sources.get(key)
        if skey is None:
            raise MaskError(f"transfer_folder: target tensor {key!r} has no source tensor in the plan")
        dtype, shape = shards.info(key_of[skey])
        if shape != tuple(t.shape):
            raise MaskError(f"transfer_folder: {key!r} has shape {tuple(t.shape)} but its source {skey!r} has "
                            f"{shape}")
        if dtype not in _ITEMSIZE:
            raise ModelTypeError(f"transfer_folder: {skey!r} in {src} is stored as {dtype}, which this writer "
                                 f"does not handle ({sorted(_ITEMSIZE)})")
        plan.append((key, skey, dtype, shape))
    groups: list[list[_Item]] = []
    size = 0
    for item in plan:
        nbytes = math.prod(item[3]) * _ITEMSIZE[item[2]]
        if not groups or (groups[-1] and size + nbytes > shard_bytes):
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += nbytes
    return plan, groups


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
    (a mask file or dict for ``src``'s model: any method's, e.g. ``prune.wanda``), else a
    magnitude mask of ``src``'s weights (``sparsity``: global, or ``n_m="2:4"``: N:M),
    else dense. Output shards hold at most ``shard_bytes`` each (a tensor larger than
    that alone); memory does not grow with them. Returns ``dst``."""
    transformers = hf_folder._transformers()

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
    label = f"{type(src_model).__name__} of {src}"

    names = _masks.prunable_parameters(src_model)
    shapes = {n: shards.shape(key_of[n]) for n in names}
    source: _SourceMask
    if mask is not None:
        source = _GivenMask(mask, src_model, label)
    elif sparsity is not None:
        sparsity = _core.check_unit(sparsity, "sparsity", "transfer_folder")
        source = _MagnitudeMask(_Lazy(shards, names, key_of), shapes, sparsity)
    elif n_m is not None:
        source = _NMMask(src_model, names, shapes, _core.parse_n_m(n_m, "transfer_folder"))
    else:
        source = _DenseMask(names)
    if not source.names:
        raise MaskError(f"transfer_folder: the mask for {label} is empty")

    # the plan (which source tensor feeds each target one) does not depend on the mask's
    # values: planned with the smallest masked tensor alone, all ones
    shape_of = dict(src_model.named_parameters())
    probe = min(source.names, key=lambda k: shape_of[k].numel())
    ticket = transfer(src_model, {probe: torch.ones(shape_of[probe].shape, dtype=torch.bool)}, dst_model,
                      strategy=strategy)
    masked_src = set(source.names)
    dst_masked = {n: ticket.sources[n] for n in _masks.prunable_parameters(dst_model)
                  if ticket.sources.get(n) in masked_src}

    plan, groups = _layout(dst_model, ticket.sources, shards, key_of, shard_bytes, src)
    tmp = dest.with_name(f".{dest.name}.streaming.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    mask_meta = {"plan_dst": ticket.plan.dst, "architecture": type(dst_model).__name__, **meta_info}
    mask_keys = [k for k, _s, _d, _sh in plan if k in dst_masked]
    mask_file = _StreamedFile(tmp / hf_folder.MASK_FILE,
                              [(k, "BOOL", sh) for k, _s, _d, sh in plan if k in dst_masked],
                              _masks.mask_file_header(mask_keys, 0.0, mask_meta), spare=64)
    weight_map: dict[str, str] = {}
    total = zeros = kept = masked = 0
    try:
        for i, group in enumerate(groups):
            name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"  # the names transformers gives shards
            out = _StreamedFile(tmp / name, [(k, d, sh) for k, _s, d, sh in group], {"format": "pt"})
            try:
                for key, skey, _dtype, _shape in group:
                    value = shards[key_of[skey]]  # a fresh copy read from disk: masked in place
                    if key in dst_masked:
                        keep = source.keep(skey, value)
                        kept += int(torch.count_nonzero(keep))
                        masked += keep.numel()
                        mask_file.write(key, keep)
                        value.masked_fill_(keep.logical_not_(), 0)  # the mask inverted in place: no copy
                        zeros += keep.numel() - int(torch.count_nonzero(value))
                        del keep
                    out.write(key, value)
                    weight_map[key] = name
                    del value
            finally:
                out.close() if out._next == len(out.entries) else out.abort()
            total += out.size
        target_sparsity = 1.0 - kept / masked if masked else 0.0
        mask_file.close(_masks.mask_file_header(mask_keys, target_sparsity, mask_meta))
    except BaseException:
        mask_file.abort()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    dst_config.save_pretrained(str(tmp))
    info = {
        "format": "elastigraph.hf_folder",
        "format_version": hf_folder.FOLDER_FORMAT_VERSION,
        "architecture": type(dst_model).__name__,
        "model_type": getattr(dst_config, "model_type", None),
        "num_hidden_layers": num_hidden_layers,
        "plan": ticket.plan.to_dict(),
        "mapping": ticket.plan.mapping_string(),
        "sparsity": {"source": source.sparsity, "target": target_sparsity,
                     "weights": zeros / masked if masked else 0.0},
        "mask_file": hf_folder.MASK_FILE,
        "masked_tensors": len(mask_keys),
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


def prune_folder(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sparsity: float | None = None,
    n_m: str | tuple[int, int] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> float:
    """A magnitude mask of the checkpoint folder ``src`` written to the mask file ``out``
    (:func:`elastigraph.masks.save_mask`'s format), streamed: global at ``sparsity``, or
    N:M with ``n_m="2:4"``, the masks ``prune.magnitude`` gives on the loaded model, in
    the memory of a few copies of the largest tensor. Returns the mask's sparsity."""
    transformers = hf_folder._transformers()
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ModelTypeError(f"{src} is not a Hugging Face model folder (no config.json)")
    if (sparsity is None) == (n_m is None):
        raise ConfigError("prune_folder: give sparsity (global magnitude) or n_m (N:M), exactly one")
    path = _masks._as_path(out, "prune_folder out")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write mask file {path}: folder {path.parent} does not exist")
    meta = dict(metadata or {})
    model = _meta_model(transformers.AutoConfig.from_pretrained(str(src)))
    shards = _Shards(src)
    key_of = _source_keys(model, shards)
    names = _masks.prunable_parameters(model)
    shapes = {n: shards.shape(key_of[n]) for n in names}
    if sparsity is not None:
        source: _SourceMask = _MagnitudeMask(_Lazy(shards, names, key_of),
                                             shapes, _core.check_unit(sparsity, "sparsity", "prune_folder"))
    else:
        source = _NMMask(model, names, shapes, _core.parse_n_m(n_m, "prune_folder"))
    tmp = path.with_name(f".{path.name}.streaming.tmp")
    f = _StreamedFile(tmp, [(n, "BOOL", shapes[n]) for n in names], _masks.mask_file_header(names, 0.0, meta),
                      spare=64)
    try:
        for n in names:
            f.write(n, source.keep(n, shards[key_of[n]]))
        f.close(_masks.mask_file_header(names, source.sparsity, meta))
        os.replace(tmp, path)
    except BaseException:
        f.abort()
        tmp.unlink(missing_ok=True)
        raise
    return source.sparsity
