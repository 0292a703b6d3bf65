"""What every pruning method shares: which tensors it prunes, the mask it starts from,
and the exact, deterministic top-k selection that turns scores into a nested mask."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

import torch
from torch import nn

from .. import masks
from ..errors import ConfigError, MaskError, ModelTypeError
from ..masks import Mask

Scope = Literal["global", "layerwise"]
SCOPES = ("global", "layerwise")


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(x + 0.5))


def check_scope(scope: str, method: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"{method}: scope must be one of {SCOPES}, got {scope!r}")


def check_unit(value: Any, what: str, method: str) -> float:
    """A float in [0, 1] (sparsity, fraction), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{method}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def installed_mask_in_state(state: Mapping[str, torch.Tensor]) -> Mask:
    """The ``torch.nn.utils.prune`` masks stored in a state_dict, by public name."""
    return {
        k[: -len("_mask")]: state[k].detach().to("cpu") != 0
        for k in state
        if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in state
    }


def resolve(
    shapes: Mapping[str, torch.Size],
    *,
    model: nn.Module | None,
    names: Iterable[str] | None,
    mask: Mapping[str, torch.Tensor] | None,
    include_first: bool,
    include_last: bool,
    method: str,
    label: str,
) -> tuple[list[str], Mask, Mask]:
    """Which tensors to prune and the mask to start from.

    The pruned set is ``names`` if given, else the keys of ``mask``, else
    :func:`masks.prunable_parameters`. Returns ``(names, current, extra)``: ``current`` is
    the starting mask over ``names`` (dense where ``mask`` has no entry) and ``extra`` the
    entries of ``mask`` outside ``names``, carried through unchanged.
    """
    given: Mask = {}
    if mask is not None:
        given = masks._as_mask(mask, f"mask given to {method} for {label}")
        for k, t in given.items():
            if k not in shapes:
                raise MaskError(f"{method}: mask key {k!r} is not a parameter of {label}")
            if tuple(t.shape) != tuple(shapes[k]):
                raise MaskError(
                    f"{method}: mask entry {k!r} has shape {tuple(t.shape)} but {label}.{k} has "
                    f"shape {tuple(shapes[k])}"
                )
    if names is not None:
        if isinstance(names, str):
            raise ConfigError(f"{method}: names must be a list of parameter names, got the string {names!r}")
        chosen = list(dict.fromkeys(names))
        unknown = [n for n in chosen if n not in shapes]
        if unknown:
            raise MaskError(f"{method}: {unknown[:3]} are not parameters of {label}")
    elif mask is not None:
        chosen = list(given)
    elif model is not None:
        chosen = masks.prunable_parameters(model, include_first=include_first, include_last=include_last)
    else:
        raise ConfigError(
            f"{method}: a state_dict does not say which tensors are prunable; pass names=[...] or "
            "mask=elastigraph.masks.full_mask(model)"
        )
    if not chosen:
        raise ConfigError(f"{method}: {label} has no tensors to prune (names/mask empty or no conv/linear weights)")
    current = {n: given[n] if n in given else torch.ones(shapes[n], dtype=torch.bool) for n in chosen}
    extra = {k: v for k, v in given.items() if k not in current}
    return chosen, current, extra


def require_values(model: nn.Module, method: str) -> None:
    """:class:`ModelTypeError` when ``model`` has parameters on the meta device: ``method``
    scores weight values, and a meta tensor has a shape but no values."""
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ModelTypeError(
            f"{method}: {type(model).__name__} has {len(meta)} parameter(s) on the meta device ({meta[:3]}): they "
            f"have shapes but no values, and {method} scores weight values; build the model on the CPU (or "
            "model.to_empty(device='cpu') and load its weights). Only prune.random works from shapes alone")


