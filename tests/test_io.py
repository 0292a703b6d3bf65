"""elastigraph/io.py (issue 21): the one atomic writer that the cache, masks and
reports share, and the bounded JSON/YAML readers behind Plan.from_json, write_report,
``elastigraph report`` and the cache markers."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from elastigraph import errors, io, masks, models
from elastigraph.recipes import cache
from elastigraph.report import load_results, write_report
from elastigraph.transfer import Plan


def test_atomic_write_replaces_and_uses_normal_permissions(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    io.atomic_write(p, lambda tmp: open(tmp, "w").write("one"))
    io.atomic_write(p, lambda tmp: open(tmp, "w").write("two"))
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def _boom(*a, **k):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("writer", ["write_json", "save_tensors", "save_mask", "plot"])
def test_every_writer_goes_through_atomic_write(writer, tmp_path, monkeypatch):
    """A failing rename (disk full at the last moment) leaves the old file as it was and
    no temporary file, for each of the writers io.atomic_write replaced."""
    net = models.create("cifar_resnet_14")
    path = tmp_path / {"write_json": "a.json", "save_tensors": "a.safetensors", "save_mask": "m.safetensors",
                       "plot": "a.png"}[writer]
    path.write_bytes(b"old")

    def write():
        if writer == "write_json":
            cache.write_json(path, {"a": 1})
        elif writer == "save_tensors":
            cache.save_tensors(path, {"a": torch.ones(2)})
        elif writer == "save_mask":
            masks.save_mask(masks.full_mask(net), path)
        else:
            import matplotlib

            matplotlib.use("Agg", force=True)
            import matplotlib.pyplot as plt

            from elastigraph.report import _save_fig

            _save_fig(plt.figure(), path)

    monkeypatch.setattr(io.os, "replace", _boom)
    with pytest.raises(OSError, match="No space"):
        write()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == [path.name]
    monkeypatch.undo()
    write()
    assert path.read_bytes() != b"old" and os.listdir(tmp_path) == [path.name]


def test_load_json_bounds():
    assert io.load_json('{"a": "[[[{{{", "b": [1, [2]]}', "x") == {"a": "[[[{{{", "b": [1, [2]]}
    assert io.load_json('{"a": "\\"[["}', "x") == {"a": '"[['}  # an escaped quote does not end the string
    nested = "[" * 64 + "]" * 64
    assert io.load_json(nested, "x") is not None
    with pytest.raises(ValueError, match="x nests arrays/objects deeper than 64"):
        io.load_json("[" + nested + "]", "x")
    with pytest.raises(ValueError, match="deeper than"):
        io.load_json("[" * 1_000_000, "x")
    with pytest.raises(ValueError, match="limit is 10"):
        io.load_json("[" + "1," * 10 + "1]", "x", max_bytes=10)
    with pytest.raises(errors.ReportError, match="not UTF-8"):
        io.load_json(b"\xff\xfe", "x", error=errors.ReportError)


def test_yaml_reader_moved_but_still_importable_from_schema():
    from elastigraph.recipes import schema

    assert schema.load_yaml is io.load_yaml and schema.MAX_YAML_NODES == io.MAX_YAML_NODES
    with pytest.raises(ValueError, match="nesting deeper"):
        io.load_yaml("[" * 200 + "]" * 200, "x")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 20_000 + "1" + "}" * 20_000,
                                  "[" * 1_000_000])
def test_nested_json_is_a_named_error_everywhere(text, tmp_path):
    """Plan.from_json, load_results/write_report and the cache's marker check: a clear
    error (or, for the cache, a step to redo), never RecursionError."""
    with pytest.raises(errors.MappingError, match="deeper than"):
        Plan.from_json(text)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"records": ' + text + "}")
    for f in (load_results, write_report):
        with pytest.raises(errors.ReportError, match="deeper than"):
            f(run)
    c = cache.StepCache(tmp_path / "steps")
    (c.dir("train-0") / "").mkdir(parents=True)
    (c.dir("train-0") / cache.MARKER).write_text(text)
    assert "not JSON" in c.problem("train-0") or "deeper" in c.problem("train-0")


def test_plan_json_round_trip_still_works():
    import elastigraph as eg

    src, dst = models.create("cifar_resnet_14"), models.create("cifar_resnet_20")
    plan = eg.transfer(src, masks.full_mask(src), dst).plan
    assert Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()
    assert json.loads(plan.to_json())["dst"] == plan.dst
