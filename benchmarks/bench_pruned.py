"""Does structured pruning make the network faster, not only smaller?

Times inference (batch 256) and one SGD training step (batch 64) of a dense CIFAR network against
its L1-filter-pruned version (channels physically removed), in the same process, and prints the
ratios next to the parameter and FLOP ratios.  A magnitude mask of the same parameter count is timed
too: zeros in dense kernels cost as much as any other weight.

    .venv/bin/python benchmarks/bench_pruned.py [--model vgg16] [--preset vgg16-a | --ratio 0.5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainables import efficiency as eff
from trainables.models import build_model, init_weights
from trainables.pruning import full_masks, prune_round
from trainables.structured import StructuredSpec, prune_structured
from trainables.training import apply_masks


def train_step_ms(model, shape, batch=64, repeats=10, warmup=2) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    times = []
    model.train()
    for i in range(warmup + repeats):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shape = (3, 32, 32)
    dense = init_weights(build_model(a.model, shape, 10), 0)
    pruned = prune_structured(dense, StructuredSpec("l1-filter", ratio=a.ratio, preset=a.preset),
                              torch.zeros(1, *shape))
    keep = eff.count_params(pruned) / eff.count_params(dense)
    masked = init_weights(build_model(a.model, shape, 10), 0)
    masks = prune_round(masked, full_masks(masked), 1.0 - keep)
    apply_masks(masked, masks)
    rows = []
    for name, model, m in (("dense", dense, None), ("l1-filter (channels removed)", pruned, None),
                           ("magnitude mask, same params", masked, masks)):
        rows.append((name, eff.count_nonzero_params(model, m) if m else eff.count_params(model),
                     eff.masked_flops(model, m, shape) if m else eff.count_flops(model, shape),
                     eff.latency_ms(model, shape, batch_size=256, repeats=5)["median_ms"],
                     train_step_ms(model, shape)))
    base = rows[0]
    print(f"{a.model} on {shape}, {a.threads} threads, CPU "
          f"({'preset ' + a.preset if a.preset else f'ratio {a.ratio}'})")
    print(f"{'network':<30} {'params':>11} {'FLOPs':>11} {'infer ms':>9} {'step ms':>8}   ratios vs dense")
    for name, params, flops, infer, step in rows:
        print(f"{name:<30} {params:>11,} {flops:>11.3g} {infer:>9.1f} {step:>8.1f}   params {params / base[1]:.2f}, "
              f"FLOPs {flops / base[2]:.2f}, inference {infer / base[3]:.2f}, train step {step / base[4]:.2f}")


if __name__ == "__main__":
    main()
