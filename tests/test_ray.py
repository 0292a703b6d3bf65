"""The Ray executor (issue 22): every step a Ray task on a local Ray (``ray.init(num_cpus=2)``,
started once for this module), the driver writing the cache. Shipped recipes in --smoke
give the records of the local run bit for bit; the cache it writes is the ordinary one
(a local rerun, or a rerun after the driver is killed, resumes from it); a step's inputs
reach the worker through Ray, not the driver's folder; failed tasks are retried, then
reported by step name; bad executor options are one clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from golden_runs import GOLDEN, ROOT, comparable, run_one
from tiny import tiny
from elastigraph import cli
from elastigraph.errors import ConfigError, StepFailedError
from elastigraph.recipes import load_recipe, run_recipe
from elastigraph.recipes.cache import MARKER, step_id
from elastigraph.recipes.execution import Execution
from elastigraph.recipes import executors
from elastigraph.recipes.executors import InProcess, LocalPool, RayExecutor, make_executor

HAVE_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() or bool(
    os.environ.get("FASHION_MNIST_ROOT"))
# two seeds, two targets, two levels (each runs side by side with its siblings), masks
# scored on data, the sparsity-matched IMP ticket and linear mode connectivity
TINY = tiny(seeds=[0, 1], baselines=["random", "snip", "imp", "imp-matched", "dense"], analyses=["lmc"],
            targets=[{"model": "cifar_resnet_20?width=4"},
                     {"model": "cifar_resnet_20?width=4", "strategy": "interpolate", "label": "R20-interpolate"}])
SMOKE = ["smoke:fmnist_elth_stretch", "smoke:fmnist_mlp_stretch"]  # every baseline; lmc + start_at_step_zero


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module (start-up costs seconds), shut down after it."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _records(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["records"]


def _results(out: Path) -> dict:
    """results.json but for the environment (which names this process's machine)."""
    return {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k != "environment"}


def _markers(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "steps").glob(f"*/{MARKER}")}


def _tensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


@pytest.fixture(scope="module")
def tiny_local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_recipe(load_recipe(TINY), out, workers=1, fleet="off")
    return out


# --------------------------------------------------------------------------- same numbers


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("name", SMOKE)
def test_shipped_smoke_recipes_through_ray_give_the_local_records(ray_local, name, tmp_path):
    """The records of the local run: the golden reference (tests/test_golden.py) where it
    applies (the same torch, the CPU, one thread), else a local run made here."""
    ref = json.loads(GOLDEN.read_text())
    stem = name.split(":", 1)[1]
    run_recipe(load_recipe(ROOT / "recipes" / f"{stem}.yaml", smoke=True), tmp_path / "ray", executor="ray",
               fleet="off")
    got = comparable(_records(tmp_path / "ray"))
    golden = (torch.__version__.split("+")[0] == ref["torch"].split("+")[0] and not torch.cuda.is_available()
              and torch.get_num_threads() == ref["threads"])
    want = ref["runs"][name] if golden else comparable(run_one(name, tmp_path / "local"))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g == w, (name, w)


def test_tiny_recipe_through_ray_is_the_local_run_step_for_step(ray_local, tiny_local, tmp_path):
    """The same step ids, the same tensors in every file, the same results.json; a local
    rerun on the Ray-made cache runs nothing (it is the ordinary cache)."""
    out = tmp_path / "ray"
    summary = run_recipe(load_recipe(TINY), out, executor="ray")
    assert _results(out) == _results(tiny_local)  # records, per-layer densities, LMC rows, in order
    assert _results(out)["lmc"]
    mine, theirs = _markers(out), _markers(tiny_local)
    assert set(mine) == set(theirs) and summary.executed == len(mine)
    for sid, m in mine.items():
        assert {k: v for k, v in m["result"].items() if k not in ("wall_s", "images_per_s")} == \
            {k: v for k, v in theirs[sid]["result"].items() if k not in ("wall_s", "images_per_s")}, sid
        assert set(m["files"]) == set(theirs[sid]["files"]), sid
        for rel in m["files"]:
            if rel.endswith(".safetensors"):  # bytes differ: safetensors writes a header map in hash order
                (a, ma), (b, mb) = _tensors(out / "steps" / sid / rel), _tensors(tiny_local / "steps" / sid / rel)
                assert ma == mb and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (sid, rel)
            else:
                assert m["files"][rel] == theirs[sid]["files"][rel], (sid, rel)
    again = run_recipe(load_recipe(TINY), out, workers=1)
    assert again.executed == 0 and _records(out) == _records(tiny_local)


