"""elastigraph: move lottery tickets between networks of one family but different depth.

    import elastigraph as eg
    ticket = eg.transfer(src_model, src_mask, dst_model)   # stretch or squeeze a ticket
    ticket.apply(dst_model)                                 # rewound weights + mask
    eg.save_pretrained(ticket, dst_model, "out/")           # an hf: target as a Hugging Face folder
    eg.transfer_folder("llama/", "llama-deeper/", num_hidden_layers=33, n_m="2:4")  # streamed, folder to folder

Subpackages: ``graph`` (tracing, units, segments), ``analyses`` (linear mode
connectivity), ``masks`` (the mask type, files, reports), ``prune`` (IMP, random, SNIP, GraSP, SynFlow, Wanda; N:M), ``train`` (masked training,
datasets), ``models`` (the zoo), ``recipes`` (experiments), ``cli``.
"""

__version__ = "0.1.0"

from . import analyses, errors, masks, models, prune  # noqa: F401
from .graph import ModelGraph, analyze
from .masks import Mask, load_lth_mask, load_mask, read_mask, save_mask, sparsity_report
from .models.hf_folder import load_pretrained, save_pretrained
from .transfer import Plan, StagePlan, Ticket, transfer
from .transfer_folder import prune_folder, transfer_folder

__all__ = [
    "transfer", "analyze", "Ticket", "Plan", "StagePlan", "ModelGraph",
    "save_pretrained", "load_pretrained", "transfer_folder", "prune_folder",
    "Mask", "save_mask", "load_mask", "read_mask", "load_lth_mask", "sparsity_report",
    "errors", "masks", "models", "prune", "analyses",
]
