"""Random masks with exactly the per-tensor kept counts of a given mask: the layerwise
random baseline and the permuted-copies baseline of the E-LTH protocol.

Both follow the authors' code (ElasticLTH ``utils/tensor_utils.py``): a tensor is
shuffled by the permutation ``argsort`` of ``N(0, 1)`` draws from a generator seeded with
``seed + i``, ``i`` the tensor's position in the sorted key order of the whole mask
(``shuffle_state_dict``, used by ``lottery/branch/randomly_prune.py --strategy
layerwise``). ``names`` restricts the shuffle to some tensors (``permute_copy`` in
``lottery/branch/morphism.py`` shuffles only the copied blocks' masks).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..errors import MaskError
from ..masks import Mask, _as_mask
from ..seeds import check_seed


def _perm(n: int, seed: int) -> torch.Tensor:
    """The authors' ``perm(N, seed)``: argsort of N standard-normal draws."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.argsort(torch.normal(torch.zeros(n), torch.ones(n), generator=g))


def shuffle(mask: Mapping[str, torch.Tensor], *, seed: int, names: Iterable[str] | None = None) -> Mask:
    """A new mask whose tensors ``names`` (default: all) are ``mask``'s entries randomly
    permuted within each tensor, so that every tensor keeps exactly its kept count; the
    other tensors are copied unchanged. Deterministic in ``seed``."""
    seed = check_seed(seed, "shuffle: seed")
    m = _as_mask(mask, "mask given to shuffle")
    chosen = set(m) if names is None else set(names)
    unknown = sorted(chosen - set(m))
    if unknown:
        raise MaskError(f"shuffle: {unknown[:3]} are not entries of the mask (it has {list(m)[:3]} ...)")
    position = {k: i for i, k in enumerate(sorted(m))}
    out: Mask = {}
    for k, t in m.items():
        if k in chosen:
            out[k] = t.reshape(-1)[_perm(t.numel(), seed + position[k])].reshape(t.shape).clone()
        else:
            out[k] = t.clone()
    return out