def test_killed_driver_resumes_from_its_cache(ray_local, tmp_path):
    """A driver (the CLI, joining this module's Ray by address) killed with SIGKILL after
    some steps: the rerun through Ray takes exactly those from the cache and ends with
    the uninterrupted results."""
    small = tiny()  # one seed, one target, 12 steps
    run_recipe(load_recipe(small), tmp_path / "local", workers=1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(small))
    out = tmp_path / "killed"
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "elastigraph", "run", str(recipe), "--out", str(out), "--executor", "ray",
           "--address", address, "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900  # generous: a loaded 2-core CI machine starts the CLI and joins Ray slowly
    while len(_markers(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    finished = set(_markers(out))
    total = len(_markers(tmp_path / "local"))
    assert 3 <= len(finished) < total, f"the driver was not killed partway: {err.decode()[-2000:]}"
    assert not (out / "results.json").exists()
    summary = run_recipe(load_recipe(small), out, executor="ray")
    assert summary.executed == total - len(finished) and summary.skipped >= len(finished)
    assert _results(out) == _results(tmp_path / "local")


def test_divergence_through_ray_is_the_local_runs(ray_local, tmp_path):
    """Trainings that diverge on a worker: its [diverged] line reaches the driver's log,
    the dependent work is skipped as locally, and the run ends with the same
    DivergedError (its summary) and results.json."""
    import warnings

    from elastigraph.errors import DivergedError
    from elastigraph.train.loop import DivergenceWarning

    recipe = tiny(train={"steps": 6, "gamma": 1e30}, baselines=["random", "dense"])
    got: dict[str, DivergedError] = {}
    lines: list[str] = []
    for name, kw in [("local", {"workers": 1}), ("ray", {"executor": "ray", "log": lines.append})]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)
            with pytest.raises(DivergedError) as e:
                run_recipe(load_recipe(recipe), tmp_path / name, fleet="off", **kw)
        got[name] = e.value
    assert got["ray"].summary.diverged == got["local"].summary.diverged != []
    assert str(got["ray"]).replace(str(tmp_path / "ray"), "OUT") == str(got["local"]).replace(str(tmp_path / "local"), "OUT")
    assert _results(tmp_path / "ray") == _results(tmp_path / "local")
    assert any(ln.startswith("[diverged] train CifarResNet diverged: the loss is NaN/inf") for ln in lines)


# --------------------------------------------------------------------------- steps as tasks


def _probe(tmp_path: Path, **kw) -> Execution:
    ex = Execution(load_recipe(tiny()), tmp_path / "run", executor=RayExecutor(**kw))
    ex.executor.start(ex)
    return ex


def test_a_step_reads_its_inputs_through_ray_and_never_writes_the_cache(ray_local, tmp_path, monkeypatch):
    ex = _probe(tmp_path, max_retries=0)
    cache = str(ex.cache.root)

    def first(d: Path) -> dict:
        (d / "sub").mkdir()
        (d / "sub" / "x.txt").write_text("from the first step")
        return {"dir": str(d)}

    a = ex.step("probe", {"n": 1}, {}, first, label="first")
    assert not a.result["dir"].startswith(cache)  # the worker wrote into its own scratch folder
    assert (a.dir / "sub" / "x.txt").read_text() == "from the first step"  # the driver wrote the cache
    assert json.loads((a.dir / MARKER).read_text())["files"]["sub/x.txt"]["bytes"] == 19

    def second(d: Path) -> dict:
        return {"read": a.file("sub/x.txt").read_text(), "from": str(a.dir)}

    b = ex.step("probe", {"n": 2}, {"prev": a}, second, label="second")
    assert b.result["read"] == "from the first step" and not b.result["from"].startswith(cache)
    # inputs put into the object store are kept for the last KEPT_INPUTS steps only; an
    # evicted one is put again when a later step reads it
    monkeypatch.setattr(executors, "KEPT_INPUTS", 1)
    c = ex.step("probe", {"n": 4}, {"prev": b}, lambda d: {}, label="evicts a")
    assert list(ex.executor._refs) == [b.id]
    c = ex.step("probe", {"n": 5}, {"prev": a}, second, label="puts a again")
    assert list(ex.executor._refs) == [a.id] and c.result["read"] == "from the first step"
    # a step that reads a step it did not declare as an input fails on the worker (no
    # silent read of the driver's folder, which a real cluster's nodes do not have)
    with pytest.raises(StepFailedError, match=r"probe-\w+ \(undeclared\) failed on Ray 1 time\(s\).*FileNotFoundError"):
        ex.step("probe", {"n": 3}, {}, second, label="undeclared")
    ex.executor.stop()
    assert ray_local.is_initialized()  # the executor leaves a Ray it did not start running


def test_a_step_asks_for_the_runs_threads_as_cpus_and_trains_with_them(ray_local, tmp_path):
    def where(d: Path) -> dict:
        import ray

        return {"resources": ray.get_runtime_context().get_assigned_resources(), "threads": torch.get_num_threads()}

    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ex = _probe(tmp_path / str(threads))
            rec = ex.step("probe", {"threads": threads}, {}, where, label="where", collective=True)
            assert rec.result["resources"] == {"CPU": float(threads)} and rec.result["threads"] == threads
            ex.executor.stop()
        torch.set_num_threads(3)
        with pytest.raises(ConfigError, match=r"every step asks for 3 CPU\(s\).*the cluster has 2.*OMP_NUM_THREADS=2"):
            _probe(tmp_path / "3")
    finally:
        torch.set_num_threads(n)


def test_failed_tasks_are_retried_then_reported_by_step_name(ray_local, tmp_path):
    ex = _probe(tmp_path, max_retries=2)
    tries = tmp_path / "tries"  # instrumentation outside the cache: one line per attempt
    tries.mkdir()

    def flaky(d: Path) -> dict:
        n = len(list(tries.iterdir()))
        (tries / str(n)).touch()
        if n < 2:
            raise RuntimeError(f"attempt {n} lost its node")
        return {"attempts": n + 1}

    assert ex.step("probe", {"n": 1}, {}, flaky, label="flaky").result["attempts"] == 3

    def broken(d: Path) -> dict:
        (tries / f"b{len(list(tries.iterdir()))}").touch()
        raise RuntimeError("always")

    before = len(list(tries.iterdir()))
    with pytest.raises(StepFailedError, match=r"step probe-\w+ \(source IMP level=7\) failed on Ray 3 time\(s\) "
                                              r"\(2 retries\): RuntimeError: always"):
        ex.step("probe", {"n": 2}, {}, broken, label="source IMP level=7")
    assert len(list(tries.iterdir())) - before == 3
    assert not ex.cache.done(step_id("probe", {"n": 2}, {}))  # nothing recorded for it

    def wrong(d: Path) -> dict:
        (tries / f"w{len(list(tries.iterdir()))}").touch()
        raise ConfigError("prune.rewind_step=9 lies beyond the 2 training steps")

    before = len(list(tries.iterdir()))
    with pytest.raises(ConfigError, match="rewind_step=9"):  # the user's error, as itself, tried once
        ex.step("probe", {"n": 3}, {}, wrong, label="wrong")
    assert len(list(tries.iterdir())) - before == 1
    ex.executor.stop()


# --------------------------------------------------------------------------- options


def test_executor_options_are_checked(tmp_path, monkeypatch):
    assert isinstance(make_executor("local", workers=1), InProcess)
    assert isinstance(make_executor("local"), LocalPool)
    with pytest.raises(ConfigError, match="executor 'slurm' \\(--executor\\): use one of local, ray"):
        make_executor("slurm")
    with pytest.raises(ConfigError, match="address 'auto' \\(--address\\).*add --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(ConfigError, match="max_retries=3 \\(--max-retries\\).*add --executor ray"):
        make_executor("local", max_retries=3)
    with pytest.raises(ConfigError, match="workers=2 \\(--workers\\).*leave it out"):
        make_executor("ray", workers=2)
    with pytest.raises(ConfigError, match="workers=0"):
        run_recipe(load_recipe(TINY), tmp_path, workers=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(ConfigError, match=r"^executor 'ray' needs Ray, which is not installed: "
                                          r"pip install 'elastigraph\[ray\]'$"):
        run_recipe(load_recipe(TINY), tmp_path, executor="ray")


def test_ray_options_need_ray(tmp_path):
    pytest.importorskip("ray")
    from elastigraph.recipes.executors import _check_reachable

    with pytest.raises(ConfigError, match="nothing answers at '127.0.0.1:1'.*ray start --head"):
        _check_reachable("127.0.0.1:1")  # refused at once, not after Ray's minutes of retrying
    with pytest.raises(ConfigError, match="fleet='on'.*executor 'ray'"):
        run_recipe(load_recipe(TINY), tmp_path, executor="ray", fleet="on")
    with pytest.raises(ConfigError, match="max_retries=-1"):
        make_executor("ray", max_retries=-1)


def test_cli_shows_and_checks_the_executor(capsys, tmp_path, monkeypatch):
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--executor" in out and "--address" in out and "--max-retries" in out and "elastigraph[ray]" in out
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    for args, msg in [(["--executor", "slurm"], "error: executor 'slurm' (--executor): use one of local, ray"),
                      (["--address", "auto"], "error: address 'auto' (--address) is where the Ray executor")]:
        assert cli.main(["run", str(recipe), "--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(msg) and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "o"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: executor 'ray' needs Ray, which is not installed: pip install 'elastigraph[ray]'"
