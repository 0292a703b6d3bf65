"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test tensors are tiny and gain nothing from a second thread, while on a shared
    2-core machine an OpenMP barrier waiting for a descheduled thread makes steps up to
    100x slower. Tests that spawn torchrun workers set their own thread counts."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    # subprocesses (the CLI in kill/resume and lock tests) run with the same thread count:
    # it is part of every training step's cache key, so their results must be comparable
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()
    torch.set_num_threads(n)


def make_zip_bomb(path, inflated: int = 256 << 20) -> None:
    """A torch.save mask for cifar_resnet_14's ``conv.weight`` (right key, right shape)
    whose storage entry is deflated: ``inflated`` bytes in a file of ~1/1000 the size.
    Plain torch.load(weights_only=True) accepts it and inflates it all (issue 21)."""
    import io as _io
    import zipfile

    buf = _io.BytesIO()
    torch.save({"conv.weight": torch.ones(16, 3, 3, 3, dtype=torch.uint8)}, buf)
    src = zipfile.ZipFile(_io.BytesIO(buf.getvalue()))
    old = b"X\x03\x00\x00\x00cpuq\x06M\xb0\x01t"  # the storage's 432 entries ...
    new = b"X\x03\x00\x00\x00cpuq\x06J" + inflated.to_bytes(4, "little") + b"t"  # ... become `inflated`
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert old in data
                z.writestr(info.filename, data.replace(old, new))
            elif info.filename.endswith("data/0"):
                with z.open(info.filename, "w") as f:
                    chunk = b"\x01" * (1 << 20)
                    for _ in range(inflated >> 20):
                        f.write(chunk)
            else:
                z.writestr(info.filename, data)


@pytest.fixture(scope="session")
def zip_bomb(tmp_path_factory):
    """A 256 KiB torch.save mask file whose storage entry inflates to 256 MiB."""
    p = tmp_path_factory.mktemp("bomb") / "bomb.pth"
    make_zip_bomb(p)
    return p
