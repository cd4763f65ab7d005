"""Image data sets (real Fashion-MNIST from Debian's package, CIFAR on fabricated files), the offline
error, the CIFAR unpickler's restrictions, and batch augmentation."""
from __future__ import annotations

import os
import pickle
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import data as D
from trainables.data import (
    DATASETS,
    DataUnavailable,
    Splits,
    augment_batch,
    batches,
    load_splits,
)

# ---------------------------------------------------------------------------------------------
# Fabricated CIFAR files, byte for byte in the shape of the real ones
# ---------------------------------------------------------------------------------------------

def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _py2_uint8_array(a: np.ndarray) -> bytes:
    """A uint8 2-D array as Python 2's numpy pickled it (what the real ``data`` entries are)."""
    assert a.dtype == np.uint8 and a.ndim == 2
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
            + b"\x87R" + b"(" + _py2_int(1) + _py2_int(a.shape[0]) + _py2_int(a.shape[1]) + b"\x86"
            + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
            + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + _py2_int(0)
            + b"tb" + b"\x89" + _py2_str(np.ascontiguousarray(a).tobytes()) + b"tb")


def write_cifar_batch(path: Path, data: np.ndarray, labels: dict[str, list[int]], batch_label: str) -> None:
    """Write a CIFAR python batch as the real files are: a Python 2 cPickle (protocol 2) dict of
    str keys -> batch_label str, label lists of ints, ``data`` uint8 N x 3072, ``filenames`` strs."""
    n = len(data)
    items = [(b"data", _py2_uint8_array(data)), (b"batch_label", _py2_str(batch_label.encode()))]
    for key, vals in labels.items():
        items.append((key.encode(), b"](" + b"".join(_py2_int(v) for v in vals) + b"e"))
    items.append((b"filenames", b"](" + b"".join(_py2_str(f"img_{i}.png".encode()) for i in range(n)) + b"e"))
    body = b"".join(_py2_str(k) + v for k, v in items)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x02}(" + body + b"u.")


RED = (255, 0, 0)


def make_cifar(root: Path, kind: str, n_per_file: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """Fabricate ``cifar10`` (5 train batches + test) or ``cifar100`` (train + test) under ``root``;
    image 0 of the first file is pure red.  Returns the raw uint8 data and labels written."""
    rng = np.random.default_rng(seed)
    files = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if kind == "cifar10" else ["train", "test"])
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    xs, ys = {}, {}
    for j, f in enumerate(files):
        n = n_per_file * (5 if kind == "cifar100" and f == "train" else 1)
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        if j == 0:
            img = np.zeros((3, 32, 32), np.uint8)
            img[0] = 255  # red plane only
            x[0] = img.reshape(-1)
        if kind == "cifar10":
            y = rng.integers(0, 10, n).tolist()
            labels = {"labels": y}
        else:
            y = rng.integers(0, 100, n).tolist()
            labels = {"fine_labels": y, "coarse_labels": [v // 5 for v in y]}
        write_cifar_batch(folder / f, x, labels, f"batch {f}")
        xs[f], ys[f] = x, np.asarray(y)
    train = files[:-1]
    return {"x": np.concatenate([xs[f] for f in train]), "y": np.concatenate([ys[f] for f in train]),
            "x_test": xs[files[-1]], "y_test": ys[files[-1]]}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Real Fashion-MNIST, from Debian's dataset-fashion-mnist
# ---------------------------------------------------------------------------------------------

DEBIAN_FASHION = D._SOURCES["fashion_mnist"].apt_dir


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> Path:
    """An empty data_dir: loading Fashion-MNIST fills it from Debian's package by itself."""
    if not all((DEBIAN_FASHION / f"{f}.gz").is_file() for f in D._MNIST_FILES):
        pytest.fail(f"Fashion-MNIST not found in {DEBIAN_FASHION}: run scripts/setup "
                    f"(or `apt-get install dataset-fashion-mnist`, Debian's package with the real data)")
    return tmp_path_factory.mktemp("fashion")


@pytest.fixture
def no_debian_fashion(monkeypatch):
    """A machine without Debian's dataset-fashion-mnist."""
    import dataclasses
    monkeypatch.setitem(D._SOURCES, "fashion_mnist", dataclasses.replace(D._SOURCES["fashion_mnist"], apt_dir=None))


def test_fashion_mnist_real(fashion_dir, capsys):
    load_splits.cache_clear()
    s = load_splits("fashion_mnist", str(fashion_dir), 0, 0.1, 7)
    said = capsys.readouterr().out.strip().splitlines()
    raw = fashion_dir / "FashionMNIST" / "raw"
    assert said == [f"fashion_mnist: not in {raw}; unpacked there from Debian's dataset-fashion-mnist "
                    f"({DEBIAN_FASHION})"], said
    assert sorted(p.name for p in raw.iterdir()) == sorted(D._MNIST_FILES)
    assert s.x_train.shape == (54000, 1, 28, 28) and s.x_val.shape == (6000, 1, 28, 28)
    assert s.x_test.shape == (10000, 1, 28, 28) and s.y_test.shape == (10000,)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert s.input_shape == DATASETS["fashion_mnist"].input_shape and s.num_classes == 10
    assert s.augment is None
    for yy in (s.y_train, s.y_val, s.y_test):
        assert yy.min() == 0 and yy.max() == 9
    assert torch.bincount(s.y_test).tolist() == [1000] * 10  # the real test set is balanced
    full = torch.cat([s.x_train, s.x_val])
    assert abs(full.mean().item()) < 0.01 and abs(full.std().item() - 1) < 0.01
    assert full.min().item() == pytest.approx(-0.2860 / 0.3530, abs=1e-4)  # black pixel
    # the second load reads the uint8 cache and gives the same tensors
    assert len(list(fashion_dir.glob("fashion_mnist-uint8-*.npz"))) == 1
    load_splits.cache_clear()
    t = load_splits("fashion_mnist", str(fashion_dir), 0, 0.1, 7)
    assert torch.equal(s.x_train, t.x_train) and torch.equal(s.y_val, t.y_val)
    assert capsys.readouterr().out == ""  # found in data_dir now: nothing to say
    load_splits.cache_clear()


def test_download_path_moves_complete_files_into_place(fashion_dir, no_debian_fashion, tmp_path, monkeypatch):
    """With torchvision's fetch faked by a copy from Debian's files, an empty data_dir is filled
    through the staging folder, leaving only the raw files and the cache."""
    import gzip
    import shutil

    import torchvision.datasets.mnist as tvm

    def fake_fetch(url, download_root, filename, md5):
        os.makedirs(download_root, exist_ok=True)
        name = filename[:-3]
        with gzip.open(DEBIAN_FASHION / filename) as fin, open(Path(download_root) / name, "wb") as fo:
            shutil.copyfileobj(fin, fo)

    monkeypatch.setattr(tvm, "download_and_extract_archive", fake_fetch)
    d = tmp_path / "new" / "data"
    arrays = DATASETS["fashion_mnist"].loader(d, 0)
    assert arrays["x"].shape == (60000, 1, 28, 28) and arrays["y_test"].shape == (10000,)
    files = _files(d)
    assert [f for f in files if not f.endswith(".npz")] == \
        ["FashionMNIST", "FashionMNIST/raw"] + [f"FashionMNIST/raw/{f}" for f in sorted(D._MNIST_FILES)]


# ---------------------------------------------------------------------------------------------
# Offline: one clear error, fast, nothing left behind
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """No name resolves (as on this machine), whatever network the test host has."""
    def fail(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", fail)


@pytest.mark.parametrize("name, expect", [
    ("fashion_mnist", ["FashionMNIST/raw", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                       "apt-get install dataset-fashion-mnist"]),
    ("mnist", ["MNIST/raw", "train-images-idx3-ubyte", "ossci-datasets"]),
    ("cifar10", ["cifar-10-batches-py", "data_batch_1..5, test_batch", "cifar-10-python.tar.gz"]),
    ("cifar100", ["cifar-100-python", "train, test", "cifar-100-python.tar.gz"]),
])
def test_offline_error(name, expect, tmp_path, offline, no_debian_fashion):
    d = tmp_path / "empty"
    d.mkdir()
    start = time.perf_counter()
    with pytest.raises(DataUnavailable) as ei:
        load_splits(name, str(d), 0, 0.1, 0)
    assert time.perf_counter() - start < 10
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{name}: ") and str(d) in msg, msg
    for e in expect:
        assert e in msg, msg
    assert isinstance(ei.value, RuntimeError)
    assert _files(d) == []  # no staging folder, no half-written files
    # a data_dir that did not exist is not left behind either
    missing = tmp_path / "a" / "b"
    with pytest.raises(DataUnavailable):
        DATASETS[name].loader(missing, 0)
    assert not (tmp_path / "a").exists()


def _write_idx_gz(path: Path, a: np.ndarray) -> None:
    """An IDX file (big-endian header: 0, 0, type 0x08 = ubyte, ndim; then the dims), gzipped."""
    import gzip
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + a.astype(np.uint8).tobytes())


def test_mnist_from_gzipped_files_offline(tmp_path, offline):
    """Gzipped IDX files lying in the raw folder are unpacked there; no download is tried."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    x, y = rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50)
    xt, yt = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)
    for name, a in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                    ("t10k-images-idx3-ubyte", xt), ("t10k-labels-idx1-ubyte", yt)):
        _write_idx_gz(raw / f"{name}.gz", a)
    arrays = DATASETS["mnist"].loader(tmp_path, 0)
    assert arrays["x"].shape == (50, 1, 28, 28) and arrays["x_test"].shape == (20, 1, 28, 28)
    assert arrays["y"].tolist() == y.tolist() and arrays["y_test"].tolist() == yt.tolist()
    back = np.rint((arrays["x"][:, 0] * D.MNIST_STD[0] + D.MNIST_MEAN[0]) * 255)
    assert np.array_equal(back, x)
    assert sorted(p.name for p in raw.iterdir()) == sorted(D._MNIST_FILES + tuple(f"{f}.gz" for f in D._MNIST_FILES))


# ---------------------------------------------------------------------------------------------
# CIFAR on fabricated files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, n_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_fabricated(kind, n_classes, tmp_path):
    written = make_cifar(tmp_path, kind)
    load_splits.cache_clear()
    s = load_splits(kind, str(tmp_path), 0, 0.2, 3)
    n_train = len(written["y"])
    assert n_train == 300
    assert s.x_train.shape == (240, 3, 32, 32) and s.x_val.shape == (60, 3, 32, 32)
    assert s.x_test.shape == (60, 3, 32, 32)
    assert s.num_classes == n_classes == DATASETS[kind].num_classes
    assert s.input_shape == (3, 32, 32) and s.augment == "crop_flip"
    labels = torch.cat([s.y_train, s.y_val])
    assert sorted(labels.tolist()) == sorted(written["y"].tolist())
    assert s.y_test.tolist() == written["y_test"].tolist()  # test set: order kept
    assert 0 <= labels.min() and labels.max() < n_classes
    # raw arrays: exact values, channel order R, G, B
    arrays = DATASETS[kind].loader(tmp_path, 0)
    mean, std = (D.CIFAR10_MEAN, D.CIFAR10_STD) if kind == "cifar10" else (D.CIFAR100_MEAN, D.CIFAR100_STD)
    m, sd = np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None]
    back = np.rint((arrays["x"] * sd + m) * 255)
    assert np.array_equal(back.reshape(len(back), -1), written["x"])
    red = back[0]
    assert (red[0] == 255).all() and (red[1] == 0).all() and (red[2] == 0).all()
    assert arrays["x"][0, 0, 0, 0] == pytest.approx((1 - mean[0]) / std[0], rel=1e-5)
    assert arrays["x"][0, 1, 0, 0] == pytest.approx(-mean[1] / std[1], rel=1e-5)
    assert not list(tmp_path.glob("*.npz"))  # CIFAR is not cached (unpickling is as fast)
    load_splits.cache_clear()


def test_cifar_python3_repickle(tmp_path):
    """A batch re-pickled by Python 3 (bytes keys, numpy 2 module path, protocol 4) loads too."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 20).tolist()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / f, "wb") as fh:
            pickle.dump({b"batch_label": b"b", b"labels": y, b"data": x, b"filenames": [b"a"] * 20}, fh, protocol=4)
    arrays = DATASETS["cifar10"].loader(tmp_path, 0)
    assert arrays["x"].shape == (100, 3, 32, 32) and arrays["y"].tolist() == y * 5


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload", [
    {"data": _Evil(), "labels": [0]},
    {"data": np.zeros((1, 3072), object), "labels": [0]},
    {"data": np.zeros((1, 3072), np.uint8), "labels": [np.int64(0)]},
])
def test_cifar_unpickler_refuses_other_globals(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises((pickle.UnpicklingError, ValueError, TypeError)):
        D._read_cifar_batch(path, "labels")
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------

def _structured(n: int, c: int = 3, h: int = 32, w: int = 32) -> torch.Tensor:
    """Pixel value encodes (sample, channel, row, col), all distinct and nonzero."""
    i = torch.arange(n)[:, None, None, None] * 1_000_000
    ch = torch.arange(c)[None, :, None, None] * 10_000
    r = (torch.arange(h)[None, None, :, None] + 1) * 100
    col = torch.arange(w)[None, None, None, :] + 1
    return (i + ch + r + col).float()


def test_augment_crop_is_a_shift_of_the_padded_image_and_flip_mirrors():
    n, p = 512, D.CROP_PAD
    x = _structured(n)
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    flips, shifts = 0, set()
    for k in range(n):
        found = []
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                crop = padded[k, :, dy:dy + 32, dx:dx + 32]
                if torch.equal(out[k], crop):
                    found.append((dy, dx, False))
                if torch.equal(out[k], crop.flip(-1)):
                    found.append((dy, dx, True))
        assert len(found) == 1, (k, found)
        flips += found[0][2]
        shifts.add(found[0][:2])
    assert 0.4 * n < flips < 0.6 * n
    assert len(shifts) == (2 * p + 1) ** 2  # every shift occurs


def test_augment_reproducible_and_identity():
    x = torch.randn(128, 3, 32, 32)
    a = augment_batch(x, "crop_flip", torch.Generator().manual_seed(5))
    b = augment_batch(x, "crop_flip", torch.Generator().manual_seed(5))
    c = augment_batch(x, "crop_flip", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, None, torch.Generator()) is x
    with pytest.raises(ValueError):
        augment_batch(x, "rotate", torch.Generator())
    # one channel, other sizes
    assert augment_batch(torch.randn(7, 1, 28, 28), "crop_flip", torch.Generator()).shape == (7, 1, 28, 28)


def test_batches_with_and_without_augment():
    x, y = _structured(100, 1, 8, 8), torch.arange(100)
    plain = list(batches(x, y, 32, torch.Generator().manual_seed(1)))
    again = list(batches(x, y, 32, torch.Generator().manual_seed(1), augment=None))
    assert [len(b[1]) for b in plain] == [32, 32, 32, 4]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, again, strict=True))
    assert all(torch.equal(xb, x[yb]) for xb, yb in plain)  # unaugmented: the samples themselves
    aug = list(batches(x, y, 32, torch.Generator().manual_seed(1), augment="crop_flip"))
    aug2 = list(batches(x, y, 32, torch.Generator().manual_seed(1), augment="crop_flip"))
    assert [b[1].tolist() for b in aug] == [b[1].tolist() for b in plain]  # same shuffle
    assert all(torch.equal(a[0], b[0]) for a, b in zip(aug, aug2, strict=True))
    assert not all(torch.equal(xb, x[yb]) for xb, yb in aug)


def test_splits_carry_augment():
    t = torch.zeros(2, 1)
    s = Splits(t, t, t, t, t, t, 10)  # constructed as before: no augmentation
    assert s.augment is None and s.to("cpu").augment is None
    s = Splits(t, t, t, t, t, t, 10, "crop_flip")
    assert s.to("cpu").augment == "crop_flip" and s.to("cpu").num_classes == 10
    assert DATASETS["mnist1d"].augment is None and DATASETS["mnist"].augment is None
    assert DATASETS["cifar10"].augment == DATASETS["cifar100"].augment == "crop_flip"
