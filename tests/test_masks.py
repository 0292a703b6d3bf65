"""Mask files (safetensors, open_lth mask.pth), safe loading and sparsity reports."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from elastigraph import masks
from elastigraph.errors import MaskError, MaskTypeError


def _mask() -> masks.Mask:
    # Keys deliberately not in sorted order: the file must keep the order.
    g = torch.Generator().manual_seed(0)
    return {
        "z.weight": torch.rand(4, 3, generator=g) > 0.5,
        "a.weight": torch.rand(2, 2, 3, 3, generator=g) > 0.3,
        "m.bias": torch.tensor([True, False, True]),
    }


def _same(a: masks.Mask, b: masks.Mask) -> None:
    assert list(a) == list(b)
    for k in a:
        assert b[k].dtype == torch.bool
        assert torch.equal(a[k], b[k]), k


def test_safetensors_round_trip_bool_exact(tmp_path):
    m = _mask()
    p = tmp_path / "ticket.safetensors"
    masks.save_mask(m, p)
    _same(m, masks.load_mask(p))
    _same(m, masks.read_mask(p))


def test_save_accepts_numeric_01_and_returns_bool(tmp_path):
    m = {"w": torch.tensor([[1, 0], [0, 1]], dtype=torch.int32), "v": torch.tensor([0.0, 1.0])}
    masks.save_mask(m, tmp_path / "m.safetensors")
    out = masks.load_mask(tmp_path / "m.safetensors")
    assert torch.equal(out["w"], torch.tensor([[True, False], [False, True]]))
    assert torch.equal(out["v"], torch.tensor([False, True]))


def test_metadata_round_trip(tmp_path):
    m = {"w": torch.tensor([True, False, False, False])}
    p = tmp_path / "m.safetensors"
    masks.save_mask(m, p, metadata={"model": "cifar_resnet_20", "level": 3, "rewind": [1000, "steps"]})
    meta = masks.mask_metadata(p)
    assert meta == {
        "format_version": masks.MASK_FORMAT_VERSION,
        "sparsity": 0.75,
        "metadata": {"model": "cifar_resnet_20", "level": 3, "rewind": [1000, "steps"]},
    }


def test_save_is_atomic_and_validates_first(tmp_path, monkeypatch):
    p = tmp_path / "m.safetensors"
    masks.save_mask({"w": torch.tensor([True, False])}, p)
    before = p.read_bytes()
    with pytest.raises(MaskError, match="'w'.*not binary"):
        masks.save_mask({"w": torch.tensor([0.0, 0.5])}, p)
    with pytest.raises(MaskTypeError, match="JSON"):
        masks.save_mask({"w": torch.tensor([True])}, p, metadata={"x": object()})

    def broken(tensors, filename, metadata=None):  # dies halfway through writing
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(masks._st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        masks.save_mask({"w": torch.tensor([False, False])}, p)
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temp file left behind


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        masks.save_mask({"w": torch.tensor([True])}, tmp_path / "nope" / "m.safetensors")


def test_open_lth_mask_pth(tmp_path):
    # open_lth's Mask.save: torch.save({k: v.int()}) keyed by state_dict names.
    ref = {"fc.weight": torch.tensor([[1, 0, 1], [0, 0, 1]]), "conv.weight": torch.ones(2, 1, 3, 3)}
    p = tmp_path / "mask.pth"
    torch.save({k: v.int() for k, v in ref.items()}, p)
    out = masks.load_lth_mask(p)
    assert list(out) == ["fc.weight", "conv.weight"]
    assert torch.equal(out["fc.weight"], ref["fc.weight"].bool())
    assert out["conv.weight"].dtype == torch.bool and bool(out["conv.weight"].all())
    _same(out, masks.read_mask(p))
    # float 0/1 tensors, and the content (not the suffix) decides the reader
    q = tmp_path / "mask.safetensors"
    torch.save({"fc.weight": ref["fc.weight"].float()}, q)
    assert torch.equal(masks.read_mask(q)["fc.weight"], ref["fc.weight"].bool())
    with pytest.raises(MaskTypeError, match="load_lth_mask"):
        masks.load_mask(q)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, writer):
    marker = tmp_path / "pwned"
    p = tmp_path / "mask.pth"
    payload = {"fc.weight": torch.ones(2, 2), "x": _Evil(str(marker))}
    if writer == "torch.save":
        torch.save(payload, p)
    else:
        with open(p, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    for reader in (masks.load_lth_mask, masks.read_mask):
        with pytest.raises(MaskTypeError, match="refused") as e:
            reader(p)
        assert str(p) in str(e.value)
        assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    if writer == "pickle.dump":
        with open(p, "rb") as f:
            pickle.load(f)
        assert marker.is_dir()


def test_bad_files(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a mask file at all")
    for reader in (masks.read_mask, masks.load_mask):
        with pytest.raises(MaskTypeError, match="safetensors") as e:
            reader(junk)
        assert str(junk) in str(e.value)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(MaskTypeError, match="no format"):
        masks.read_mask(empty)
    zipjunk = tmp_path / "trunc.pth"
    torch.save({"w": torch.ones(3)}, zipjunk)
    zipjunk.write_bytes(zipjunk.read_bytes()[:60])
    with pytest.raises(MaskTypeError, match="not a readable torch.save file"):
        masks.load_lth_mask(zipjunk)
    nonbin = tmp_path / "nonbin.pth"
    torch.save({"w": torch.tensor([0.0, 0.3])}, nonbin)
    with pytest.raises(MaskError, match="'w'.*not binary"):
        masks.read_mask(nonbin)
    notdict = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), notdict)
    with pytest.raises(MaskTypeError, match="holds a Tensor"):
        masks.read_mask(notdict)
    with pytest.raises(FileNotFoundError, match="missing"):
        masks.read_mask(tmp_path / "missing.pth")


def test_newer_format_version_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "future.safetensors"
    save_file({"w": torch.ones(2, dtype=torch.bool)}, str(p), metadata={"elastigraph.format_version": "99"})
    with pytest.raises(MaskTypeError, match="version '99'"):
        masks.load_mask(p)


def test_foreign_safetensors_of_01_tensors(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.tensor([1.0, 0.0, 1.0])}, str(p))
    assert torch.equal(masks.read_mask(p)["w"], torch.tensor([True, False, True]))
    assert masks.mask_metadata(p) == {"format_version": None, "sparsity": None, "metadata": {}}


def test_report_numbers_on_hand_made_mask():
    m = {
        "a.weight": torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool),  # 4 / 6
        "b.weight": torch.tensor([0, 0, 0, 1], dtype=torch.bool),  # 1 / 4
    }
    r = masks.sparsity_report(m)
    assert [(x.name, x.shape, x.numel, x.kept) for x in r.rows] == [
        ("a.weight", (2, 3), 6, 4),
        ("b.weight", (4,), 4, 1),
    ]
    assert r.rows[0].density == pytest.approx(4 / 6) and r.rows[1].sparsity == 0.75
    assert (r.numel, r.kept, r.density, r.sparsity) == (10, 5, 0.5, 0.5)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["numel"] == 10 and d["kept"] == 5 and d["sparsity"] == 0.5 and d["not_in_mask"] == []
    assert d["layers"][1] == {"name": "b.weight", "shape": [4], "numel": 4, "kept": 1, "density": 0.25, "in_mask": True}
    table = r.__rich__()
    assert isinstance(table, Table) and table.row_count == 2
    text = str(r)
    assert "a.weight" in text and "66.67%" in text and "50.00%" in text


def test_report_with_model_counts_missing_prunable_as_dense():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4))
    m = {"0.weight": torch.tensor([[1, 0, 0], [0, 0, 1]])}  # 2 of 6 kept
    r = masks.sparsity_report(m, model)
    assert [(x.name, x.kept, x.numel, x.in_mask) for x in r.rows] == [
        ("0.weight", 2, 6, True),
        ("2.weight", 8, 8, False),
    ]
    assert (r.numel, r.kept) == (14, 10)
    assert r.not_in_mask == ["2.weight"]
    assert r.to_dict()["model"] == "Sequential"
    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(r)
    out = console.export_text()
    assert "not in the mask, counted as dense" in out and "2.weight *" in out
    with pytest.raises(MaskError, match="'1.weight' is not a parameter"):
        masks.sparsity_report({"1.weight": torch.ones(2, 2)}, model)


def test_check_mask_still_names_non_binary_key():
    model = nn.Linear(2, 2)
    with pytest.raises(MaskError, match="'weight' for Linear is not binary"):
        masks.check_mask(model, {"weight": torch.full((2, 2), 2.0)})
    out = masks.check_mask(model, {"weight": torch.eye(2)})
    assert out["weight"].dtype == torch.bool


def test_copy_model_with_installed_masks():
    import copy

    model = nn.Linear(3, 2)
    masks.install(model, {"weight": torch.tensor([[1, 0, 1], [0, 1, 1]])})
    with pytest.raises(RuntimeError):  # why copy_model exists
        copy.deepcopy(model)
    before = model.weight.clone()
    twin = masks.copy_model(model)
    x = torch.randn(4, 3)
    assert torch.equal(twin(x), model(x))
    assert torch.equal(masks.from_model(twin)["weight"], masks.from_model(model)["weight"])
    with torch.no_grad():
        twin.weight_orig.add_(1.0)
    assert torch.equal(model.weight, before)  # independent copy; original untouched


def test_remove_zeroes_pruned_entries_even_if_orig_is_nan():
    """A diverged run can leave NaN in weight_orig; the pruned entries must still be 0."""
    net = torch.nn.Linear(3, 2)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    masks.install(net, {"weight": keep})
    with torch.no_grad():
        net.weight_orig.fill_(float("nan"))
    masks.remove(net)
    assert torch.equal(net.weight[~keep], torch.zeros(int((~keep).sum())))
    assert torch.isnan(net.weight[keep]).all()


def test_plain_state_folds_or_keeps_raw_values():
    net = torch.nn.Linear(3, 2)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    masks.install(net, {"weight": keep})
    with torch.no_grad():
        net.weight_orig.copy_(torch.arange(6.0).view(2, 3) + 1)
        net.weight_orig[0, 1] = float("nan")  # under the mask: must not leak when folded
    raw = masks.plain_state(net.state_dict(), fold_mask=False)
    folded = masks.plain_state(net.state_dict())
    assert list(raw) == list(folded) == ["bias", "weight"]
    assert torch.isnan(raw["weight"][0, 1]) and raw["weight"][1, 0] == 4.0
    assert torch.equal(folded["weight"], torch.tensor([[1.0, 0.0, 3.0], [0.0, 5.0, 6.0]]))
