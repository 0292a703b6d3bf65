"""Exceptions a user can cause. Each message names the model, tensor or key at fault
and says what would work; all are ValueError/TypeError subclasses so callers that
catch the builtins keep working -- but for :class:`StepFailedError`, a step that kept
failing on a cluster (a RuntimeError: nothing in the user's input was wrong)."""


class ElastigraphError(Exception):
    """Base class of every error elastigraph raises on purpose."""


class MaskError(ElastigraphError, ValueError):
    """A mask does not fit its model: unknown key, wrong shape, non-binary values."""


class MaskTypeError(ElastigraphError, TypeError):
    """A mask (or mask file) is not of a type elastigraph can read."""


class TraceError(ElastigraphError, ValueError):
    """torch.fx could not trace a model; the message names the module/op and how to
    mark it as a leaf."""


class SegmentMismatchError(ElastigraphError, ValueError):
    """Source and target models do not line up (different family, unmatched stages or
    unit signatures); the message names the first mismatch."""


class ProvenanceError(SegmentMismatchError):
    """A planned transfer would move a tensor to a place the two module trees do not allow
    (another stage, another role, a block stitched from several); raised by
    :mod:`elastigraph.provenance` before any tensor moves."""


class MappingError(ElastigraphError, ValueError):
    """A block mapping string or plan refers to blocks that do not exist, or is malformed."""


class StrategyError(ElastigraphError, ValueError):
    """An unknown transfer or pruning strategy name."""


class ModelNameError(ElastigraphError, ValueError):
    """A zoo model name (or its overrides) that elastigraph does not know."""


class DatasetError(ElastigraphError, ValueError):
    """A dataset that cannot be found or read; says where it looked and how to get it."""


class RecipeError(ElastigraphError, ValueError):
    """An invalid recipe; lists every invalid field by path."""


class ConfigError(ElastigraphError, ValueError):
    """Invalid settings passed to a training or pruning function."""


class ReportError(ElastigraphError, ValueError):
    """A run directory without a (valid) results.json; says how to finish the run."""


class ModelTypeError(ElastigraphError, TypeError):
    """An argument that must be an nn.Module (or an example input) has another type."""


class OutputPathError(ElastigraphError, ValueError):
    """An output path (``--out``) that cannot be written: a file where a folder is needed
    (or the reverse), or a path under an existing file."""


class OutputLockedError(ElastigraphError, ValueError):
    """Another run holds the output folder (``--out``) or the step being claimed; the
    message names the holder's PID."""


class PairingError(ElastigraphError, ValueError):
    """A model and the data it is given do not fit each other (input channels or shape,
    number of outputs vs classes, label type, precision); the message names both sides."""


class DivergedError(ElastigraphError, ValueError):
    """Training steps of a recipe run diverged (NaN/inf loss) and the recipe does not say
    divergence is expected (``expect_divergence: true``). Raised after the run's results
    and report are written (they show those steps as diverged); ``summary`` holds the
    run's :class:`~elastigraph.recipes.runner.RunSummary`."""

    summary = None


class StepFailedError(ElastigraphError, RuntimeError):
    """A recipe step failed on every attempt the executor allowed (``--executor ray``: the
    task and its ``max_retries`` retries; a lost node, a crashed worker, an exception);
    the message names the step and its last error. Finished steps stay in the driver's
    cache: running the recipe again resumes from there."""
