"""Compatibility module: what ``elastigraph.graph.trace`` held before it was split.

Import from the new homes in new code:

* :mod:`elastigraph.graph.capture` -- getting an fx graph: :func:`capture` (torch.fx,
  then the torch.export fallback), :func:`trace`, :func:`export_graph`, :class:`Capture`,
  :func:`optional_inputs`, :func:`unwrap_compiled`.
* :mod:`elastigraph.graph.shapes` -- example inputs and shapes: :func:`default_inputs`,
  :func:`infer_input_shape` (also ``elastigraph.graph.infer_input_shape``),
  :func:`propagate_shapes`, :func:`keep_plain_tensors`.
* :mod:`elastigraph.graph.build` -- the networkx graph: :func:`build_graph`,
  :class:`Traced`, :data:`SOURCE`, the node schema :class:`NodeAttrs`.

``trace``, ``export_graph`` and ``propagate_shapes`` return typed results now (a
:class:`Capture`; the shapes and the rejected inputs) instead of attributes set on the
fx graph.
"""

from .build import SOURCE, Traced, build_graph
from .capture import Capture, capture, export_graph, optional_inputs, trace, unwrap_compiled
from .shapes import default_inputs, infer_input_shape, keep_plain_tensors, propagate_shapes

__all__ = ["SOURCE", "Traced", "build_graph", "Capture", "capture", "export_graph", "optional_inputs", "trace",
           "unwrap_compiled", "default_inputs", "infer_input_shape", "keep_plain_tensors", "propagate_shapes"]