def model_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Parameter shapes by public name (``weight``, not ``weight_orig``)."""
    return masks._param_shapes(model)


def resolve_model(
    model: nn.Module,
    *,
    names: Iterable[str] | None,
    mask: Mapping[str, torch.Tensor] | None,
    include_first: bool,
    include_last: bool,
    method: str,
    needs_values: bool = True,
) -> tuple[list[str], Mask, Mask]:
    """:func:`resolve` for a model; with no ``mask`` given, masks installed in the model
    (``torch.nn.utils.prune``) are the starting point, so pruned weights stay pruned.
    ``needs_values``: the method reads the weights (every one but random pruning), so a
    model on the meta device (shapes only) is refused up front."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{method}: expected an nn.Module, got {type(model).__name__}")
    if needs_values:
        require_values(model, method)
    if mask is None:
        installed = masks.from_model(model)
        if installed:
            mask = installed
            if names is None:  # prune what prunable_parameters says, starting from the installed masks
                names = masks.prunable_parameters(model, include_first=include_first, include_last=include_last)
    return resolve(
        model_shapes(model),
        model=model,
        names=names,
        mask=mask,
        include_first=include_first,
        include_last=include_last,
        method=method,
        label=type(model).__name__,
    )


def select(
    scores: Mapping[str, torch.Tensor],
    current: Mask,
    *,
    scope: str,
    density: float | None = None,
    keep_remaining: float | None = None,
    clamp: bool = False,
    method: str,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    nonnegative: bool = False,
) -> Mask:
    """Keep the highest-scoring entries among those ``current`` keeps; the rest are
    pruned (masks are nested). Exactly ``k = round(total * density)`` entries are kept, or
    ``round(kept * keep_remaining)``; per tensor with ``scope="layerwise"``. Ties keep the
    entry that comes first (tensor order, then flat index): a stable sort, no randomness.
    ``clamp`` caps k at what is still kept instead of raising. ``transform`` (e.g.
    ``torch.abs``) is applied to each chunk of ``scores`` as it is read, so a score the
    size of the model need not exist (magnitude ranks ``|w|`` straight from the weights);
    ``nonnegative``: the (transformed) scores are never negative nor -0.0, a faster path.

    Bounded memory, linear time: the k-th largest score is found by a radix selection
    over order-preserving integer keys of the scores, 16 bits per pass, reading the
    tensors in chunks of :data:`CHUNK` entries; nothing but the output masks grows with
    the model. The result is the same set as a stable descending sort of all scores."""
    if (density is None) == (keep_remaining is None):
        raise ConfigError(f"{method}: give exactly one of density and keep_remaining")
    names = list(current)
    groups = [names] if scope == "global" else [[n] for n in names]
    out: Mask = {}
    for group in groups:
        sel = _Selection(group, scores, current, transform, method, nonnegative)
        kept = sel.kept
        total = sum(current[n].numel() for n in group)
        if density is not None:
            k = round_half_up(total * density)
        else:
            k = round_half_up(kept * keep_remaining)
        if k > kept:
            if not clamp:
                where = "in total" if scope == "global" else f"in {group[0]!r}"
                raise ConfigError(
                    f"{method}: the target keeps {k} weights {where} but the current mask keeps only "
                    f"{kept}: pruning never regrows weights; choose a higher sparsity"
                )
            k = kept
        out.update(sel.top(k))
    return out


class ReplayedUniform(Mapping[str, torch.Tensor]):
    """``torch.rand(shape, generator=generator, dtype=float64)`` for each name in order,
    the numbers an eager dict of draws would hold, without holding them: the generator's
    state before each draw is kept, and a read draws that tensor again from it. Creating
    it advances ``generator`` (torch's default one if None) exactly as the eager draws."""

    def __init__(self, shapes: Mapping[str, torch.Size], generator: torch.Generator | None):
        g = generator if generator is not None else torch.default_generator
        self._shapes = dict(shapes)
        self._states = {}
        for n, shape in self._shapes.items():
            self._states[n] = g.get_state()
            torch.rand(shape, generator=g, dtype=torch.float64)

    def __getitem__(self, name: str) -> torch.Tensor:
        g = torch.Generator().set_state(self._states[name])
        return torch.rand(self._shapes[name], generator=g, dtype=torch.float64)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


