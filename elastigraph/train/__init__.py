"""Masked training: the hyper-parameters (``config``), one fast loop (CUDA first, CPU
fallback, DDP under torchrun), what is trained for (``tasks``: classification, byte-level
language modelling) and local-file datasets (``data``, ``text``). The model zoo lives in :mod:`elastigraph.models`."""

from .config import TrainConfig, config_problems
from .data import ArrayDataset, DataSpec, FolderDataset, balanced_subset, load_dataset, synthetic
from .loop import TrainResult, evaluate, evaluate_metrics, lr_at, rich_progress, steps_per_epoch, total_steps, train
from .tasks import Metric, Task, get_task, task_names

__all__ = [
    "ArrayDataset", "DataSpec", "FolderDataset", "balanced_subset", "load_dataset", "synthetic",
    "TrainConfig", "config_problems", "TrainResult", "evaluate", "evaluate_metrics", "Metric", "Task", "get_task",
    "task_names", "lr_at", "rich_progress", "steps_per_epoch", "total_steps", "train",
]
