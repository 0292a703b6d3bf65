"""Numbers do not move (issue 17): every shipped recipe in --smoke mode and one small real
run give the results.json records that main gave before the redesign, bit for bit, on one
thread. The reference, tests/golden/records.json, was made by tests/golden/make_golden.py
on main at f342849 with torch 2.14.1 (CPU); on another torch build or device the float
results may differ legitimately, so the test runs only where the reference was made."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from golden_runs import GOLDEN, comparable, run_one

HAVE_FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() or bool(
    os.environ.get("FASHION_MNIST_ROOT"))
REF = json.loads(GOLDEN.read_text())

pytestmark = [
    pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed"),
    pytest.mark.skipif(torch.__version__.split("+")[0] != REF["torch"].split("+")[0],
                       reason=f"reference made with torch {REF['torch']}"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="reference made on the CPU"),
]


@pytest.mark.parametrize("name", sorted(REF["runs"]))  # the recipes the reference was made of
def test_records_match_the_reference(name, tmp_path):
    assert torch.get_num_threads() == REF["threads"]
    got = comparable(run_one(name, tmp_path))
    want = REF["runs"][name]
    assert len(got) == len(want), name
    for g, w in zip(got, want):
        assert g == w, (name, w)
