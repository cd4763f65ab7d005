"""Data sets as in-memory tensors, behind a registry.

Data sets live as tensors for the whole run and are batched by slicing (see ``batches``); a
DataLoader would spend most of an epoch in per-sample Python calls.  Augmentation (CIFAR's pad-crop
and flip) runs per batch on the batch's device, vectorised, drawn from the epoch's generator.

Sources:

* ``mnist1d``: generated offline by the ``mnist1d`` package, cached as ``.npz`` keyed by the
  parameters that determine it.
* ``mnist``, ``fashion_mnist``: torchvision's ``MNIST``/``FashionMNIST`` classes read the IDX files
  in ``<data_dir>/<Class>/raw/``.  Where that folder lacks them and the machine has the data set as a
  Debian package (``dataset-fashion-mnist``: gzipped IDX files under ``/usr/share/datasets/``), the
  package's files are unpacked there, with one line saying so, instead of a download.
* ``cifar10``, ``cifar100``: the python-pickle batches (``<data_dir>/cifar-10-batches-py/``,
  ``<data_dir>/cifar-100-python/``) read by our own restricted unpickler; torchvision's CIFAR classes
  md5-check every file even without downloading, and a plain ``pickle.load`` of a downloaded file
  would run whatever it names.

Missing files are downloaded with torchvision into a staging folder that is moved into place only
when complete; offline that fails within seconds with one ``DataUnavailable`` line naming the folder,
the files expected there and how to get them.  MNIST-family images are cached as uncompressed uint8
``.npz`` in data_dir: a later load takes ~0.1 s instead of ~2.5 s (mostly torchvision's import).
CIFAR is not cached: our unpickling of the six batches takes ~0.4 s, the cache would save ~0.2 s for
185 MB of disk.  Every file we write is written atomically.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from trainables.config import DATASET_NAMES
from trainables.storage import atomic_path


class DataUnavailable(RuntimeError):
    """A data set's files are missing and could not be downloaded (one-line message: what to do)."""


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors; the validation split is held out of the train set.

    ``augment`` names the training-batch augmentation (see ``augment_batch``), or None."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Splits:
        return Splits(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val,
                                                self.x_test, self.y_test)), self.num_classes, self.augment)


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _load_npz(path: Path, keys: tuple[str, ...] = ("x", "y", "x_test", "y_test")) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in keys}


