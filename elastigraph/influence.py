"""Which blocks to drop in a squeeze, scored on data: block influence.

The layer-pruning literature (ShortGPT's Block Influence; the angular distance of Gromov
et al., "The Unreasonable Ineffectiveness of the Deeper Layers") measures how much a
block changes the representation that flows through it: ``1 - cos(x_in, x_out)``,
averaged over every position of a calibration batch. A block whose output is nearly its
input can be dropped with the least change to the network's output. Here the score is
measured on the traced graph itself (the values at the cut points around each unit), so
it needs no per-family code and works for every model :func:`elastigraph.analyze`
handles: residual blocks, transformer layers, plain equal-width layers.

:func:`block_influence` gives the scores per stage; :func:`influence_mapping` turns them
into an explicit ``mapping=`` for :func:`elastigraph.transfer` that keeps, in each stage,
block 0 and the most influential other blocks (in their order) and drops the rest.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.fx as fx
from torch import Tensor, nn

from .errors import ConfigError, StrategyError
from .graph import ModelGraph, analyze


class _Recorder(fx.Interpreter):
    """Runs the traced graph and keeps the values of the nodes asked for."""

    def __init__(self, gm: fx.GraphModule, keep: set[str]):
        super().__init__(gm)
        self.keep, self.values = keep, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.keep:
            self.values[n.name] = out
        return out


def _angular(x: Tensor, y: Tensor) -> tuple[float, int]:
    """Sum over positions of ``1 - cos(x, y)`` (feature dim: 1 for images ``N,C,...``,
    last for sequences ``N,T,D`` and vectors ``N,D``) and the number of positions."""
    x, y = x.detach().float(), y.detach().float()
    if x.dim() >= 4:  # N, C, H, W: features are channels
        x, y = x.movedim(1, -1), y.movedim(1, -1)
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=1e-8)
    return float((1.0 - cos).double().sum()), int(cos.numel())


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable[Any], *, graph: ModelGraph | None = None,
                    example_input: Any = None) -> list[list[float]]:
    """Per stage of ``model`` (as :func:`elastigraph.analyze` finds them), the influence
    of each block, block 0 first when the stage has one: the mean over every position of
    every batch of ``1 - cos(block input, block output)``. ``batches``: model inputs, or
    ``(inputs, targets)`` pairs (the targets are ignored). The model runs in eval mode;
    it is not changed."""
    mg = graph or analyze(model, example_input)
    regions = mg.regions
    spans: list[list[tuple[int, int]]] = []
    for st in mg.stages:
        row = ([st.block0] if st.block0 is not None else []) + [(u.start, u.stop) for u in st.segment.units]
        spans.append(row)
    cut = lambda span: (regions[span[0]].entry, regions[span[1] - 1].exit)  # noqa: E731
    keep = {name for row in spans for span in row for name in cut(span)}
    try:  # the captured graph, run on the model's own tensors
        gm = fx.GraphModule(mg.traced.gm, mg.traced.fx_graph)
        run = None
    except AttributeError:  # torch.export lifted constants the module does not hold: hook the block modules
        gm, run = None, _module_runner(model, mg, spans)
    sums = [[0.0] * len(row) for row in spans]
    counts = [[0] * len(row) for row in spans]
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    n_batches = 0
    try:
        for b in batches:
            x = b[0] if isinstance(b, (tuple, list)) else b
            if not isinstance(x, Tensor):
                raise ConfigError(f"block_influence: a batch must be a tensor of inputs or an (inputs, targets) "
                                  f"pair, got {type(x).__name__}")
            if gm is not None:
                rec = _Recorder(gm, keep)
                rec.run(x)
                values = rec.values
            else:
                values = run(x)
            for i, row in enumerate(spans):
                for j, span in enumerate(row):
                    a, b_ = cut(span) if gm is not None else ((i, j, "in"), (i, j, "out"))
                    xin, xout = values.get(a), values.get(b_)
                    if isinstance(xin, Tensor) and isinstance(xout, Tensor) and xin.shape == xout.shape:
                        s, c = _angular(xin, xout)
                        sums[i][j] += s
                        counts[i][j] += c
            n_batches += 1
    finally:
        for m, t in was:
            m.training = t
    if n_batches == 0:
        raise ConfigError("block_influence: no batches given; pass an iterable of input tensors")
    return [[s / c if c else float("nan") for s, c in zip(srow, crow)] for srow, crow in zip(sums, counts)]


def _first_tensor(v: Any) -> Tensor | None:
    if isinstance(v, Tensor):
        return v
    if isinstance(v, (tuple, list)) and v:
        return _first_tensor(v[0])
    return None


def _module_runner(model: nn.Module, mg: ModelGraph, spans: list[list[tuple[int, int]]]):
    """A forward of ``model`` that returns each block's input and output tensor, keyed
    ``(stage, block, "in"/"out")``, from forward hooks on the module each block is
    (for graphs whose captured form cannot run on the module itself)."""
    from .graph.units import tight_scope

    where: dict[str, tuple[int, int]] = {}
    for i, row in enumerate(spans):
        for j, (a, b) in enumerate(row):
            sc = tight_scope(mg.graph, mg.regions, a, b)
            if not sc:
                raise StrategyError(f"influence: block {j} of stage {mg.stages[i].label!r} is not one module of "
                                    f"{mg.name} and its captured graph cannot run on the model; choose blocks with "
                                    "a strategy or a mapping")
            where[sc[-1]] = (i, j)

    def run(x: Tensor) -> dict:
        values: dict = {}
        hooks = []
        for name, (i, j) in where.items():
            def hook(mod, args, kwargs, out, i=i, j=j):
                xin = _first_tensor(args) if args else _first_tensor(next(iter(kwargs.values()), None))
                values[(i, j, "in")], values[(i, j, "out")] = xin, _first_tensor(out)
            hooks.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
        return values

    return run


def influence_mapping(src: nn.Module, dst: nn.Module, batches: Iterable[Any], *, example_input: Any = None) -> str:
    """A ``mapping=`` string for :func:`elastigraph.transfer` from ``src`` to a shallower
    ``dst``: the plan of ``transfer(strategy="influence", calibration=batches)`` (block 0
    and the most influential other blocks of every squeezed stage, in their order; stages
    of equal depth map one to one). A stage that grows is refused (influence chooses
    blocks to drop)."""
    from . import masks as _masks
    from .transfer import transfer

    plan = transfer(src, _masks.full_mask(src), dst, strategy="influence", calibration=batches,
                    example_input=example_input).plan
    for st in plan.stages:
        if st.kind == "stretch":
            raise StrategyError(f"influence: stage {st.label!r} grows from {len(st.src_blocks)} to "
                                f"{len(st.dst_blocks)} blocks; block influence chooses blocks to drop (a squeeze), "
                                "use a stretch strategy for this stage")
    return "|".join(st.mapping_string() for st in plan.stages)


__all__ = ["block_influence", "influence_mapping"]
