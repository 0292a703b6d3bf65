"""Where a recipe's work runs: the executors of :class:`~elastigraph.recipes.execution.Execution`.

Two things vary between them, and nothing else does (a step's id, files and numbers are
the same whichever ran it):

- :meth:`Executor.submit`: running a piece of the protocol (a whole seed, a target's own
  IMP chain, a target, one of its levels, a baseline's mask, one retrain of a level) beside
  the caller, which later replays it and finds its steps in the cache;
- :meth:`Executor.compute`: computing one step's files and result into its cache folder.

:class:`InProcess` does everything in this process, one step after another.
:class:`LocalPool` (``--workers N``) runs the pieces in worker processes of this machine,
each pinned to its share of the cores (or one GPU), all reading and writing the one step
cache. :class:`RayExecutor` (``--executor ray``) runs the pieces in threads of the driver
and each step as a Ray task, sent as soon as the step before it in its piece is done,
with the resources it needs (its torch threads as CPUs, one GPU for a training on CUDA):
the step's input files travel through Ray's object store, its output files come back, and
the driver alone writes the step cache (the workers need no shared filesystem). A task
that fails is retried ``max_retries`` times, then the run stops naming the step; a rerun
resumes from the driver's cache.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from ..errors import ConfigError, ElastigraphError, StepFailedError
from ..io import atomic_write
from .cache import MARKER, StepRecord, _is_temp

if TYPE_CHECKING:
    from .execution import Execution, Steps

EXECUTORS = ("local", "ray")
"""The names ``elastigraph run --executor`` and ``run_recipe(executor=...)`` accept."""

RAY_INSTALL = "pip install 'elastigraph[ray]'"
KEPT_INPUTS = 64
"""How many steps' files the Ray executor keeps in the object store for the next tasks
that read them (a dense run's rewind weights feed every IMP level and baseline)."""


class Executor:
    """Runs everything in this process, one step after another (the base of the others)."""

    name = "in-process"

    @property
    def parallel(self) -> bool:
        """Whether :meth:`submit` runs pieces beside the caller (the protocol submits only then)."""
        return False

    def start(self, ex: "Execution") -> None:
        """Called when a run begins (``ex``: the run)."""

    def stop(self) -> None:
        """Called when the run ends, also on an error."""

    def submit(self, ex: "Execution", method: str, **kw: Any) -> Future:
        """Run ``ex.<method>(**kw)`` beside the caller; the future's result is the number
        of steps that piece executed (the caller counts them)."""
        raise NotImplementedError(f"the {self.name} executor runs no work beside the caller")

    def compute(self, ex: "Steps", sid: str, fn: Callable[[Path], dict[str, Any]], d: Path,
                inputs: Mapping[str, StepRecord | None], *, label: str, training: bool) -> dict[str, Any]:
        """Step ``sid``'s result, its files written into ``d``: here, ``fn(d)``."""
        return fn(d)

    def cuda(self, device: str | None) -> bool:
        """Whether trainings with ``device`` (a recipe's ``device``) run on CUDA."""
        return torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))

    def describe(self) -> str:
        return self.name


InProcess = Executor


