"""Stacked training against one network after another: time per network and epoch.

K networks of one configuration (the seeds of a confirmation point) trained as one stacked network
(``trainables.stacked.StackedTrainer``: torch.func vmap over stacked parameters) against the same K
trained one after another with ``trainables.training.Trainer``, in one process, on MNIST-1D, for the
MLP (LeNet-300-100 shape, masks held at 80% sparsity) and the 1-D conv net, at K = 4, 8, 16.  Each
measurement is the best of ``--repeats`` epochs after one warm-up epoch.  Goal: at most 0.5x at K = 8
on 2 cores.  ``--models vgg16`` (any model but mlp and conv1d) trains on ``--cifar-examples``
random CIFAR-shaped examples with crop-and-flip augmentation instead.

    .venv/bin/python benchmarks/bench_stacked.py [--threads 2] [--ks 4,8,16]
    .venv/bin/python benchmarks/bench_stacked.py --models vgg16 --ks 4 --repeats 1 [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ks", default="4,8,16")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--models", default="mlp,conv1d")
    p.add_argument("--cifar-examples", type=int, default=256)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import torch

    from trainables.data import Splits, load_splits
    from trainables.models import build_model, init_weights
    from trainables.stacked import StackedTrainer
    from trainables.training import Trainer, TrainSpec
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        mnist1d = load_splits("mnist1d", d, 42, 0.2, 42).to(a.device)
    g = torch.Generator().manual_seed(0)
    n = a.cifar_examples
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    cifar = Splits(x, y, x[:n // 4], y[:n // 4], x[n // 4:n // 2], y[n // 4:n // 2], 10, augment="crop_flip").to(a.device)

    def best_epoch(trainer, epochs: int) -> float:
        trainer.run_epoch()  # warm-up
        times = []
        for _ in range(epochs):
            t = time.perf_counter()
            trainer.run_epoch()
            times.append(time.perf_counter() - t)
        return min(times)

    print(f"batch 64, {a.threads} threads, {a.device}; time per network and epoch (best of {a.repeats})")
    for name in a.models.split(","):
        splits = mnist1d if name in ("mlp", "conv1d") else cifar
        print(f"{name}: {'random CIFAR-shaped' if splits is cifar else 'MNIST-1D'}, {len(splits.y_train)} training examples")
        for k in (int(x) for x in a.ks.split(",")):
            nets = [init_weights(build_model(name, splits.input_shape, splits.num_classes, None), s).to(a.device)
                    for s in range(k)]
            specs = [TrainSpec(lr=0.05, epochs=a.repeats + 1, seed=s) for s in range(k)]
            masks = None
            if name == "mlp":
                g = torch.Generator().manual_seed(0)
                masks = [{n: (torch.rand(p.shape, generator=g) < 0.2).float().to(a.device)
                          for n, p in nets[0].named_parameters() if n.endswith("weight")} for _ in range(k)]
            alone = sum(best_epoch(Trainer(copy.deepcopy(net), splits, specs[i], masks[i] if masks else None),
                                   a.repeats) for i, net in enumerate(nets)) / k
            stacked = best_epoch(StackedTrainer(nets, splits, specs, masks), a.repeats) / k
            print(f"{name:<7} K={k:<3} one after another {alone * 1000:7.1f} ms   stacked {stacked * 1000:7.1f} ms   "
                  f"ratio {stacked / alone:.2f}x")


if __name__ == "__main__":
    main()
