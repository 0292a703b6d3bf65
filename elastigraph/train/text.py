"""Byte-level text corpora for causal language modelling, built offline from local files.

A corpus is a set of text files read as raw bytes (vocabulary 256, no tokenizer, nothing
downloaded) and split into train / validation / test **by file**, deterministically:
a file's split is ``sha256(relative path) % 10`` (0: validation, 1: test, else train), so
adding a file never moves another one. A corpus of one file is split by byte range
(90 / 5 / 5). Files of a split are joined with a NUL byte between them. The corpus is
identified by the sha256 of its split contents, which enters every step key of a recipe
(a different corpus can never reuse a cached step).

Built-in corpora (``load_dataset`` names):

- ``pystdlib``: the ``*.py`` files at the top of the running interpreter's standard
  library (CPython 3.11: 168 files, 4.7 MB), present on every machine that runs Python.
- ``text:<path>``: a user's own text file, or every ``*.txt``/``*.md``/``*.py``/``*.rst``
  file under a folder.

Options after ``?``: ``seq_len=<n>`` (default 128): the length of the windows the corpus
is cut into (non-overlapping; each window holds ``seq_len + 1`` bytes: the input and its
next-byte targets).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DatasetError

VOCAB_SIZE = 256
DEFAULT_SEQ_LEN = 128
MAX_CORPUS_BYTES = int(os.environ.get("ELASTIGRAPH_MAX_CORPUS_BYTES", 1 << 30))
"""Refuse to read more than this many bytes of text (1 GiB; the corpus is held in memory)."""
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TextSpec:
    """What a language model needs to know about its data: the byte vocabulary, the
    window length and the corpus identity (``sha256``)."""

    name: str
    seq_len: int
    sha256: str
    vocab_size: int = VOCAB_SIZE
    task: str = "causal_lm"

    # what model builders read from a data spec: a text model takes no channels or images;
    # its output size is the vocabulary
    @property
    def in_chans(self) -> int:
        return 1

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    @property
    def image_size(self) -> int:
        return self.seq_len


@dataclass
class ByteCorpus:
    """A corpus split by file: ``splits[s]`` are the bytes of split ``s``,
    ``files[s]`` the relative paths it holds; ``sha256`` identifies the whole corpus."""

    name: str
    splits: dict[str, bytes]
    files: dict[str, list[str]]
    sha256: str

    def summary(self) -> dict[str, dict[str, int]]:
        return {s: {"bytes": len(self.splits[s]), "files": len(self.files[s])} for s in SPLITS}


@dataclass
class TokenDataset:
    """Windows of a byte corpus: ``x`` uint8 ``(N, seq_len)`` inputs, ``y`` uint8
    ``(N, seq_len)`` next-byte targets (``y[i, t] = x[i, t + 1]`` within the text)."""

    x: torch.Tensor
    y: torch.Tensor
    spec: TextSpec

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 2 or self.y.shape != self.x.shape:
            raise DatasetError(f"{self.spec.name}: x and y must be uint8 tensors of one shape (N, seq_len), got "
                               f"{self.x.dtype} {tuple(self.x.shape)} and {self.y.dtype} {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.x.numel())

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "TokenDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TokenDataset(self.x[idx].clone(), self.y[idx].clone(), self.spec)


def _model_config(model: torch.nn.Module):
    return getattr(model, "config", None)


def lm_model_problem(model: torch.nn.Module, spec: TextSpec, label: str | None = None) -> str | None:
    """Why ``model`` cannot be trained on ``spec``'s byte windows (None when it can): it
    must take token ids (an embedding of at least 256 rows; a Hugging Face config's
    ``vocab_size`` >= 256) and accept ``seq_len`` positions."""
    label = label or type(model).__name__
    cfg = _model_config(model)
    emb = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    vocab = getattr(cfg, "vocab_size", None) if cfg is not None else None
    if vocab is None and emb:
        vocab = emb[0].num_embeddings
    if vocab is None:
        return (f"{label} takes no token ids (no embedding layer), but {spec.name!r} is a byte-level text corpus; "
                "use a language model such as 'hf:llama' or 'hf:gpt2' with vocab_size=256")
    if vocab < spec.vocab_size:
        return (f"{label} has a vocabulary of {vocab} tokens, smaller than the {spec.vocab_size} byte values of "
                f"{spec.name!r}; build it with vocab_size={spec.vocab_size}")
    if cfg is not None:
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            limit = getattr(cfg, key, None)
            if isinstance(limit, int) and not isinstance(limit, bool) and limit < spec.seq_len:
                return (f"{label} takes at most {limit} positions ({key}) but {spec.name!r} feeds windows of "
                        f"seq_len={spec.seq_len}; lower seq_len or build the model with {key}>={spec.seq_len}")
    return None


def _split_of(rel: str) -> str:
    h = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 10
    return "val" if h == 0 else "test" if h == 1 else "train"


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise DatasetError(f"corpus 'pystdlib': no *.py files in the interpreter's standard library at {root}; "
                           "this Python ships without its sources -- use 'text:<path>' with your own text files")
    return root, files


def _user_files(path: str) -> tuple[Path, list[Path]]:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"corpus 'text:{path}': {str(p)!r} does not exist; give a text file or a folder of "
                           f"{'/'.join(TEXT_SUFFIXES)} files")
    if p.is_file():
        return p.parent, [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise DatasetError(f"corpus 'text:{path}': the folder holds no {'/'.join(TEXT_SUFFIXES)} files")
    return p, files


def build_corpus(source: str) -> ByteCorpus:
    """The corpus ``source`` (``'pystdlib'`` or ``'text:<path>'``), split by file."""
    if source == "pystdlib":
        root, files = _stdlib_files()
    elif source.startswith("text:"):
        if not source[5:]:
            raise DatasetError("corpus 'text:' needs a path: 'text:/data/books' or 'text:notes.txt'")
        root, files = _user_files(source[5:])
    else:
        raise DatasetError(f"unknown corpus {source!r}; known: 'pystdlib', 'text:<file or folder>'")
    total = sum(f.stat().st_size for f in files)
    if total > MAX_CORPUS_BYTES:
        raise DatasetError(f"corpus {source!r} holds {total / 2**20:.0f} MiB of text, more than the "
                           f"{MAX_CORPUS_BYTES / 2**20:.0f} MiB limit (ELASTIGRAPH_MAX_CORPUS_BYTES)")
    parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    names: dict[str, list[str]] = {s: [] for s in SPLITS}
    if len(files) == 1:
        data = files[0].read_bytes()
        n = len(data)
        a, b = round(0.9 * n), round(0.95 * n)
        for s, chunk in zip(SPLITS, (data[:a], data[a:b], data[b:])):
            parts[s].append(chunk)
            names[s].append(files[0].name)
    else:
        for f in files:
            rel = f.relative_to(root).as_posix()
            s = _split_of(rel)
            parts[s].append(f.read_bytes())
            names[s].append(rel)
    splits = {s: b"\0".join(parts[s]) for s in SPLITS}
    digest = hashlib.sha256()
    for s in SPLITS:
        digest.update(s.encode() + b":" + hashlib.sha256(splits[s]).digest())
    corpus = ByteCorpus(source, splits, names, digest.hexdigest())
    for s in SPLITS:
        if len(splits[s]) < 2:
            raise DatasetError(f"corpus {source!r}: its {s} split is empty ({len(names[s])} file(s), "
                               f"{len(splits[s])} bytes); a corpus needs text in train, val and test -- add files "
                               "(a folder is split by file, about 80/10/10) or give one larger file")
    return corpus


def parse_text_name(name: str) -> tuple[str, int]:
    """``'pystdlib?seq_len=64'`` -> ``('pystdlib', 64)``."""
    base, _, query = name.partition("?")
    seq_len = DEFAULT_SEQ_LEN
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or key.strip() != "seq_len":
            raise DatasetError(f"dataset {name!r}: unknown option {part!r}; a text corpus takes seq_len=<n>, "
                               "e.g. 'pystdlib?seq_len=128'")
        try:
            seq_len = int(value)
        except ValueError:
            raise DatasetError(f"dataset {name!r}: seq_len={value!r} is not an integer") from None
        if not 1 <= seq_len <= 1 << 20:
            raise DatasetError(f"dataset {name!r}: seq_len={seq_len} must be in [1, 1048576]")
    return base, seq_len


def is_text_dataset(name: object) -> bool:
    """Whether ``name`` names a text corpus (``pystdlib``, ``text:<path>``)."""
    return isinstance(name, str) and (name.partition("?")[0] == "pystdlib" or name.startswith("text:"))


_CACHE: dict[str, ByteCorpus] = {}


def corpus(source: str) -> ByteCorpus:
    """:func:`build_corpus`, memoised per process (files are read once)."""
    if source not in _CACHE:
        _CACHE[source] = build_corpus(source)
    return _CACHE[source]


def load_text(name: str, split: str = "train", *, limit: int | None = None, seed: int = 0) -> TokenDataset:
    """Split ``split`` (train / val / test) of the corpus ``name`` as non-overlapping
    windows of ``seq_len`` next-byte examples; ``limit`` keeps a seeded subset of that
    many windows (smoke runs)."""
    if split not in SPLITS:
        raise DatasetError(f"dataset {name!r}: split must be one of {SPLITS}, got {split!r}")
    source, seq_len = parse_text_name(name)
    c = corpus(source)
    data = torch.frombuffer(bytearray(c.splits[split]), dtype=torch.uint8)
    n = (len(data) - 1) // seq_len
    if n < 1:
        raise DatasetError(f"dataset {name!r}: the {split} split has {len(data)} bytes, fewer than one window of "
                           f"seq_len + 1 = {seq_len + 1}; use a smaller seq_len or more text")
    x = data[: n * seq_len].view(n, seq_len)
    y = data[1 : n * seq_len + 1].view(n, seq_len)
    spec = TextSpec(name, seq_len, c.sha256)
    ds = TokenDataset(x.clone(), y.clone(), spec)
    if limit is not None and limit < n:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + SPLITS.index(split))
        ds = ds.subset(torch.randperm(n, generator=g)[:limit].sort().values)
    return ds


__all__ = ["lm_model_problem", "TextSpec", "ByteCorpus", "TokenDataset", "build_corpus", "corpus", "load_text", "is_text_dataset",
           "parse_text_name", "VOCAB_SIZE"]
