"""elastigraph: move lottery tickets between networks of one family but different depth.

    ticket = elastigraph.transfer(src_model, src_mask, dst_model)
"""

__version__ = "0.1.0"

from . import errors, masks  # noqa: F401
