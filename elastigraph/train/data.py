"""Datasets from local files only: Fashion-MNIST (idx files), CIFAR-10/100 (the
python batches of the official tarballs, read with a restricted unpickler), ImageFolder
(ImageNet layout) and a learnable synthetic set for tests. Nothing is ever downloaded.

Small datasets load into an :class:`ArrayDataset` (uint8 ``N,C,H,W`` + int64 labels) so
the training loop can hold them on the GPU and normalise/augment there; ImageFolder
data stays on disk as a :class:`FolderDataset` read by DataLoader workers.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DatasetError
from ..seeds import check_seed

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_FASHION_MEAN, _FASHION_STD = (0.2860,), (0.3530,)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data: channels, classes, image size, and the
    per-channel mean/std (fractions of 255) the loop normalises with."""

    name: str
    in_chans: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ArrayDataset:
    """A dataset held in memory: ``x`` uint8 ``(N, C, H, W)``, ``y`` int64 ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor
    spec: DataSpec

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise DatasetError(
                f"{self.spec.name}: x must be a uint8 tensor of shape (N, C, H, W), "
                f"got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise DatasetError(
                f"{self.spec.name}: y must be int64 of shape ({self.x.shape[0]},), got {self.y.dtype} {tuple(self.y.shape)}"
            )
        if tuple(self.x.shape[1:2]) != (self.spec.in_chans,):
            raise DatasetError(f"{self.spec.name}: images have {self.x.shape[1]} channel(s) but the spec says "
                               f"{self.spec.in_chans}")
        _check_labels(self.y, self.spec)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ArrayDataset":
        """The rows ``indices`` as a new dataset (copies)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.x[idx].clone(), self.y[idx].clone(), self.spec)


class FolderDataset(torch.utils.data.Dataset):
    """ImageFolder data (``root/<class>/<image>``) decoded on the fly by DataLoader workers.

    ``train=True`` gives RandomResizedCrop + flip (when ``augment``), otherwise
    resize + center crop; items are ``(uint8 C,H,W tensor, label)``. Too big to hold on a
    GPU, so the loop reads it through a DataLoader with workers."""

    def __init__(self, root: str | Path, spec: DataSpec, samples: list[tuple[str, int]]):
        self.root = Path(root)
        self.spec = spec
        self.samples = samples
        self.y = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        self.train = False
        self.augment = False

    def __len__(self) -> int:
        return len(self.samples)

    def with_mode(self, *, train: bool, augment: bool) -> "FolderDataset":
        """A view of the same files with training (random crop) or eval transforms."""
        ds = FolderDataset(self.root, self.spec, self.samples)
        ds.train, ds.augment = train, augment
        return ds

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "FolderDataset":
        return FolderDataset(self.root, self.spec, [self.samples[int(i)] for i in indices])

    def _transform(self):
        from torchvision.transforms import v2 as T

        s = self.spec.image_size
        if self.train and self.augment:
            geo = [T.RandomResizedCrop(s, antialias=True), T.RandomHorizontalFlip()]
        else:
            geo = [T.Resize(round(s * 8 / 7), antialias=True), T.CenterCrop(s)]
        return T.Compose([*geo, T.PILToTensor()])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("L" if self.spec.in_chans == 1 else "RGB")
        if not hasattr(self, "_tf"):
            self._tf = self._transform()
        return self._tf(img), label


# --------------------------------------------------------------------------- helpers


def _check_labels(y: torch.Tensor, spec: DataSpec) -> None:
    """Labels must index the ``spec.num_classes`` outputs: checked at load, not mid-training."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        bad = y[(y < 0) | (y >= spec.num_classes)]
        raise DatasetError(
            f"{spec.name}: {len(bad)} label(s) outside 0..{spec.num_classes - 1} (e.g. {bad[:3].tolist()}); "
            f"the dataset has {spec.num_classes} classes -- are the label files from the same dataset?"
        )


def balanced_subset(y: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``limit`` rows chosen round-robin over classes in a seeded random
    order (as balanced as the class counts allow), sorted ascending."""
    n = int(y.shape[0])
    if limit >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(check_seed(seed, "balanced_subset: seed"))
    perm = torch.randperm(n, generator=g)
    yp = y[perm]
    # rank of each element within its class, in permutation order
    order = torch.argsort(yp, stable=True)
    ys = yp[order]
    starts = torch.searchsorted(ys, ys, right=False)
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - starts
    key = rank * n + torch.arange(n)  # round-robin: all rank-0 first, then rank-1 ...
    chosen = perm[torch.argsort(key)[:limit]]
    return torch.sort(chosen).values


