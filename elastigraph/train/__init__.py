"""Masked training: one fast loop (CUDA first, CPU fallback, DDP under torchrun) and
local-file datasets. The model zoo lives in :mod:`elastigraph.models`."""

from .data import ArrayDataset, DataSpec, FolderDataset, balanced_subset, load_dataset, synthetic
from .loop import TrainConfig, TrainResult, evaluate, lr_at, rich_progress, steps_per_epoch, total_steps, train

__all__ = [
    "ArrayDataset", "DataSpec", "FolderDataset", "balanced_subset", "load_dataset", "synthetic",
    "TrainConfig", "TrainResult", "evaluate", "lr_at", "rich_progress", "steps_per_epoch", "total_steps", "train",
]