# --------------------------------------------------------------------------- local worker processes


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _init_worker(counter: Any, n: int, threads: int, gpus: int) -> None:
    """Worker start-up: take the next index; pin to that share of the cores (or one GPU)."""
    with counter.get_lock():
        i = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
    cores = _cores()
    share = max(1, len(cores) // n)
    mine = cores[(i * share) % len(cores):][:share] or cores
    try:
        os.sched_setaffinity(0, mine)
    except (AttributeError, OSError):
        pass
    torch.set_num_threads(threads)


_WORKER_RUNNERS: dict[tuple[str, str], "Execution"] = {}


def _worker_job(cls: type, recipe: Any, out: str, cache: str, fleet: str, method: str, kw: dict[str, Any]) -> int:
    """Run ``cls(recipe, ...).method(**kw)`` in a worker process (one ``cls`` instance per
    cache, kept between jobs); returns the number of steps it executed."""
    key = (f"{cls.__module__}.{cls.__qualname__}", cache)
    runner = _WORKER_RUNNERS.get(key)
    if runner is None:
        runner = _WORKER_RUNNERS[key] = cls(recipe, out, cache=cache, fleet=fleet, workers=1)
    before = runner.executed
    getattr(runner, method)(**kw)
    return runner.executed - before


class LocalPool(Executor):
    """``workers`` worker processes on this machine (``None``: one per GPU or core when the
    trainings are long enough to pay for starting them; 1 or fewer: none, as
    :class:`InProcess`). Each is pinned to its share of the cores (or one GPU) and trains
    with ``threads // workers`` torch threads; the parent uses that count too, so a step's
    id and numbers do not depend on which process ran it."""

    name = "local"

    def __init__(self, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers={workers}: use a number >= 1, or None to choose automatically")
        self.workers = workers
        self._pool: Any = None
        self._parent_threads: int | None = None
        self._n = 1

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def start(self, ex: "Execution") -> None:
        n = self.workers if self.workers is not None else self._auto(ex)
        if n <= 1 or ex.world > 1:
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        gpus = torch.cuda.device_count() if ex._cuda() else 0
        threads = max(1, torch.get_num_threads() // n)
        # the thread count is part of every training step's key (CPU results depend on it):
        # the parent computes steps' ids and trains some steps itself, so it uses the
        # workers' count too -- a step's id and result do not depend on where it ran
        self._parent_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self._pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                         initargs=(counter, n, threads, gpus))
        self._n = n
        ex.log(f"[info] {n} worker processes ({'one GPU each' if gpus else f'{threads} thread(s) each, pinned'})")

    @staticmethod
    def _auto(ex: "Execution") -> int:
        """One worker per GPU on CUDA, per core on a CPU; 1 when the trainings are so
        short (< 50 steps) that starting processes would cost more than it saves."""
        from ..train import total_steps

        if ex.world > 1:
            return 1
        if total_steps(ex._config(0), len(ex.data().train)) < 50:
            return 1
        if ex._cuda():
            return max(1, torch.cuda.device_count())
        return max(1, min(8, len(_cores())))

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._parent_threads:
            torch.set_num_threads(self._parent_threads)
            self._parent_threads = None

    def submit(self, ex: "Execution", method: str, **kw: Any) -> Future:
        """``ex.<method>(**kw)`` in a worker process (an instance of ``type(ex)`` there, on the same cache)."""
        return self._pool.submit(_worker_job, type(ex), ex.recipe, str(ex.out), str(ex.cache.root), ex.fleet,
                                 method, kw)

    def describe(self) -> str:
        return f"{self._n} local worker processes" if self.parallel else self.name


# --------------------------------------------------------------------------- Ray


def _thread_submit(fn: Callable[[], Any], name: str) -> Future:
    """``fn()`` in a new daemon thread: pieces wait on pieces they submitted, so a bounded
    thread pool could deadlock; a thread waiting on Ray costs nothing."""
    fut: Future = Future()

    def job() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 -- handed to the waiting caller
            fut.set_exception(e)

    threading.Thread(target=job, name=name, daemon=True).start()
    return fut


# What a Ray worker sees of the driver: a step's closure is pickled with cloudpickle, with
# two objects replaced. A StepRecord becomes one whose folder is where its files were
# unpacked on the worker (never the driver's cache path, so a step that reads a file of
# a step it did not declare as an input fails there, loudly); the run (a Steps) becomes a
# copy without the driver's cache, log, progress bars, executor and loaded datasets.

_UNPACKED: dict[str, Path] = {}
"""On a Ray worker, during a task: step id -> the folder its shipped files were unpacked into."""
_LOG: list[str] = []
"""On a Ray worker, during a task: the step's log lines (sent back to the driver's log)."""


def _worker_log(line: str) -> None:
    _LOG.append(line)


def _shipped_record(sid: str, kind: str, result: dict[str, Any], inputs: dict[str, str]) -> StepRecord:
    d = _UNPACKED.get(sid)
    if d is None:
        d = Path(tempfile.gettempdir()) / "elastigraph-not-shipped" / sid  # never exists: reading it fails
    return StepRecord(sid, kind, d, result, cached=True, inputs=inputs)


def _shipped_run(cls: type, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _dumps(obj: Any) -> bytes:
    """``obj`` pickled for a Ray worker (see above)."""
    from ray import cloudpickle

    from .execution import Steps

    class Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, o: Any) -> Any:
            if type(o) is StepRecord:
                return _shipped_record, (o.id, o.kind, o.result, dict(o.inputs))
            if isinstance(o, Steps):
                state = {**o.__dict__, "cache": None, "log": _worker_log, "progress": None, "executor": InProcess(),
                         "_data": {}, "diverged_skips": []}
                if "lmc_rows" in state:
                    state["lmc_rows"] = []
                return _shipped_run, (type(o), state)
            return super().reducer_override(o)

    buf = io.BytesIO()
    Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _step_files(d: Path) -> dict[str, bytes]:
    """Every finished file under step folder ``d`` (relative path -> bytes); no marker, no temporaries."""
    return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*"))
            if f.is_file() and f.name != MARKER and not _is_temp(f.name)}


def _ray_step(payload: bytes, threads: int, sids: list[str], *blobs: dict[str, bytes]) -> dict[str, Any]:
    """A step on a Ray worker: unpack the input steps' files into a scratch folder, run
    the step's function with the driver's thread count into a fresh folder, and return
    its result, files and log lines. An error the user can fix is returned (it would
    fail the same way again), anything else raised (Ray retries it)."""
    torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="elastigraph-step-"))
    try:
        _UNPACKED.clear()
        _LOG.clear()
        for sid, files in zip(sids, blobs):
            for rel, data in files.items():
                f = scratch / "in" / sid / rel
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)
            _UNPACKED[sid] = scratch / "in" / sid
        fn = pickle.loads(payload)
        out = scratch / "out"
        out.mkdir()
        try:
            result = fn(out)
        except ElastigraphError as e:
            return {"error": e, "log": list(_LOG)}
        return {"result": result, "files": _step_files(out), "log": list(_LOG)}
    finally:
        _UNPACKED.clear()
        shutil.rmtree(scratch, ignore_errors=True)


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse at once a ``HOST:PORT`` address where nothing answers (Ray itself retries
    for minutes before it gives up)."""
    import socket

    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: Ray's own check applies
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"executor 'ray': nothing answers at {address!r} ({e.strerror or type(e).__name__}); start "
                          "the head there with `ray start --head`, or give its address (--address auto on the head "
                          "itself)") from None


class RayExecutor(Executor):
    """Every step a Ray task (see the module docstring). ``address``: the cluster to join
    (``"auto"``: the one ``ray start`` made on this machine; ``"HOST:6379"``: another one;
    ``None``: a Ray already initialised in this process, else ``ray.init()``'s own rule:
    ``RAY_ADDRESS``, a ``ray start`` cluster on this machine, or a new local Ray; a Ray this
    executor started is shut down when the run ends); ``max_retries``: how often a failed
    task is run again before the step is reported."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 2):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(f"executor 'ray' needs Ray, which is not installed: {RAY_INSTALL}") from None
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries={max_retries!r} (--max-retries): use a whole number >= 0")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(f"address={address!r}: use 'auto', a Ray address such as 'head:6379', "
                              "or leave it out")
        self.address = address
        self.max_retries = max_retries
        self._started = False
        self._task: Any = None
        self._refs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cpus = 0.0
        self._gpus = 0.0
        self._joined = False

    @property
    def parallel(self) -> bool:
        return self._task is not None

    def start(self, ex: "Execution") -> None:
        import ray

        if ex.world > 1:
            raise ConfigError("executor 'ray' runs every step as a Ray task: start the run once (not under torchrun)")
        if not ray.is_initialized():
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"at address {self.address!r}" if self.address else "locally"
                raise ConfigError(f"executor 'ray': could not start or join Ray {where}: {e}") from None
            self._started = True
        try:
            self._check_cluster(ex)
        except BaseException:
            self.stop()  # a Ray started here for nothing does not outlive the refusal
            raise
        self._task = ray.remote(_ray_step)
        threads = torch.get_num_threads()
        ex.log(f"[info] Ray: {self._cpus:g} CPU(s), {self._gpus:g} GPU(s); each step a task with {threads} CPU(s)"
               f"{', each training one GPU' if ex._cuda() else ''}, retried up to {self.max_retries} time(s)")

    def _check_cluster(self, ex: "Execution") -> None:
        """The cluster can run every step: enough CPUs for one, a GPU where trainings need one."""
        import ray

        res = ray.cluster_resources()
        self._cpus, self._gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        self._joined = True
        threads = torch.get_num_threads()
        if threads > self._cpus:
            raise ConfigError(
                f"executor 'ray': every step asks for {threads} CPU(s) (the run's torch threads) but the cluster "
                f"has {self._cpus:g}; run with OMP_NUM_THREADS={max(1, int(self._cpus))} or fewer, or add nodes")
        if ex._cuda() and not self._gpus:
            raise ConfigError(f"executor 'ray': recipe {ex.recipe.name!r} trains on CUDA (device "
                              f"{ex.recipe.device!r}) but the cluster has no GPU; set device: cpu or add GPU nodes")

    def stop(self) -> None:
        self._task = None
        self._joined = False
        with self._lock:
            self._refs.clear()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def submit(self, ex: "Execution", method: str, **kw: Any) -> Future:
        """``ex.<method>(**kw)`` in a thread of the driver, on a fork of the run that
        shares its cache and this executor (its steps go to Ray as they become ready)."""
        def piece() -> int:
            twin = ex._fork()
            getattr(twin, method)(**kw)
            return twin.executed

        return _thread_submit(piece, f"elastigraph {method}")

    def cuda(self, device: str | None) -> bool:
        """On the cluster: CUDA when the recipe asks for it, or leaves it to ``auto`` and the cluster has GPUs."""
        if device in (None, "auto"):
            if not self._joined:  # before start(): what this machine has
                return super().cuda(device)
            return self._gpus > 0
        return str(device).startswith("cuda")

    def _ref(self, rec: StepRecord) -> Any:
        """The object-store copy of ``rec``'s files: put once, kept for the :data:`KEPT_INPUTS`
        steps used last (Ray frees an object once no ref and no pending task holds it)."""
        import ray

        with self._lock:
            ref = self._refs.pop(rec.id, None)
            if ref is None:
                ref = ray.put(_step_files(rec.dir))
            self._refs[rec.id] = ref  # most recently used last
            while len(self._refs) > KEPT_INPUTS:
                del self._refs[next(iter(self._refs))]
            return ref

    def compute(self, ex: "Steps", sid: str, fn: Callable[[Path], dict[str, Any]], d: Path,
                inputs: Mapping[str, StepRecord | None], *, label: str, training: bool) -> dict[str, Any]:
        import ray
        from ray.exceptions import RayError

        if self._task is None:  # a piece still running after the run ended (another piece failed)
            raise StepFailedError(f"step {sid} ({label}): the Ray executor was stopped before it ran")
        recs = {r.id: r for r in inputs.values() if r is not None}
        threads = torch.get_num_threads()
        opts = {"num_cpus": threads, "num_gpus": 1 if training and ex._cuda() else 0, "name": sid,
                "max_retries": self.max_retries, "retry_exceptions": True}
        try:
            ref = self._task.options(**opts).remote(_dumps(fn), threads, list(recs),
                                                    *[self._ref(r) for r in recs.values()])
            out = ray.get(ref)
        except RayError as e:
            cause = getattr(e, "cause", None) or e
            first = (str(cause).strip().splitlines() or [""])[-1]
            raise StepFailedError(
                f"step {sid} ({label or 'no label'}) failed on Ray {self.max_retries + 1} time(s) "
                f"({self.max_retries} retries): {type(cause).__name__}: {first}. Finished steps are in the cache "
                f"{str(ex.cache.root)!r}; run the recipe again to resume from there") from e
        for line in out["log"]:
            ex.log(line)
        if "error" in out:
            raise out["error"]
        for rel, data in out["files"].items():
            atomic_write(d / rel, lambda tmp, data=data: Path(tmp).write_bytes(data))
        return out["result"]

    def describe(self) -> str:
        return f"ray ({self.address or 'local'})"