MAX_IDX_BYTES = 1 << 30
"""Largest idx file read (Fashion-MNIST's largest is 47 MB unpacked); a gzip bomb stops here."""


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): big-endian magic, dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:  # truncated/corrupt gzip, unreadable file
        raise DatasetError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is damaged or "
                           "truncated: download/copy it again") from None
    if len(data) > MAX_IDX_BYTES:
        raise DatasetError(f"{path} holds more than {MAX_IDX_BYTES:,} bytes: not an idx file of this dataset")
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path} is not an idx file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DatasetError(f"{path}: idx element type {dtype_code:#x} is not unsigned byte")
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: idx header is truncated")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {tuple(dims)} but holds {arr.size} bytes (truncated file?)")
    return arr.reshape(tuple(dims))


def _find_first(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _fashion_mnist(root: str | None, split: str) -> ArrayDataset:
    prefix = {"train": "train", "test": "t10k"}[split]
    bases = [Path(root)] if root else []
    if not root and os.environ.get("FASHION_MNIST_ROOT"):
        bases.append(Path(os.environ["FASHION_MNIST_ROOT"]))
    if not bases:
        bases.append(DEFAULT_FASHION_MNIST_DIR)
    dirs = [d for b in bases for d in (b, b / "FashionMNIST" / "raw", b / "raw")]
    found = {}
    for kind, tag in (("images", "idx3"), ("labels", "idx1")):
        stem = f"{prefix}-{kind}-{tag}-ubyte"
        p = _find_first(dirs, [stem + ".gz", stem])
        if p is None:
            raise DatasetError(
                f"Fashion-MNIST {split} {kind} not found: looked for {stem}[.gz] in "
                f"{[str(d) for d in dirs]}. Install it with `sudo apt-get install dataset-fashion-mnist` "
                f"(files land in {DEFAULT_FASHION_MNIST_DIR}), or pass root= / set FASHION_MNIST_ROOT to a folder "
                "holding the four idx files (or a torchvision-style FashionMNIST/raw/ folder)."
            )
        found[kind] = p
    x = _read_idx(found["images"])
    y = _read_idx(found["labels"])
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or 0 in x.shape:
        raise DatasetError(f"Fashion-MNIST files disagree: images {x.shape} in {found['images']}, labels {y.shape}")
    spec = DataSpec("fashion_mnist", 1, 10, int(x.shape[1]), _FASHION_MEAN, _FASHION_STD)
    return ArrayDataset(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)), spec)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches: only numpy arrays/dtypes and builtin
    containers may be built; any other global (os.system, ...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles from Python 3 store bytes
            import _codecs

            return _codecs.encode
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            mod = getattr(np, "_core", None) or np.core
            return getattr(mod.multiarray, name)
        raise DatasetError(
            f"refusing to unpickle {module}.{name}: CIFAR batch files may only hold numpy arrays, "
            "lists, dicts, strings and bytes (is the file really from the official CIFAR tarball?)"
        )


def _load_cifar_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            d = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        except DatasetError:
            raise
        except Exception as e:  # truncated/corrupt pickle
            raise DatasetError(f"cannot read CIFAR batch {path}: {e}") from e
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


_CIFAR_ROW = 3 * 32 * 32
_CIFAR_MAX_ROWS = 60_000


def _cifar_labels(raw: Any, path: Path) -> np.ndarray:
    """A batch's labels as int64, checked to be a flat list/array of at most 60 000 ints
    before numpy sees it (a few hundred bytes of pickle can hold a list nested 1e9 deep)."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or raw.dtype.kind not in "iu" or len(raw) > _CIFAR_MAX_ROWS:
            raise DatasetError(f"{path}: labels must be a flat integer array of <= {_CIFAR_MAX_ROWS} entries, "
                               f"got {raw.dtype} {raw.shape}")
        return raw.astype(np.int64)
    if not isinstance(raw, list) or len(raw) > _CIFAR_MAX_ROWS or not all(
            type(v) is int for v in raw):
        raise DatasetError(f"{path}: labels must be a list of at most {_CIFAR_MAX_ROWS} integers")
    return np.asarray(raw, dtype=np.int64)


def _cifar_images(raw: Any, n: int, path: Path) -> np.ndarray:
    """A batch's images as uint8 ``(n, 3, 32, 32)``; the declared shape is checked against
    the label count before anything is converted or allocated."""
    want = (n, _CIFAR_ROW)
    if isinstance(raw, np.ndarray):
        if raw.dtype != np.uint8 or raw.shape != want:
            raise DatasetError(f"{path}: 'data' must be uint8 of shape {want}, got {raw.dtype} {raw.shape}")
        return raw.reshape(-1, 3, 32, 32)
    if not isinstance(raw, list) or len(raw) != n:
        raise DatasetError(f"{path}: 'data' must be a uint8 array of shape {want}, got a {type(raw).__name__}"
                           + (f" of length {len(raw)}" if isinstance(raw, list) else ""))
    out = np.empty(want, dtype=np.uint8)
    for i, row in enumerate(raw):
        try:
            if isinstance(row, (bytes, bytearray)) and len(row) == _CIFAR_ROW:
                out[i] = np.frombuffer(row, dtype=np.uint8)
            elif isinstance(row, list) and len(row) == _CIFAR_ROW:
                out[i] = np.fromiter(row, dtype=np.uint8, count=_CIFAR_ROW)
            else:
                raise TypeError(f"row {i} is a {type(row).__name__} of the wrong length")
        except (TypeError, ValueError, OverflowError) as e:
            raise DatasetError(f"{path}: 'data' row {i} is not {_CIFAR_ROW} byte values ({e})") from None
    return out.reshape(-1, 3, 32, 32)


def _cifar(name: str, root: str | None, split: str) -> ArrayDataset:
    ten = name == "cifar10"
    folder = "cifar-10-batches-py" if ten else "cifar-100-python"
    env = "CIFAR10_ROOT" if ten else "CIFAR100_ROOT"
    bases = [Path(root)] if root else []
    if not root and os.environ.get(env):
        bases.append(Path(os.environ[env]))
    if not bases:
        bases.append(Path("data"))
    files = (
        ([f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"])
        if ten
        else (["train"] if split == "train" else ["test"])
    )
    dirs = [d for b in bases for d in (b / folder, b)]
    for d in dirs:
        if all((d / f).is_file() for f in files):
            break
    else:
        tar = "cifar-10-python.tar.gz" if ten else "cifar-100-python.tar.gz"
        raise DatasetError(
            f"{name} {split} files {files} not found in {[str(d) for d in dirs]}. Get {tar} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it so that <root>/{folder}/ exists, "
            f"and pass root=<root> or set {env}."
        )
    xs, ys = [], []
    label_key = "labels" if ten else "fine_labels"
    for f in files:
        b = _load_cifar_batch(d / f)
        if "data" not in b or label_key not in b:
            raise DatasetError(f"{d / f}: missing 'data' or '{label_key}' (keys: {sorted(b)[:6]})")
        y = _cifar_labels(b[label_key], d / f)
        xs.append(_cifar_images(b["data"], len(y), d / f))
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    spec = (
        DataSpec("cifar10", 3, 10, 32, _CIFAR10_MEAN, _CIFAR10_STD)
        if ten
        else DataSpec("cifar100", 3, 100, 32, _CIFAR100_MEAN, _CIFAR100_STD)
    )
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), spec)


_IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _imagefolder(path: str, split: str, image_size: int | None) -> FolderDataset:
    base = Path(path)
    sub = {"train": ["train"], "test": ["val", "test"]}[split]
    cands = [base / s for s in sub]
    d = next((c for c in cands if c.is_dir()), None)
    if d is None:
        raise DatasetError(
            f"imagefolder {split} split not found: looked for {[str(c) for c in cands]}. Expected the ImageNet "
            "layout <root>/train/<class>/<image> and <root>/val/<class>/<image> (the same class folder names)."
        )
    classes = sorted(e.name for e in d.iterdir() if e.is_dir())
    if not classes:
        raise DatasetError(f"{d} has no class sub-folders (expected {d}/<class>/<image>)")
    samples = [
        (str(f), ci)
        for ci, c in enumerate(classes)
        for f in sorted((d / c).rglob("*"))
        if f.suffix.lower() in _IMG_EXT
    ]
    if not samples:
        raise DatasetError(f"{d} holds no images with extensions {_IMG_EXT}")
    spec = DataSpec(f"imagefolder:{base}", 3, len(classes), image_size or 224, _IMAGENET_MEAN, _IMAGENET_STD)
    return FolderDataset(base, spec, samples)


def synthetic(
    n: int = 512,
    shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
    *,
    split: str = "train",
    noise: float = 40.0,
) -> ArrayDataset:
    """A learnable synthetic image set: each class is a fixed smooth random pattern
    (seeded by ``seed``, shared by both splits) plus per-image noise (differs by split)."""
    if n < 1 or num_classes < 2 or len(shape) != 3:
        raise DatasetError(f"synthetic: need n >= 1, num_classes >= 2 and shape (C, H, W); got {n}, {num_classes}, {shape}")
    c, h, w = shape
    g = torch.Generator().manual_seed(check_seed(seed, "synthetic: seed"))
    coarse = torch.randn(num_classes, c, max(2, h // 4), max(2, w // 4), generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    patterns = patterns / patterns.flatten(1).std(1).view(-1, 1, 1, 1)
    gs = torch.Generator().manual_seed(seed * 1000 + {"train": 1, "test": 2}[split])
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=gs)]
    x = 128 + 50 * patterns[y] + noise * torch.randn(n, c, h, w, generator=gs)
    spec = DataSpec("synthetic", c, num_classes, h, (0.5,) * c, (0.25,) * c)
    return ArrayDataset(x.round().clamp(0, 255).to(torch.uint8), y.to(torch.int64), spec)


def parse_classes(text: str, where: str = "dataset") -> list[int]:
    """``'0-4'`` -> [0, 1, 2, 3, 4]; ``'0,2,7-9'`` -> [0, 2, 7, 8, 9] (order kept)."""
    out: list[int] = []
    for part in str(text).split(","):
        a, dash, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if dash else int(a)
        except ValueError:
            raise DatasetError(f"{where}: classes={text!r} is not a list of class ids or ranges such as '0-4' or "
                               "'0,2,7-9'") from None
        if lo > hi:
            raise DatasetError(f"{where}: class range {part.strip()!r} runs backwards; write it as {hi}-{lo}")
        out += range(lo, hi + 1)
    if len(set(out)) != len(out):
        raise DatasetError(f"{where}: classes={text!r} names a class twice")
    return out


def split_dataset_name(name: str) -> tuple[str, dict[str, str]]:
    """``'fashion_mnist?classes=0-4'`` -> ``('fashion_mnist', {'classes': '0-4'})``. Only
    ``classes`` is known; ``imagefolder:<path>`` names keep any ``?`` in the path."""
    if "?" not in name or name.startswith("imagefolder"):
        return name, {}
    base, _, query = name.partition("?")
    opts: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or key.strip() != "classes":
            raise DatasetError(f"dataset {name!r}: unknown option {part!r}; the only option is classes=<ids>, "
                               "e.g. 'fashion_mnist?classes=0-4'")
        opts["classes"] = value.strip()
    return base, opts


def select_classes(ds: ArrayDataset | FolderDataset, classes: Sequence[int], name: str) -> ArrayDataset | FolderDataset:
    """The rows of ``ds`` whose label is in ``classes``, relabelled ``classes[i] -> i`` so
    that a model of ``len(classes)`` outputs trains on them (a class-split task)."""
    k = ds.spec.num_classes
    bad = [c for c in classes if not 0 <= c < k]
    if bad:
        raise DatasetError(f"dataset {name!r}: classes {bad} do not exist ({ds.spec.name} has classes 0-{k - 1})")
    if len(classes) < 2:
        raise DatasetError(f"dataset {name!r}: a task needs at least 2 classes, got {list(classes)}")
    lut = torch.full((k,), -1, dtype=torch.int64)
    lut[torch.tensor(list(classes))] = torch.arange(len(classes))
    new_y = lut[ds.y]
    keep = torch.nonzero(new_y >= 0).flatten()
    spec = DataSpec(name, ds.spec.in_chans, len(classes), ds.spec.image_size, ds.spec.mean, ds.spec.std)
    if isinstance(ds, FolderDataset):
        return FolderDataset(ds.root, spec, [(ds.samples[int(i)][0], int(new_y[i])) for i in keep])
    return ArrayDataset(ds.x[keep].clone(), new_y[keep].clone(), spec)


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> ArrayDataset | FolderDataset:
    """Load ``name`` (``fashion_mnist``, ``cifar10``, ``cifar100``, ``synthetic``,
    ``imagefolder:<path>``, or a byte-level text corpus ``pystdlib`` / ``text:<path>``
    with its own train/val/test split, see :mod:`elastigraph.train.text`) from local files; ``limit`` keeps a seeded, class-balanced
    subset of that many images (smoke runs). ``image_size`` only applies to imagefolder.
    ``name?classes=0-4`` keeps those classes only, relabelled 0..k-1 (a class-split task;
    ``limit`` then counts images of the split)."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset name must be a string such as 'fashion_mnist' or 'cifar10', got {name!r}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise DatasetError(f"dataset {name!r}: root must be a folder path, got {type(root).__name__}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise DatasetError(f"dataset {name!r}: limit must be an integer number of images, got {limit!r}")
    seed = check_seed(seed, f"dataset {name!r}: seed")
    from .text import is_text_dataset, load_text

    if is_text_dataset(name):  # a byte-level text corpus: windows of next-byte examples
        return load_text(name, split, limit=limit, seed=seed)
    full_name = name
    name, opts = split_dataset_name(name)
    if split == "val":
        split = "test"
    if split not in ("train", "test"):
        raise DatasetError(f"dataset {name!r}: split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 1:
        raise DatasetError(f"dataset {name!r}: limit must be a positive number of images, got {limit}")
    if name == "fashion_mnist":
        ds: ArrayDataset | FolderDataset = _fashion_mnist(root, split)
    elif name in ("cifar10", "cifar100"):
        ds = _cifar(name, root, split)
    elif name == "synthetic":
        n = limit if "classes" not in opts else None  # a class split takes its limit from the split
        ds = synthetic(n or (2048 if split == "train" else 512), seed=seed, split=split)
    elif name.startswith("imagefolder:") or name == "imagefolder":
        path = name.partition(":")[2] or root
        if not path:
            raise DatasetError("imagefolder needs a path: 'imagefolder:/data/imagenet' or root='/data/imagenet'")
        ds = _imagefolder(path, split, image_size)
    else:
        raise DatasetError(
            f"unknown dataset {name!r}; known: fashion_mnist, cifar10, cifar100, synthetic, imagefolder:<path>, "
            "pystdlib, text:<path>"
        )
    if "classes" in opts:
        ds = select_classes(ds, parse_classes(opts["classes"], f"dataset {full_name!r}"), full_name)
    if limit is not None and limit < len(ds):
        ds = ds.subset(balanced_subset(ds.y, limit, seed))
    return ds


__all__ = ["DataSpec", "ArrayDataset", "FolderDataset", "load_dataset", "synthetic", "balanced_subset",
           "select_classes", "parse_classes", "split_dataset_name"]
