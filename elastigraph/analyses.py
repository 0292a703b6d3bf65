"""The E-LTH paper's analyses as library functions.

*Linear mode connectivity* (paper Fig. 8; Frankle et al. 2020, "Linear Mode Connectivity
and the Lottery Ticket Hypothesis"): train one ticket twice from the same weights under
the same mask with two data orders, evaluate the networks on the straight line between
the two trained weight vectors, and report the *error barrier*. A barrier near 0 means
the ticket's training is stable to SGD noise (it reaches the same linearly connected
basin), which Frankle et al. found to be when IMP tickets work.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import ConfigError

DEFAULT_POINTS = 11
DEFAULT_DATA_SEEDS = (10_001, 10_002)  # ElasticLTH uses data_seed + 9999 / + 10001; any two distinct seeds do


def interpolate_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * a + alpha * b`` for every floating-point entry (weights, BN
    running statistics); integer entries (BN's ``num_batches_tracked``) are taken from
    ``a``. ``alpha = 0`` gives ``a``, ``alpha = 1`` gives ``b``, exactly."""
    if set(a) != set(b):
        raise ConfigError(f"cannot interpolate states with different keys: {sorted(set(a) ^ set(b))[:5]}")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if tuple(va.shape) != tuple(vb.shape):
            raise ConfigError(f"cannot interpolate {k!r}: shapes {tuple(va.shape)} and {tuple(vb.shape)} differ")
        if not va.is_floating_point():
            out[k] = va.clone()
        elif alpha == 0:
            out[k] = va.clone()
        elif alpha == 1:
            out[k] = vb.clone()
        else:
            out[k] = torch.lerp(va, vb.to(va.dtype), float(alpha))
    return out


def error_barrier(alphas: Sequence[float], errors: Sequence[float]) -> float:
    """The error barrier of a linear path: ``max over alpha`` of ``error(alpha)`` minus the
    linear interpolation of the endpoint errors, ``(1 - alpha) * error(0) + alpha *
    error(1)`` (0 when the path is no worse than its endpoints anywhere; never negative,
    since the endpoints contribute 0). ``alphas`` must start at 0 and end at 1."""
    if len(alphas) != len(errors) or len(alphas) < 2:
        raise ConfigError(f"error_barrier needs as many errors as alphas (>= 2), got {len(alphas)} and {len(errors)}")
    if alphas[0] != 0 or alphas[-1] != 1 or any(x >= y for x, y in zip(alphas, alphas[1:])):
        raise ConfigError(f"alphas must rise from 0 to 1, got {list(alphas)}")
    e0, e1 = errors[0], errors[-1]
    # e0 + a * (e1 - e0): exact for equal endpoints; the endpoints themselves give 0
    return max([0.0] + [e - (e0 + a * (e1 - e0)) for a, e in zip(alphas[1:-1], errors[1:-1])])


@dataclass
class LMCResult:
    """One linear-mode-connectivity measurement. ``test_acc[i]`` / ``test_loss[i]`` are at
    ``alphas[i]`` (``alphas[0] = 0`` is the network trained with ``data_seeds[0]``);
    ``barrier`` is :func:`error_barrier` of the test error (fractions, not points);
    ``barrier_mean`` is the maximum error minus the mean endpoint error (the
    "instability" variant); ``states`` holds the two trained networks' weights."""

    alphas: list[float]
    test_acc: list[float]
    test_loss: list[float]
    barrier: float
    barrier_mean: float
    data_seeds: tuple[int, int]
    endpoint_acc: tuple[float, float]
    steps: int
    states: tuple[dict[str, Tensor], dict[str, Tensor]] | None = field(default=None, repr=False)
    diverged: bool = False
    """True when one of the two trainings diverged (NaN/inf loss): there is no path to
    measure, so every number is NaN (``None`` in :meth:`to_dict`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the weights); a diverged measurement holds ``None`` (never a
        number) and ``diverged: true``."""
        d = dataclasses.asdict(dataclasses.replace(self, states=None))
        d.pop("states")
        d["data_seeds"] = list(self.data_seeds)
        d["endpoint_acc"] = list(self.endpoint_acc)
        if not self.diverged:
            d.pop("diverged")
            return d
        for k in ("barrier", "barrier_mean"):
            d[k] = None
        d["endpoint_acc"] = [None, None]
        d["test_acc"] = d["test_loss"] = []
        return d


def alphas_for(points: int) -> list[float]:
    """``points`` evenly spaced values from 0 to 1 (both included)."""
    if points < 3:
        raise ConfigError(f"linear mode connectivity needs at least 3 points (the paper uses 11 or more), got {points}")
    return [i / (points - 1) for i in range(points)]


def interpolation_curve(
    model: nn.Module, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], test_set: Any, *,
    mask: Mapping[str, Tensor] | None = None, points: int = DEFAULT_POINTS, device: str = "auto",
) -> tuple[list[float], list[float], list[float]]:
    """``(alphas, test_acc, test_loss)`` of ``model`` (its architecture; weights are
    replaced) at ``points`` evenly spaced points between ``state_a`` and ``state_b``,
    evaluated under ``mask``. ``model`` is not modified."""
    from .train import evaluate

    net = copy.deepcopy(model)
    alphas = alphas_for(points)
    accs, losses = [], []
    for a in alphas:
        net.load_state_dict(interpolate_state(state_a, state_b, a))
        loss, acc = evaluate(net, test_set, device=device, mask=mask)
        accs.append(float(acc))
        losses.append(float(loss))
    return alphas, accs, losses