CHUNK = 1 << 20
"""Entries read at a time by :func:`select`: its working memory is a few times this."""

_NARROW = (torch.float16, torch.bfloat16, torch.float32)


class _Selection:
    """The exact top-k of the alive entries of some score tensors, by radix selection.

    Scores become integer keys that sort as the floats do (float32 bits when every score
    is at most 32-bit, which converts exactly; float64 otherwise, as the reference sort
    used): non-negative floats' bits already sort; a negative float's bits, all but the
    sign flipped, sort below them. ``-0.0`` is made ``+0.0`` first, as the floats are equal.
    The first pass (which also counts the alive entries and finds NaNs) histograms the
    top 16 bits; each further pass the next 16 bits of the keys that share the prefix found
    so far, until the k-th largest key is known exactly; the last pass writes the masks."""

    def __init__(self, group, scores, current, transform, method, nonnegative):
        self.group, self.scores, self.current, self.transform, self.method = group, scores, current, transform, method
        self.nonnegative = nonnegative
        self.full = {n: bool(current[n].all()) for n in group}  # every entry alive: no masking needed
        self.wide = any(scores[n].dtype not in _NARROW for n in group)
        self.bits = 64 if self.wide else 32
        self._hist0: torch.Tensor | None = None
        self.kept = self._first_pass()

    def _chunks(self, n: str, values: torch.Tensor | None = None):
        """``(start, alive, keys, values)`` per chunk of tensor ``n`` (its scores, or
        ``values`` when the caller already holds them): keys of every entry; ``alive`` is
        None where every entry of the tensor is alive."""
        s = (self.scores[n] if values is None else values).detach()
        s = s.reshape(-1)
        alive = None if self.full[n] else self.current[n].reshape(-1)
        dtype = torch.float64 if self.wide else torch.float32
        for i in range(0, s.numel(), CHUNK):
            x = s[i : i + CHUNK].to("cpu")
            if self.transform is not None:
                x = self.transform(x)
            yield i, None if alive is None else alive[i : i + CHUNK], self._key(x.to(dtype)), x

    def _key(self, x: torch.Tensor) -> torch.Tensor:
        itype = torch.int64 if self.wide else torch.int32
        if self.nonnegative:
            return x.view(itype)
        key = (x + 0.0).view(itype)  # -0.0 becomes +0.0
        return torch.where(key < 0, key ^ ((1 << (self.bits - 1)) - 1), key)

    def _first_pass(self) -> int:
        kept = 0
        hist = torch.zeros(1 << 16, dtype=torch.int64)
        for n in self.group:
            for _, alive, key, _x in self._chunks(n):
                if alive is not None:
                    key = key[alive]
                kept += key.numel()
                hist += torch.bincount((key >> (self.bits - 16)) + 0x8000, minlength=1 << 16)
        # NaN keys sort above +inf's or below -inf's; only if the buckets of the infinities or
        # beyond hold anything is each tensor looked at for NaNs (to name them)
        inf = self._key(torch.tensor([float("inf"), float("-inf")], dtype=torch.float64 if self.wide else torch.float32))
        hi, lo = [int(b) for b in (inf >> (self.bits - 16)) + 0x8000]
        if int(hist[hi:].sum()) or int(hist[: lo + 1].sum()):
            bad = [n for n in self.group if any(
                bool(torch.isnan(x if alive is None else x[alive]).any()) for _, alive, _k, x in self._chunks(n))]
            if bad:
                raise ConfigError(f"{self.method}: scores of {bad[:3]} contain NaN (diverged weights or gradients?)")
        self._hist0 = hist
        return kept

    def _threshold(self, k: int) -> tuple[int, int, int]:
        """The k-th largest alive key, how many entries equal to it are kept, and how
        many alive entries equal it in all."""
        need = k
        hist = self._hist0
        prefix = None
        shift = self.bits - 16
        while True:
            assert hist is not None
            from_top = hist.flip(0).cumsum(0)
            j = int(torch.searchsorted(from_top, need))  # first bucket (from the top) reaching need
            bucket = (1 << 16) - 1 - j
            need -= int(from_top[j]) - int(hist[bucket])
            prefix = bucket - 0x8000 if prefix is None else (prefix << 16) | bucket
            if shift == 0:
                return prefix, need, int(hist[bucket])
            shift -= 16
            hist = torch.zeros(1 << 16, dtype=torch.int64)
            for n in self.group:
                for _, alive, key, _x in self._chunks(n):
                    inside = (key >> (shift + 16)) == prefix
                    if alive is not None:
                        inside &= alive
                    key = key[inside]
                    if key.numel():
                        hist += torch.bincount((key >> shift) & 0xFFFF, minlength=1 << 16)

    def top(self, k: int) -> Mask:
        rule = self.rule(k, count_ties=False)
        return {n: rule.keep(n) for n in self.group}

    def rule(self, k: int, *, count_ties: bool = True) -> "KeepRule":
        """The top-k as a :class:`KeepRule`. ``count_ties``: when only some of the
        entries equal to the threshold are kept, a pass over the scores counts them per
        tensor, so that any tensor's mask can be made alone, in any order (else the masks
        must be made in ``group`` order)."""
        return KeepRule(self, k, count_ties)

    def keep(self, n: str, thr: int, ties: int | None, values: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Tensor ``n``'s mask: its alive entries above key ``thr``, and the first ``ties``
        (index order; None: all) of those equal to it; returns it and the ties left."""
        keep = torch.zeros(self.current[n].numel(), dtype=torch.bool)
        left = ties
        for i, alive, key, _x in self._chunks(n, values):
            part = key >= thr if left is None else key > thr
            if alive is not None:
                part &= alive
            if left:
                eq = key == thr
                if alive is not None:
                    eq &= alive
                count = int(torch.count_nonzero(eq))
                if count <= left:  # every tie of this chunk is kept
                    part |= eq
                    left -= count
                else:  # the first ``left`` of them, in index order
                    part[eq.nonzero().squeeze(1)[:left]] = True
                    left = 0
            keep[i : i + part.numel()] = part
        return keep.view(self.current[n].shape), 0 if left is None else left


class KeepRule:
    """Which entries a global top-k keeps, one tensor at a time: ``keep(name)`` (or
    ``keep(name, values)`` with the tensor's scores already in hand) is that tensor's
    mask, the same as :func:`select` gives, without the masks of the other tensors
    existing (a checkpoint streamed tensor by tensor masks each as it writes it).
    ``kept``: the entries kept in all."""

    def __init__(self, sel: _Selection, k: int, count_ties: bool):
        self.sel = sel
        self.mode = "none" if k <= 0 else "current" if k >= sel.kept else "top"
        self.kept = max(0, min(k, sel.kept))
        self.quota: dict[str, int] | None = None
        if self.mode != "top":
            return
        self.thr, ties, equal = sel._threshold(k)
        self.ties = ties
        if ties == equal:  # every entry equal to the threshold is kept: no order needed
            self.ties = None
        elif count_ties:
            self.quota = {}
            for n in sel.group:  # the first ``ties`` in tensor order, then index order
                count = 0
                for _i, alive, key, _x in sel._chunks(n):
                    eq = key == self.thr
                    count += int(torch.count_nonzero(eq & alive if alive is not None else eq))
                self.quota[n] = min(count, ties)
                ties -= self.quota[n]
        self._left = self.ties  # for masks made in group order without quotas

    def keep(self, name: str, values: torch.Tensor | None = None) -> torch.Tensor:
        sel = self.sel
        if self.mode == "none":
            return torch.zeros(sel.current[name].shape, dtype=torch.bool)
        if self.mode == "current":
            return sel.current[name].clone()
        if self.ties is None:
            return sel.keep(name, self.thr, None, values)[0]
        if self.quota is not None:
            return sel.keep(name, self.thr, self.quota[name], values)[0]
        mask, self._left = sel.keep(name, self.thr, self._left, values)
        return mask


def select_rule(
    scores: Mapping[str, torch.Tensor],
    current: Mask,
    *,
    density: float,
    method: str,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    nonnegative: bool = False,
) -> KeepRule:
    """:func:`select` with ``scope="global"`` and ``density``, as a :class:`KeepRule`:
    each tensor's mask made when it is asked for (its scores read again then, or passed
    in), so no mask of the whole model is held; the same masks as :func:`select`."""
    sel = _Selection(list(current), scores, current, transform, method, nonnegative)
    total = sum(current[n].numel() for n in current)
    k = round_half_up(total * density)
    if k > sel.kept:
        raise ConfigError(f"{method}: the target keeps {k} weights in total but the current mask keeps only "
                          f"{sel.kept}: pruning never regrows weights; choose a higher sparsity")
    return sel.rule(k)


def scoring_copy(model: nn.Module, current: Mask) -> nn.Module:
    """A deep copy of ``model`` with plain parameters (installed prune masks made
    permanent) and the weights ``current`` prunes set to zero; the input is untouched."""
    net = masks.copy_model(model)
    if masks.from_model(net):
        masks.remove(net)
    with torch.no_grad():
        for n, b in current.items():
            p = net.get_parameter(n)
            p.mul_(b.to(device=p.device, dtype=p.dtype))
    return net


def batches_of(batches: Iterable[Any], method: str, model: nn.Module | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the ``(x, y)`` pairs of ``batches``; :class:`ConfigError` for anything else or
    none. With ``model``, the model/data pairing is checked on the first batch before it
    is used (:func:`elastigraph.train.pairing.check_pairing`) and every batch's targets
    against the model's outputs."""
    from ..train.pairing import check_pairing, check_targets

    if batches is None or isinstance(batches, (str, bytes, torch.Tensor)) or not hasattr(batches, "__iter__"):
        raise ConfigError(f"{method}: batches must be an iterable of (inputs, targets) pairs of tensors "
                          f"(e.g. a list or a DataLoader), got {type(batches).__name__}")
    n = 0
    outputs = None
    for b in batches:
        if not (isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[0], torch.Tensor)):
            raise ConfigError(
                f"{method}: each batch must be an (inputs, targets) pair of tensors, got {type(b).__name__}"
            )
        x, y = b[0], b[1]
        per_token = isinstance(y, torch.Tensor) and not x.is_floating_point() and x.dim() == 2 and y.shape == x.shape
        if not isinstance(y, torch.Tensor) or (y.dim() != 1 and not per_token) or len(y) != len(x) or (
                y.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8) and len(y) and int(y.min()) < 0):
            raise ConfigError(
                f"{method}: batch {n}: targets must be a 1-D tensor of {len(x)} class indices >= 0 "
                f"(one per input; for token ids x of shape (N, T): next tokens of the same shape), got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}"
            )
        if model is not None:
            data = f"{method} batch {n}"
            if outputs is None:
                outputs = check_pairing(model, x, y, data_name=data, sequence=per_token)
            else:
                check_targets(y, outputs, model=type(model).__name__, data=data)
        n += 1
        yield x, y
    if n == 0:
        raise ConfigError(f"{method}: no batches given; pass an iterable of (inputs, targets) pairs")


