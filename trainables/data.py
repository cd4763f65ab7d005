"""Data sets as in-memory tensors, behind a registry.

Small data sets (MNIST-1D: 4,000 + 1,000 sequences of 40 floats) live as tensors for the whole
run and are batched by slicing (see ``batches``); a DataLoader would spend most of an epoch in
per-sample Python calls.  Generated data are cached on disk as ``.npz`` (no pickle) keyed by the
parameters that determine them, written atomically.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors; the validation split is held out of the train set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Splits":
        return Splits(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val,
                                                self.x_test, self.y_test)), self.num_classes)


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in ("x", "y", "x_test", "y_test")}


@dataclass(frozen=True)
class DatasetEntry:
    loader: Callable[[Path, int], dict[str, np.ndarray]]  # (data_dir, seed) -> x, y, x_test, y_test
    num_classes: int
    input_shape: tuple[int, ...]


DATASETS: dict[str, DatasetEntry] = {
    "mnist1d": DatasetEntry(_mnist1d_arrays, 10, (40,)),
}


@functools.lru_cache(maxsize=4)
def load_splits(name: str, data_dir: str, data_seed: int, val_fraction: float, split_seed: int) -> Splits:
    """Load ``name`` and hold out ``val_fraction`` of its training set (seeded) for validation."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    entry = DATASETS[name]
    num_classes = entry.num_classes
    arrays = entry.loader(Path(data_dir), data_seed)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(val_fraction * len(y)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return Splits(x[train_idx].contiguous(), y[train_idx].contiguous(), x[val_idx].contiguous(),
                  y[val_idx].contiguous(), torch.from_numpy(arrays["x_test"]),
                  torch.from_numpy(arrays["y_test"]), num_classes)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
            generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches as views of one permuted copy (one gather per epoch, not per batch)."""
    perm = torch.randperm(len(y), generator=generator).to(x.device)
    xs, ys = x[perm], y[perm]
    for i in range(0, len(ys), batch_size):
        yield xs[i:i + batch_size], ys[i:i + batch_size]
