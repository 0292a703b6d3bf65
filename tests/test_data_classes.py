"""Class-split datasets (``fashion_mnist?classes=0-4``): the rows of those classes only,
relabelled 0..k-1, so a target can be trained on another task (E-LTH Table 6)."""

import pytest
import torch

from elastigraph.errors import DatasetError
from elastigraph.train.data import load_dataset, parse_classes, synthetic, select_classes


def test_parse_classes():
    assert parse_classes("0-4") == [0, 1, 2, 3, 4]
    assert parse_classes("7,0,2-3") == [7, 0, 2, 3]
    for bad, msg in (("a-b", "not a list"), ("4-0", "backwards"), ("1,1", "twice")):
        with pytest.raises(DatasetError, match=msg):
            parse_classes(bad)


def test_select_classes_keeps_and_relabels_rows():
    ds = synthetic(200, num_classes=10, seed=3)
    sub = select_classes(ds, [5, 6, 7, 8, 9], "synthetic?classes=5-9")
    keep = ds.y >= 5
    assert len(sub) == int(keep.sum()) and sub.spec.num_classes == 5
    assert torch.equal(sub.y, ds.y[keep] - 5) and torch.equal(sub.x, ds.x[keep])
    assert sub.spec.name == "synthetic?classes=5-9"
    with pytest.raises(DatasetError, match=r"classes \[10\] do not exist"):
        select_classes(ds, [9, 10], "x")
    with pytest.raises(DatasetError, match="at least 2 classes"):
        select_classes(ds, [3], "x")


def test_load_dataset_class_split_by_name():
    full = load_dataset("synthetic", split="test")
    lo = load_dataset("synthetic?classes=0-4", split="test")
    hi = load_dataset("synthetic?classes=5-9", split="test")
    assert lo.spec.num_classes == hi.spec.num_classes == 5
    assert len(lo) + len(hi) == len(full)
    assert torch.equal(hi.y, full.y[full.y >= 5] - 5)
    limited = load_dataset("synthetic?classes=5-9", split="test", limit=20)
    assert len(limited) == 20 and sorted(set(limited.y.tolist())) == [0, 1, 2, 3, 4]
    with pytest.raises(DatasetError, match="unknown option"):
        load_dataset("synthetic?labels=0-4")


def test_fashion_mnist_split_when_installed():
    try:
        ds = load_dataset("fashion_mnist?classes=0-4", split="test")
    except DatasetError:
        pytest.skip("Fashion-MNIST not installed")
    assert len(ds) == 5000 and ds.spec.num_classes == 5 and set(ds.y.tolist()) == {0, 1, 2, 3, 4}