# ---------------------------------------------------------------------- N:M semi-structured


def parse_n_m(value: Any, method: str) -> tuple[int, int]:
    """``(n, m)`` from ``"2:4"`` or ``(2, 4)``: keep at most ``n`` of every ``m``
    consecutive weights along a layer's input dimension (0 < n < m)."""
    pair = value
    if isinstance(value, str):
        parts = value.split(":")
        pair = tuple(int(p) for p in parts) if len(parts) == 2 and all(p.strip().isdigit() for p in parts) else None
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in pair) and 0 < pair[0] < pair[1])
    if not ok:
        raise ConfigError(f"{method}: n_m must be 'N:M' or (N, M) with 0 < N < M, such as '2:4' or (4, 8); got {value!r}")
    return int(pair[0]), int(pair[1])


def input_last(model: nn.Module | None, name: str) -> bool:
    """Whether parameter ``name`` stores its input dimension after its output one
    (nn.Linear, nn.Conv*: ``(out, in, ...)``); False for transformers' ``Conv1D``
    (GPT-2), whose weight is ``(in, out)``."""
    if model is None:
        return True
    mod_name, _, _attr = name.rpartition(".")
    return type(model.get_submodule(mod_name)).__name__ != "Conv1D"


def as_rows(t: torch.Tensor, in_last: bool) -> torch.Tensor:
    """``t`` as ``(outputs, inputs)``: one row per output unit (a view where possible)."""
    return t.reshape(t.shape[0], -1) if in_last else t.reshape(t.shape[0], -1).t()