def _mnist1d_arrays(data_dir: Path, seed: int) -> dict[str, np.ndarray]:
    """MNIST-1D generated offline by the ``mnist1d`` package (never its network ``get_dataset``)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    spec = {k: v for k, v in vars(args).items() if k != "url"}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = data_dir / f"mnist1d-{key}.npz"
    if not path.exists():
        state = np.random.get_state()  # make_dataset seeds numpy's global RNG; leave it as it was
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
        _atomic_save_npz(path, x=d["x"].astype(np.float32), y=d["y"].astype(np.int64),
                         x_test=d["x_test"].astype(np.float32), y_test=d["y_test"].astype(np.int64))
    return _load_npz(path)


# ---------------------------------------------------------------------------------------------
# Image data sets: files on disk, download, decoding, normalisation
# ---------------------------------------------------------------------------------------------

# Per-channel mean / std of the training images scaled to [0, 1] (the usual published constants).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

DOWNLOAD_TIMEOUT_S = 20.0  # per socket operation while downloading (an unreachable host fails fast)
_CACHE_VERSION = 1

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class _ImageSource:
    name: str                 # registry name, used in messages
    folder: str               # relative to data_dir: where the raw files live
    files: tuple[str, ...]    # the raw files needed there
    files_text: str           # the same, briefly, for messages
    how_to_get: str           # one sentence for the DataUnavailable message
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cache: bool               # keep the decoded uint8 images as .npz next to the raw files
    apt_package: str | None = None  # a Debian package holding the raw files gzipped, in apt_dir
    apt_dir: Path | None = None


_SOURCES = {
    "mnist": _ImageSource(
        "mnist", "MNIST/raw", _MNIST_FILES, ", ".join(_MNIST_FILES),
        "gunzip the four files from https://ossci-datasets.s3.amazonaws.com/mnist/ into that folder",
        MNIST_MEAN, MNIST_STD, cache=True),
    "fashion_mnist": _ImageSource(
        "fashion_mnist", "FashionMNIST/raw", _MNIST_FILES, ", ".join(_MNIST_FILES),
        "gunzip the four files from http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ into that "
        "folder, or on Debian/Ubuntu `apt-get install dataset-fashion-mnist` (its files in "
        "/usr/share/datasets/fashion-mnist are then used by themselves)",
        FASHION_MNIST_MEAN, FASHION_MNIST_STD, cache=True,
        apt_package="dataset-fashion-mnist", apt_dir=Path("/usr/share/datasets/fashion-mnist")),
    "cifar10": _ImageSource(
        "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        "data_batch_1..5, test_batch",
        "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into data_dir",
        CIFAR10_MEAN, CIFAR10_STD, cache=False),
    "cifar100": _ImageSource(
        "cifar100", "cifar-100-python", ("train", "test"), "train, test",
        "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into data_dir",
        CIFAR100_MEAN, CIFAR100_STD, cache=False),
}


def _missing(data_dir: Path, src: _ImageSource) -> list[str]:
    return [f for f in src.files if not (data_dir / src.folder / f).is_file()]


def _unavailable(data_dir: Path, src: _ImageSource, why: str) -> DataUnavailable:
    why = " ".join(why.split())  # one line, whatever the underlying error printed
    return DataUnavailable(f"{src.name}: files missing in {data_dir / src.folder} (expected {src.files_text}) "
                           f"and download failed ({why}); {src.how_to_get}")


def _gunzip_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp, gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _from_apt_package(data_dir: Path, src: _ImageSource) -> bool:
    """Unpack ``src``'s raw files from its Debian package's folder into ``data_dir`` (files already
    there are kept) and say so in one line; False, doing nothing, where the package's files are not
    all there."""
    if src.apt_dir is None or not all((src.apt_dir / f"{f}.gz").is_file() for f in src.files):
        return False
    for f in _missing(data_dir, src):
        _gunzip_atomic(src.apt_dir / f"{f}.gz", data_dir / src.folder / f)
    print(f"{src.name}: not in {data_dir / src.folder}; unpacked there from Debian's {src.apt_package} "
          f"({src.apt_dir})", flush=True)
    return True


def _download(data_dir: Path, src: _ImageSource) -> None:
    """Fetch ``src``'s missing files with torchvision into a staging folder under ``data_dir``, then
    move them into place; on any failure remove everything this call created and raise
    ``DataUnavailable``."""
    created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]
    stage: Path | None = None
    old_timeout = socket.getdefaulttimeout()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=data_dir, prefix=".download-"))
        if old_timeout is None:  # torchvision's urlopen calls pass no timeout of their own
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        if src.name in ("mnist", "fashion_mnist"):
            cls = tvd.MNIST if src.name == "mnist" else tvd.FashionMNIST
            cls(root=str(stage), train=True, download=True)  # fetches and gunzips all four files
            got = stage / src.folder
        else:
            cls = tvd.CIFAR10 if src.name == "cifar10" else tvd.CIFAR100
            download_and_extract_archive(cls.url, str(stage), filename=cls.filename, md5=cls.tgz_md5)
            got = stage / cls.base_folder
        dest = data_dir / src.folder
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.files:
            if not (dest / f).is_file():
                os.replace(got / f, dest / f)
    except Exception as e:  # every failure becomes the one actionable message
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for p in created:  # folders this call made, innermost first, if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise _unavailable(data_dir, src, f"{type(e).__name__}: {e}") from e
    finally:
        socket.setdefaulttimeout(old_timeout)
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def _ensure_files(data_dir: Path, src: _ImageSource) -> None:
    missing = _missing(data_dir, src)
    if missing and src.name in ("mnist", "fashion_mnist"):  # gzipped copies lying there are enough
        for f in missing:
            gz = data_dir / src.folder / f"{f}.gz"
            if gz.is_file():
                _gunzip_atomic(gz, data_dir / src.folder / f)
        missing = _missing(data_dir, src)
    if missing and not _from_apt_package(data_dir, src):
        _download(data_dir, src)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR's python batches that can build nothing but what those files hold.

    The real files (pickled by Python 2's cPickle, protocol 2) are a dict whose keys are strings and
    whose values are strings (``batch_label``), lists of ints (``labels`` / ``fine_labels`` /
    ``coarse_labels``), lists of strings (``filenames``) and one uint8 array (``data``).  Dicts,
    lists, strings and ints come from pickle opcodes without naming any global; the array is rebuilt
    by ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` plus
    ``numpy.dtype('u1', 0, 1)`` and ``ndarray.__setstate__``.  Those three globals (and the numpy>=2
    module path of ``_reconstruct``, as written by a Python 3 re-pickle) are the only ones allowed;
    anything else (``os.system``, ``builtins.eval``, ...) raises ``UnpicklingError``.  The result is
    checked afterwards (uint8 data, integer labels), so an object-dtype array cannot slip through.
    """

    _reconstruct = np.empty(0).__reduce__()[0]  # numpy's ndarray rebuild function, whatever its module
    ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (uint8 images N x 3 x 32 x 32, int64 labels N)."""
    with open(path, "rb") as f:
        # latin1: how Python 3 must read Python 2 str objects holding numpy array bytes
        d = _CifarUnpickler(f, encoding="latin1").load()
    if not isinstance(d, dict):
        raise TypeError(f"{path}: not a CIFAR batch (a {type(d).__name__}, not a dict)")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    data, labels = d.get("data"), d.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise ValueError(f"{path}: 'data' is not a uint8 array N x 3072")
    if not (isinstance(labels, list) and all(type(v) is int for v in labels)) or len(labels) != len(data):
        raise ValueError(f"{path}: {label_key!r} is not a list of {len(data)} ints")
    # each row: 1024 red, 1024 green, 1024 blue values, each plane row-major 32 x 32 -> NCHW
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _raw_uint8(data_dir: Path, src: _ImageSource) -> dict[str, np.ndarray]:
    """Images as uint8 N x C x H x W and int64 labels, decoded from the raw files."""
    folder = data_dir / src.folder
    if src.name in ("mnist", "fashion_mnist"):
        import torchvision.datasets as tvd
        cls = tvd.MNIST if src.name == "mnist" else tvd.FashionMNIST
        out = {}
        for train, (kx, ky) in ((True, ("x", "y")), (False, ("x_test", "y_test"))):
            ds = cls(root=str(data_dir), train=train, download=False)
            out[kx] = ds.data.numpy()[:, None]  # N x 1 x 28 x 28
            out[ky] = ds.targets.numpy().astype(np.int64)
        return out
    if src.name == "cifar10":
        parts = [_read_cifar_batch(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
        x_test, y_test = _read_cifar_batch(folder / "test_batch", "labels")
        return {"x": np.concatenate([p[0] for p in parts]), "y": np.concatenate([p[1] for p in parts]),
                "x_test": x_test, "y_test": y_test}
    x, y = _read_cifar_batch(folder / "train", "fine_labels")
    x_test, y_test = _read_cifar_batch(folder / "test", "fine_labels")
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def _cache_path(data_dir: Path, src: _ImageSource) -> Path:
    """Cache keyed by the raw files' sizes and mtimes: replaced files are decoded again."""
    stats = [(f, (data_dir / src.folder / f).stat().st_size, (data_dir / src.folder / f).stat().st_mtime_ns)
             for f in src.files]
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, stats]).encode()).hexdigest()[:12]
    return data_dir / f"{src.name}-uint8-{key}.npz"


