"""The traced graph of a model and its stretchable structure.

``analyze(model)`` traces the model (torch.fx, timm's leaf lists), propagates shapes on
meta tensors and finds regions, units, segments and stages from the graph structure
(see :mod:`elastigraph.graph.units`). The result prints as a rich tree and serialises
with ``to_dict()``.

The modules, from the ground up: ``shapes`` (example inputs, meta shape propagation),
``capture`` (torch.fx trace, torch.export fallback), ``build`` (the networkx graph and its
typed node schema ``NodeAttrs``), ``units`` (regions, units, segments, stages), ``match``
(pairing two models, plan verification). ``trace`` re-exports the first three's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import networkx as nx
from torch import nn

from .build import SOURCE, NodeAttrs, Traced, build_graph
from .capture import unwrap_compiled
from .shapes import default_inputs, infer_input_shape
from .units import (
    Decomposition, Region, Segment, Stage, Unit, decompose, find_block0, find_segments, find_single_units,
    multi_stream_blocks, span_label, tight_scope,
)


@dataclass
class ModelGraph:
    """One model's traced graph and the stages found in it (``analyze``'s result)."""

    name: str
    traced: Traced
    decomposition: Decomposition
    segments: list[Segment]
    stages: list[Stage]

    @property
    def graph(self) -> nx.DiGraph:
        """The networkx DiGraph: fx node names (+ ``__input__``), attributes as declared by
        :class:`~elastigraph.graph.build.NodeAttrs` (op, kind, scope, params, shape, ...)."""
        return self.traced.graph

    @property
    def regions(self) -> list[Region]:
        return self.decomposition.regions

    @property
    def units(self) -> list[Unit]:
        """Every unit of every segment, in graph order."""
        return [u for s in self.segments for u in s.units]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data summary (JSON-ready): input shape, region count, stages with their
        block 0 and units (label, parameter names)."""
        return {
            "model": self.name,
            "input_shapes": [list(s) for s in self.traced.input_shapes],
            "capture": self.traced.capture,
            "inputs_rejected": list(self.traced.rejected),
            "nodes": self.graph.number_of_nodes() - 1,
            "regions": len(self.regions),
            "stages": [
                {
                    "index": st.index,
                    "label": st.label,
                    "block0": st.block0_label,
                    "units": [
                        {"label": u.label, "signature": u.sig_id, "regions": [u.start, u.stop],
                         "params": [n for n, _ in u.params], "buffers": [n for n, _ in u.buffers]}
                        for u in st.segment.units
                    ],
                    "n_blocks": st.n_blocks,
                }
                for st in self.stages
            ],
        }

    def __rich__(self) -> Any:
        from rich.tree import Tree

        shapes = ", ".join(str(tuple(s)) for s in self.traced.input_shapes)
        from rich.markup import escape

        if self.traced.rejected:
            shapes += f" after {len(self.traced.rejected)} rejected: " + "; ".join(
                r.split(":")[0] for r in self.traced.rejected)
        tree = Tree(f"[bold]{escape(self.name)}[/]: {self.graph.number_of_nodes() - 1} ops, "
                    f"{len(self.regions)} regions, {len(self.stages)} stretchable stage(s) (input {escape(shapes)}, "
                    f"captured with {self.traced.capture})")
        for st in self.stages:
            b0 = f", block 0 = {st.block0_label} (fixed)" if st.block0 is not None else ""
            node = tree.add(f"stage {st.index} [cyan]{st.label}[/]: {st.n_blocks} blocks{b0}")
            units = st.segment.units
            n_par = sum(_numel(s) for _, s in units[0].params) if units else 0
            shown = units if len(units) <= 6 else units[:3] + units[-2:]
            for i, u in enumerate(shown):
                if len(units) > 6 and i == 3:
                    node.add(f"... {len(units) - 5} more")
                node.add(f"{u.label}  [dim]sig {u.sig_id}, {u.stop - u.start} region(s), {n_par:,} params[/]")
        return tree

    def __repr__(self) -> str:
        stages = ", ".join(f"{s.label}:{s.n_blocks}" for s in self.stages)
        return f"ModelGraph({self.name!r}, regions={len(self.regions)}, stages=[{stages}])"


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for v in shape:
        n *= v
    return n


def stage_label(g: nx.DiGraph, regions: list[Region], unit: Unit) -> str:
    """The module holding a stage's units (``layer2``, ``blocks``) or the unit label."""
    sc = tight_scope(g, regions, unit.start, unit.stop)
    if sc:
        # the parent in the module tree (models may call a container's children directly)
        parent = sc[-1].rpartition(".")[0]
        return parent or sc[-1]
    return unit.label


def analyze(model: nn.Module, example_input: Any = None, *, leaf_modules: Sequence[type] = (),
            name: str | None = None) -> ModelGraph:
    """Trace ``model`` and find its units, segments and stages.

    ``example_input``: a tensor, an input shape, or a list of them (multi-input); default:
    timm's ``input_size``, else 32/64/224 pixels with the first layer's channels.
    ``leaf_modules``: extra module classes to keep opaque when tracing.
    Models torch.fx cannot trace (Hugging Face transformers) are captured with
    non-strict ``torch.export`` instead; ``result.traced.capture`` says which was used.
    The model is not modified."""
    model = unwrap_compiled(model)  # torch.compile wrappers: trace the module they hold
    label = name or type(model).__name__
    traced = build_graph(model, example_input, leaf_modules, model_name=label)
    dec = decompose(traced)
    streams = multi_stream_blocks(traced.graph, dec.regions) if traced.capture == "torch.fx" else []
    if streams:  # blocks that hand each other several tensors (TNT): traced as single calls
        kinds = sorted({type(model.get_submodule(m)) for m in streams}, key=lambda t: t.__qualname__)
        traced = build_graph(model, example_input, tuple(leaf_modules) + tuple(kinds), model_name=label)
        dec = decompose(traced)
    g = traced.graph
    segs = find_segments(g, dec.regions)
    segs = sorted(segs + find_single_units(g, dec.regions, segs), key=lambda s: s.start)
    stages: list[Stage] = []
    lower = 0
    for i, seg in enumerate(segs):
        u0 = seg.units[0]
        b0 = find_block0(g, dec.regions, seg.start, u0.stop - u0.start, (u0.start, u0.stop), lower)
        stages.append(Stage(index=i, label=stage_label(g, dec.regions, u0), segment=seg, block0=b0,
                            block0_label=block_label(g, dec.regions, b0) if b0 else None))
        lower = seg.stop
    return ModelGraph(name=label, traced=traced, decomposition=dec, segments=segs, stages=stages)


def block_label(g: nx.DiGraph, regions: list[Region], span: tuple[int, int]) -> str:
    """Readable name of regions ``[span)``: their module, or the first..last module."""
    return span_label(g, regions, span[0], span[1])


__all__ = ["analyze", "ModelGraph", "Region", "Unit", "Segment", "Stage", "default_inputs", "infer_input_shape",
           "NodeAttrs", "Traced", "SOURCE"]