def from_rows(rows: torch.Tensor, like: torch.Tensor, in_last: bool) -> torch.Tensor:
    """Inverse of :func:`as_rows`: ``rows`` back in the layout of ``like``."""
    return (rows if in_last else rows.t()).reshape(like.shape).contiguous()


def n_m_keep(scores: torch.Tensor, alive: torch.Tensor | None, n: int, m: int, *, name: str, method: str,
             prune_low_first: bool = False, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> torch.Tensor:
    """The N:M mask of one ``(outputs, inputs)`` score matrix: in each run of ``m``
    consecutive inputs of a row, the ``n`` highest-scoring alive entries are kept (fewer
    where the run has fewer alive; ``alive=None``: all are). Ties: the lower index is kept,
    as a stable descending sort; ``prune_low_first`` instead prunes the ``m - n`` lowest
    with a stable ascending sort (lower index pruned first, as Wanda's reference sorts).
    ``transform`` (``torch.abs``) is applied to each block of rows as it is read, so no
    score matrix the size of the tensor is made; working memory is a few bytes times
    :data:`CHUNK`."""
    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"{method}: {name} has {cols} inputs per output, not a multiple of M={m}; "
                          f"N:M pruning needs whole groups (leave it out with names=[...])")
    scores = scores.detach()
    wide = scores.dtype not in _NARROW + (torch.float64,)
    out = torch.empty(rows, cols, dtype=torch.bool)
    step = max(1, CHUNK // max(cols, 1))  # rows at a time: bounded working memory
    for r in range(0, rows, step):
        s = scores[r : r + step].to("cpu")
        if transform is not None:
            s = transform(s)
        if wide:
            s = s.to(torch.float64)
        s = s.reshape(-1, cols // m, m)
        live = None if alive is None else alive[r : r + step].reshape(-1, cols // m, m)
        if bool(torch.isnan(s).any()) and (live is None or bool(torch.isnan(s[live]).any())):
            raise ConfigError(f"{method}: scores of {name!r} contain NaN (diverged weights?)")
        if live is not None:
            s = s.masked_fill(~live, float("-inf"))  # already pruned: ranked last, pruned first
        # the rank of each entry in its group, as a stable sort would place it, from the
        # m pairwise comparisons (exact in the scores' own dtype; linear time, no sort)
        rank = torch.zeros(s.shape, dtype=torch.uint8)
        idx = torch.arange(m)
        for j in range(m):
            sj = s[..., j : j + 1]
            before = idx > j  # entry j comes before entries with a higher index
            if prune_low_first:  # ascending: j precedes i if s_j < s_i, or equal and j < i
                rank += ((sj < s) | ((sj == s) & before)).to(torch.uint8)
            else:  # descending: j precedes i if s_j > s_i, or equal and j < i
                rank += ((sj > s) | ((sj == s) & before)).to(torch.uint8)
        keep = rank >= m - n if prune_low_first else rank < n
        if live is not None:
            keep &= live
        out[r : r + step] = keep.reshape(-1, cols)
    return out


def is_n_m(mask: torch.Tensor, n: int, m: int, in_last: bool = True) -> bool:
    """Whether every run of ``m`` consecutive inputs of every output keeps at most ``n``."""
    rows = as_rows(mask, in_last)
    if rows.shape[1] % m:
        return False
    return bool((rows.reshape(rows.shape[0], -1, m).sum(-1) <= n).all())
