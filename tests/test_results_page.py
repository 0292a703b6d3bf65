"""docs/results.md and the README's results block are generated from committed results
(issue 19, section 4): the generator's --check fails when either differs from what it
prints, so no number on the page can go stale without the suite failing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("make_results", ROOT / "docs" / "results" / "make_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_page_and_readme_block_are_up_to_date(capsys):
    assert _generator().main(["--check"]) == 0, capsys.readouterr().out


def test_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    gen = _generator()
    page = tmp_path / "results.md"
    page.write_text(gen.PAGE.read_text().replace("| n |", "| m |", 1) + "a stale line\n")
    readme = tmp_path / "README.md"
    readme.write_text(gen.README.read_text())
    monkeypatch.setattr(gen, "PAGE", page)
    monkeypatch.setattr(gen, "README", readme)
    assert gen.main(["--check"]) == 1
    gen.main([])  # rewriting fixes it
    assert gen.main(["--check"]) == 0