def make_executor(executor: "str | Executor" = "local", *, workers: int | None = None, address: str | None = None,
                  max_retries: int | None = None) -> Executor:
    """The executor a run asked for by name (:data:`EXECUTORS`), checking that the options
    fit it: ``workers`` is the local pool's, ``address`` and ``max_retries`` are Ray's."""
    if isinstance(executor, Executor):
        if workers is not None or address is not None or max_retries is not None:
            raise ConfigError("an Executor instance carries its own settings: leave workers, address and "
                              "max_retries out")
        return executor
    if not isinstance(executor, str) or executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} (--executor): use one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        if workers is not None:
            raise ConfigError(f"workers={workers} (--workers) sets the local pool's processes; with executor 'ray' Ray "
                              "places every step (each asks for the run's torch threads as CPUs): leave it out")
        return RayExecutor(address, 2 if max_retries is None else max_retries)
    if address is not None:
        raise ConfigError(f"address {address!r} (--address) is where the Ray executor finds its cluster: add "
                          "--executor ray (executor='ray') or leave the address out")
    if max_retries is not None:
        raise ConfigError(f"max_retries={max_retries} (--max-retries) is how often the Ray executor reruns a failed "
                          "step: add --executor ray (executor='ray') or leave it out")
    return LocalPool(workers) if workers != 1 else InProcess()