def linear_mode_connectivity(
    model: nn.Module,
    train_set: Any,
    test_set: Any,
    cfg: Any,
    *,
    mask: Mapping[str, Tensor] | None = None,
    start_step: int = 0,
    data_seeds: Sequence[int] = DEFAULT_DATA_SEEDS,
    points: int = DEFAULT_POINTS,
    progress: Any = None,
) -> LMCResult:
    """Train copies of ``model`` (its current weights: the ticket's rewound weights) twice
    under ``mask`` from ``start_step`` with ``cfg``, changing only the data order and
    augmentation (``cfg.seed`` = ``data_seeds[0]``, then ``data_seeds[1]``), and evaluate
    the linear interpolation between the two results at ``points`` points (paper Fig. 8;
    ElasticLTH ``change_depth_linear_connect``). ``model`` is not modified."""
    from .train import train

    seeds = tuple(int(s) for s in data_seeds)
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise ConfigError(f"linear mode connectivity needs two distinct data seeds, got {list(data_seeds)}")
    alphas_for(points)  # validate before training
    states, steps = [], 0
    for s in seeds:
        net = copy.deepcopy(model)
        res = train(net, train_set, test_set, dataclasses.replace(cfg, seed=s), mask=dict(mask) if mask else None,
                    start_step=start_step, progress=progress)
        states.append(res.final_state)
        steps = res.steps
        if res.diverged:  # NaN weights: no path to measure (train() has said where it diverged)
            nan = float("nan")
            return LMCResult(alphas=alphas_for(points), test_acc=[], test_loss=[], barrier=nan, barrier_mean=nan,
                             data_seeds=seeds, endpoint_acc=(nan, nan), steps=steps, diverged=True)
    dev = getattr(cfg, "device", "auto")
    alphas, accs, losses = interpolation_curve(model, states[0], states[1], test_set, mask=mask, points=points,
                                               device=dev)
    errors = [1.0 - a for a in accs]
    return LMCResult(
        alphas=alphas, test_acc=accs, test_loss=losses,
        barrier=error_barrier(alphas, errors),
        barrier_mean=max(errors) - (errors[0] + errors[-1]) / 2,
        data_seeds=seeds, endpoint_acc=(accs[0], accs[-1]), steps=steps, states=(states[0], states[1]),
    )


def write_lmc_csv(rows: Sequence[Mapping[str, Any]], path: Any) -> None:
    """One line per LMC measurement: seed, target, level, method, sparsity, endpoint
    accuracies, barrier (fraction) and the accuracy at every alpha."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seed", "target", "level", "method", "sparsity", "acc_a", "acc_b", "barrier", "barrier_mean",
                    "test_acc_by_alpha"])
        for r in rows:
            if r.get("diverged"):  # never a number for a diverged measurement
                w.writerow([r["seed"], r["target"], r["level"], r["method"], f"{r['sparsity']:.6f}",
                            *["diverged"] * 5])
                continue
            w.writerow([r["seed"], r["target"], r["level"], r["method"], f"{r['sparsity']:.6f}",
                        f"{r['endpoint_acc'][0]:.6f}", f"{r['endpoint_acc'][1]:.6f}", f"{r['barrier']:.6f}",
                        f"{r['barrier_mean']:.6f}", " ".join(f"{a:.4f}" for a in r["test_acc"])])


def plot_lmc(rows: Sequence[Mapping[str, Any]], path: Any) -> None:
    """Write the LMC figure: left, test error along the path (one line per target and
    ticket kind at the highest level, mean over seeds); right, the error barrier against
    sparsity (mean over seeds, min-max band). ``rows``: the runner's ``lmc`` records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    diverged = [r for r in rows if r.get("diverged")]
    for r in rows:
        if not r.get("diverged"):  # no path to draw: named in the figure's title instead
            groups.setdefault((r["target"], r["method"]), []).append(r)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    if diverged:
        fig.suptitle("diverged (not drawn): " + ", ".join(
            f"{r['target']} {r['method']} level {r['level']} seed {r['seed']}" for r in diverged[:6])
            + (" ..." if len(diverged) > 6 else ""), fontsize=8)
    for (target, method), rs in sorted(groups.items()):
        top = max(r["level"] for r in rs)
        curves = torch.tensor([[1 - a for a in r["test_acc"]] for r in rs if r["level"] == top])
        alphas = next(r["alphas"] for r in rs if r["level"] == top)
        sp = next(r["sparsity"] for r in rs if r["level"] == top)
        ax0.plot(alphas, (100 * curves.mean(0)).tolist(), marker="o", ms=3,
                 label=f"{target} {method} ({sp:.1%} sparse, n={len(curves)})")
        levels = sorted({r["level"] for r in rs})
        xs, mean, lo, hi = [], [], [], []
        for lv in levels:
            b = [100 * r["barrier"] for r in rs if r["level"] == lv]
            xs.append(100 * next(r["sparsity"] for r in rs if r["level"] == lv))
            mean.append(sum(b) / len(b))
            lo.append(min(b))
            hi.append(max(b))
        ax1.plot(xs, mean, marker="o", label=f"{target} {method}")
        ax1.fill_between(xs, lo, hi, alpha=0.2)
    ax0.set(xlabel="interpolation alpha", ylabel="test error (%)", title="linear interpolation (highest level)")
    ax1.set(xlabel="sparsity (%)", ylabel="error barrier (points)", title="error barrier (mean, min-max over seeds)")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["LMCResult", "linear_mode_connectivity", "interpolation_curve", "interpolate_state", "error_barrier",
           "alphas_for", "plot_lmc", "write_lmc_csv"]