def _normalise(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 N x C x H x W -> float32 ``(x / 255 - mean) / std`` per channel."""
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(1, -1, 1, 1)
    shift = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).reshape(1, -1, 1, 1)
    out = x.astype(np.float32)
    out *= scale
    out -= shift
    return out


def _image_loader(name: str) -> Callable[[Path, int], dict[str, np.ndarray]]:
    def load(data_dir: Path, seed: int) -> dict[str, np.ndarray]:  # seed: unused, the data are fixed
        src = _SOURCES[name]
        data_dir = Path(data_dir)
        _ensure_files(data_dir, src)
        if not src.cache:
            raw = _raw_uint8(data_dir, src)
        elif (cache := _cache_path(data_dir, src)).is_file():
            raw = _load_npz(cache)
        else:
            raw = _raw_uint8(data_dir, src)
            try:
                _atomic_save_npz(cache, **raw)
            except OSError:  # a read-only data_dir: load without the cache
                pass
        return {"x": _normalise(raw["x"], src.mean, src.std), "y": raw["y"].astype(np.int64),
                "x_test": _normalise(raw["x_test"], src.mean, src.std), "y_test": raw["y_test"].astype(np.int64)}

    load.__name__ = load.__qualname__ = f"_{name}_arrays"
    return load


@dataclass(frozen=True)
class DatasetEntry:
    loader: Callable[[Path, int], dict[str, np.ndarray]]  # (data_dir, seed) -> x, y, x_test, y_test
    num_classes: int
    input_shape: tuple[int, ...]
    augment: str | None = None  # training-batch augmentation, a key of AUGMENTATIONS


DATASETS: dict[str, DatasetEntry] = {
    "mnist1d": DatasetEntry(_mnist1d_arrays, 10, (40,)),
    "mnist": DatasetEntry(_image_loader("mnist"), 10, (1, 28, 28)),
    "fashion_mnist": DatasetEntry(_image_loader("fashion_mnist"), 10, (1, 28, 28)),
    "cifar10": DatasetEntry(_image_loader("cifar10"), 10, (3, 32, 32), augment="crop_flip"),
    "cifar100": DatasetEntry(_image_loader("cifar100"), 100, (3, 32, 32), augment="crop_flip"),
}


# the flags list the data sets without importing this module (trainables.config.DATASET_NAMES)
if tuple(DATASETS) != DATASET_NAMES:
    raise ImportError("trainables.config.DATASET_NAMES must name exactly DATASETS, in order")


@functools.lru_cache(maxsize=4)
def load_splits(name: str, data_dir: str, data_seed: int, val_fraction: float, split_seed: int) -> Splits:
    """Load ``name`` and hold out ``val_fraction`` of its training set (seeded) for validation."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    entry = DATASETS[name]
    num_classes = entry.num_classes
    arrays = entry.loader(Path(data_dir), data_seed)
    x, y = arrays["x"], arrays["y"]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed)).numpy()
    n_val = round(val_fraction * len(y))
    val_idx, train_idx = perm[:n_val], perm[n_val:]

    def take(a: np.ndarray, idx: np.ndarray) -> torch.Tensor:  # numpy's gather: 3-5x torch's on CPU
        return torch.from_numpy(np.take(a, idx, axis=0))
    return Splits(take(x, train_idx), take(y, train_idx), take(x, val_idx), take(y, val_idx),
                  torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"]), num_classes,
                  entry.augment)


