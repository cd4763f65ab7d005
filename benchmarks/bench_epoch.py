"""Epoch time of the platform's trainer against the DataLoader loop researchers write.

Both train the same model (MLP 40-300-100-10 by default) at the same sparsity on the same
MNIST-1D split with the same optimiser, batch size and evaluation (validation + test accuracy
every epoch), single-threaded, in this one process; the result is a ratio.

Baseline, as in OpenLTH and the paper's code: a torchvision-style ``Dataset`` whose
``__getitem__`` applies per-sample transforms (to tensor, normalise), a ``DataLoader`` with
shuffling and default collation, masks held by ``torch.nn.utils.prune``'s forward pre-hooks, and
evaluation through DataLoaders too.

    python benchmarks/bench_epoch.py [--epochs 5] [--model mlp] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.data import load_splits  # noqa: E402
from trainables.models import build_model, init_weights  # noqa: E402
from trainables.pruning import full_masks, prune_round  # noqa: E402
from trainables.training import Trainer, TrainSpec  # noqa: E402


class Normalize:
    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ToTensor:
    def __call__(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32)


class Compose:
    def __init__(self, fs):
        self.fs = fs

    def __call__(self, x):
        for f in self.fs:
            x = f(x)
        return x


class SequenceDataset(Dataset):
    """torchvision-style: raw arrays, a per-sample transform in ``__getitem__``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), int(self.y[i])


def baseline_epoch(model, opt, loaders) -> float:
    train, val, test = loaders
    start = time.perf_counter()
    model.train()
    for xb, yb in train:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for loader in (val, test):
            correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in loader)
            _ = correct / len(loader.dataset)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data_dir = tempfile.mkdtemp(prefix="bench-data-")
    s = load_splits("mnist1d", data_dir, 42, 0.2, 42)
    spec = TrainSpec(lr=0.05, epochs=a.epochs * a.repeats, batch_size=a.batch_size)

    # ours
    model = init_weights(build_model(a.model, s.input_shape, 10), 0)
    masks = prune_round(model, full_masks(model), a.sparsity)
    trainer = Trainer(model, s, spec, masks)
    trainer.run_epoch()  # warm-up
    ours = [trainer.run_epoch()["seconds"] for _ in range(a.epochs * a.repeats)]

    # baseline: per-sample transforms, DataLoader, prune hooks
    mean, std = float(s.x_train.mean()), float(s.x_train.std())
    tf = Compose([ToTensor(), Normalize(mean, std)])
    raw = [(s.x_train * std + mean).numpy(), (s.x_val * std + mean).numpy(), (s.x_test * std + mean).numpy()]
    ys = [s.y_train.numpy(), s.y_val.numpy(), s.y_test.numpy()]
    loaders = [DataLoader(SequenceDataset(raw[0], ys[0], tf), batch_size=a.batch_size, shuffle=True),
               DataLoader(SequenceDataset(raw[1], ys[1], tf), batch_size=1000),
               DataLoader(SequenceDataset(raw[2], ys[2], tf), batch_size=1000)]
    bmodel = init_weights(build_model(a.model, s.input_shape, 10), 0)
    modules = dict(bmodel.named_modules())
    for name, m in masks.items():
        prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", m.bool())
    opt = torch.optim.SGD(bmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    baseline_epoch(bmodel, opt, loaders)  # warm-up
    base = [baseline_epoch(bmodel, opt, loaders) for _ in range(a.epochs * a.repeats)]

    o, b = statistics.median(ours), statistics.median(base)
    result = {"model": a.model, "batch_size": a.batch_size, "sparsity": a.sparsity, "epochs_timed": len(ours),
              "ours_epoch_s": o, "dataloader_epoch_s": b, "ratio": o / b, "target_ratio": 1 / 3,
              "meets_target": o / b <= 1 / 3, "torch": torch.__version__}
    print(f"trainer epoch {o * 1000:.1f} ms | DataLoader loop epoch {b * 1000:.1f} ms | ratio {o / b:.3f} "
          f"(target <= 0.333: {'met' if o / b <= 1 / 3 else 'MISSED'})")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
