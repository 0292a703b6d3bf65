"""Datasets from local files: idx parsing, CIFAR pickles through the restricted
unpickler, ImageFolder, balanced subsets, the synthetic set, and the errors a user
gets when data is missing."""

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from elastigraph.errors import DatasetError
from elastigraph.train import ArrayDataset, FolderDataset, TrainConfig, balanced_subset, load_dataset, synthetic, train
from elastigraph.train.data import DEFAULT_FASHION_MNIST_DIR


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(data)


def fake_fashion(folder: Path, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 5, 5), dtype=np.uint8)
    y = np.arange(12, dtype=np.uint8) % 10
    ext = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y, gz)
    return x, y


def test_fashion_mnist_idx_from_torchvision_style_root(tmp_path):
    x, y = fake_fashion(tmp_path / "FashionMNIST" / "raw")
    ds = load_dataset("fashion_mnist", root=str(tmp_path), split="test")
    assert isinstance(ds, ArrayDataset)
    assert ds.x.dtype == torch.uint8 and ds.x.shape == (12, 1, 5, 5)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(x)) and torch.equal(ds.y, torch.from_numpy(y).long())
    assert ds.spec.name == "fashion_mnist" and ds.spec.in_chans == 1 and ds.spec.num_classes == 10
    assert ds.spec.image_size == 5


def test_fashion_mnist_env_root_and_plain_files(tmp_path, monkeypatch):
    x, _ = fake_fashion(tmp_path, gz=False)
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(tmp_path))
    ds = load_dataset("fashion_mnist")
    assert torch.equal(ds.x[:, 0], torch.from_numpy(x))


def test_missing_fashion_mnist_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion_mnist", root=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "nowhere" in msg and "train-images-idx3-ubyte" in msg


def test_truncated_idx_file_is_a_dataset_error(tmp_path):
    fake_fashion(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.open(p).read()
    gzip.open(p, "wb").write(data[:-7])
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("fashion_mnist", root=str(tmp_path))


@pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_balanced_slice():
    full = load_dataset("fashion_mnist", split="test")
    assert full.x.shape == (10000, 1, 28, 28) and torch.bincount(full.y).tolist() == [1000] * 10
    part = load_dataset("fashion_mnist", split="test", limit=200, seed=3)
    assert part.x.shape == (200, 1, 28, 28) and torch.bincount(part.y).tolist() == [20] * 10
    idx = balanced_subset(full.y, 200, seed=3)
    assert torch.equal(part.x, full.x[idx]) and torch.equal(part.y, full.y[idx])
    assert not torch.equal(idx, balanced_subset(full.y, 200, seed=4))


def test_balanced_subset_on_unbalanced_labels():
    y = torch.tensor([0] * 90 + [1] * 10 + [2] * 3)
    idx = balanced_subset(y, 21, seed=0)
    assert torch.bincount(y[idx], minlength=3).tolist() == [9, 9, 3]
    assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == 21
    assert torch.equal(balanced_subset(y, 21, seed=0), idx)
    assert torch.equal(balanced_subset(y, 500), torch.arange(103))


def _write_cifar(folder: Path, files: list[str], label_key: bytes, classes: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for f in files:
        batch = {b"batch_label": b"fake", b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                 label_key: [int(v) for v in rng.integers(0, classes, 6)], b"filenames": [b"x.png"] * 6}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def test_cifar10_and_cifar100_from_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                 b"labels", 10)
    _write_cifar(tmp_path / "cifar-100-python", ["train", "test"], b"fine_labels", 100)
    tr = load_dataset("cifar10", root=str(tmp_path))
    te = load_dataset("cifar10", root=str(tmp_path), split="test")
    assert tr.x.shape == (30, 3, 32, 32) and te.x.shape == (6, 3, 32, 32)
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))
    assert torch.equal(te.x, torch.from_numpy(raw[b"data"].reshape(6, 3, 32, 32)))
    assert te.y.tolist() == raw[b"labels"] and te.spec.num_classes == 10
    c100 = load_dataset("cifar100", root=str(tmp_path), split="test")
    assert c100.spec.num_classes == 100 and c100.x.shape == (6, 3, 32, 32)


def test_cifar_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pickle.dump({"data": Evil(), "labels": [0]}, open(folder / "test_batch", "wb"), protocol=2)
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        load_dataset("cifar10", root=str(tmp_path), split="test")
    assert not marker.exists()


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*cifar-10-batches-py"):
        load_dataset("cifar10", root=str(tmp_path))


def test_synthetic_is_seeded_and_learnable_by_class_means():
    a, b = synthetic(200, (1, 8, 8), 4, seed=0), synthetic(200, (1, 8, 8), 4, seed=0)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    te = synthetic(200, (1, 8, 8), 4, seed=0, split="test")
    assert not torch.equal(a.x, te.x)
    # nearest class mean (from train) classifies the test split far above chance (0.25)
    means = torch.stack([a.x[a.y == c].float().mean(0) for c in range(4)])
    pred = torch.cdist(te.x.float().flatten(1), means.flatten(1)).argmin(1)
    assert (pred == te.y).float().mean() > 0.9
    assert load_dataset("synthetic", limit=64).x.shape == (64, 1, 28, 28)


def _write_imagefolder(root: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 2)):
        for c, level in (("cat", 40), ("dog", 200)):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                img = (level + torch.randint(0, 30, (10, 12, 3), generator=g)).to(torch.uint8)
                Image.fromarray(img.numpy()).save(d / f"{i}.png")


def test_imagefolder_loads_and_trains_through_dataloader(tmp_path):
    _write_imagefolder(tmp_path)
    tr = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    te = load_dataset(f"imagefolder:{tmp_path}", split="test", image_size=8)
    assert isinstance(tr, FolderDataset) and len(tr) == 12 and len(te) == 4
    assert tr.spec.num_classes == 2 and tr.spec.image_size == 8 and tr.y.tolist() == [0] * 6 + [1] * 6
    x, label = te[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8) and label == 0
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    res = train(model, tr, te, TrainConfig(steps=2, batch_size=4))
    assert res.steps == 2 and 0.0 <= res.test_acc <= 1.0 and len(res.history) == 1
    assert len(load_dataset(f"imagefolder:{tmp_path}", limit=4)) == 4


def test_imagefolder_and_name_errors(tmp_path):
    with pytest.raises(DatasetError, match="train/<class>/<image>"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="split"):
        load_dataset("synthetic", split="dev")