# ---------------------------------------------------------------------------------------------
# Batches and augmentation
# ---------------------------------------------------------------------------------------------

CROP_PAD = 4
AUGMENTATIONS = ("crop_flip",)


def augment_batch(x: torch.Tensor, kind: str | None, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch of images ``x`` (N x C x H x W) on its own device; ``kind`` None: ``x`` itself.

    ``"crop_flip"``: pad each side by ``CROP_PAD`` pixels with zeros (in normalised units: the data
    set's mean colour), take a random H x W crop, and mirror it left-right with probability 1/2.  The
    crops are one gather from the padded batch's ``unfold`` view (N x C x 9 x 9 x H x W, no copy),
    the flip one ``torch.where`` on a per-sample bool.  The random draws come from ``generator`` (a
    CPU generator, so results do not depend on the device) and are then moved to ``x``'s device.
    Cost for 128 x 3 x 32 x 32 on this 2-core CPU: ~1.5-2 ms (one thread; a shared, loaded machine).
    """
    if kind is None:
        return x
    _check_augment(kind)
    return _crop_flip(x, _crop_flip_draws(len(x), generator).to(x.device))


def _check_augment(kind: str) -> None:
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; known: {AUGMENTATIONS}")


def _crop_flip_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """3 x n: each sample's row shift, column shift (0 .. 2 * CROP_PAD) and flip (0/1)."""
    offsets = torch.randint(0, 2 * CROP_PAD + 1, (2, n), generator=generator)
    flip = torch.randint(0, 2, (1, n), generator=generator)
    return torch.cat([offsets, flip])


def _crop_flip(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """``x``'s crops and flips as ``draws`` (on ``x``'s device) say."""
    n, _, h, w = x.shape
    p = CROP_PAD
    windows = torch.nn.functional.pad(x, (p, p, p, p)).unfold(2, h, 1).unfold(3, w, 1)
    crops = windows[torch.arange(n, device=x.device), :, draws[0], draws[1]]   # N x C x H x W
    return torch.where(draws[2].bool().view(n, 1, 1, 1), crops.flip(-1), crops)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator,
            augment: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches as views of one permuted copy (one gather per epoch, not per batch),
    augmented as ``augment`` says (training batches only).  The augmentation's random draws for the
    whole epoch are made once and moved to the device once: no host-to-device copy per step."""
    perm = torch.randperm(len(y), generator=generator).to(x.device)
    xs, ys = x[perm], y[perm]
    draws = None
    if augment is not None:
        _check_augment(augment)
        draws = _crop_flip_draws(len(ys), generator).to(x.device)
    for i in range(0, len(ys), batch_size):
        xb = xs[i:i + batch_size]
        yield (xb if draws is None else _crop_flip(xb, draws[:, i:i + batch_size])), ys[i:i + batch_size]
