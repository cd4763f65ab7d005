"""K networks of one architecture trained as one stacked network: the seeds of one configuration
(a confirmation trial's, or a search trial's with ``--search-seeds``), in their pretraining and IMP
rounds (``Pipeline.train_many``) and in the regime's own training (``trainables.trainable``).

``torch.func`` does the stacking: ``stack_module_state`` puts the K networks' parameters along a new
first dimension, ``vmap(functional_call)`` runs the K forward passes as batched operations, and one
SGD steps the stacked tensors (SGD with momentum and weight decay is elementwise, so it is exactly K
SGDs with the same hyperparameters).  What stays per network: its initial weights, its data order
(its ``TrainSpec.seed``, drawn exactly as ``Trainer`` draws it), its mask (held after every step),
its loss and accuracies, and its divergence (a diverged network stops counting; the others go on).
The result matches K ``Trainer`` runs to float tolerance (``tests/test_stacked.py``); per network
and epoch it costs about half of training them one after another on two CPU cores
(``benchmarks/bench_stacked.py``).

Written by hand because no library trains a vmap-stacked ensemble with per-member data order and
masks.  BatchNorm works as in each network alone: its running statistics are stacked buffers, so the
in-place update of each batched slice updates that network's own; evaluation switches to them.
Networks whose shapes differ (slimming's per-seed channel counts) or whose training runs differ
(Scratch-B's epochs) are not stacked (``stackable``): they train one after another with ``Trainer``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from trainables.data import Splits, _check_augment, _crop_flip, _crop_flip_draws
from trainables.training import Trainer, TrainSpec, lr_factor


def stackable(models: list[nn.Module], specs: list[TrainSpec] | None = None) -> bool:
    """The networks share every parameter's and buffer's shape, and their training runs (``specs``)
    share every setting but the seed."""
    if not models:
        return False
    shapes = [[(n, t.shape) for n, t in (*m.named_parameters(), *m.named_buffers())] for m in models]
    return all(s == shapes[0] for s in shapes) and len({replace(s, seed=0) for s in specs or ()}) <= 1


def stacking_pays(models: list[nn.Module]) -> bool:
    """Whether stacking is faster than one network after another, as measured with
    ``benchmarks/bench_stacked.py`` (2 CPU threads, per network and epoch): MLPs 0.47x at K = 8 and
    1-D conv nets 0.72x to 1.0x, but 2-D conv nets 1.06x (ResNet-20), 1.52x (VGG-16) and 1.92x
    (Conv-2) at K = 4: vmap runs their convolutions as grouped ones, which cost more than they save.
    Those train one after another (correct stacked too: ``tests/test_stacked.py``); no GPU was there
    to measure whether they pay on one."""
    return not any(isinstance(m, nn.Conv2d) for m in models[0].modules())


def stacks(models: list[nn.Module], specs: list[TrainSpec]) -> bool:
    """Whether these networks train as one stacked network: several, stackable, and it pays."""
    return len(models) > 1 and stackable(models, specs) and stacking_pays(models)


def train_all(models: list[nn.Module], splits: Splits, specs: list[TrainSpec],
              masks: list[dict[str, torch.Tensor] | None], stop_epoch: int | None = None,
              on_epoch=None) -> list[list[dict[str, Any]]]:
    """Train the networks (the seeds of one configuration): together where they can be stacked and
    it pays, else one after another; each one's history (``on_epoch``: stacked only)."""
    if stacks(models, specs):
        return StackedTrainer(models, splits, specs, masks).run(stop_epoch, on_epoch)
    return [Trainer(m, splits, spec, mask).run(stop_epoch) for m, spec, mask in zip(models, specs, masks)]


def _mlp_plan(model: nn.Module) -> list[tuple[str, str]] | None:
    """("linear", parameter prefix) and ("relu", "") steps of an ``MLP`` (flatten first), else None."""
    from trainables.models import MLP
    if type(model) is not MLP:
        return None
    plan = []
    for name, m in model.net.named_children():
        if isinstance(m, nn.Linear):
            plan.append(("linear", f"net.{name}"))
        elif isinstance(m, nn.ReLU):
            plan.append(("relu", ""))
        elif not isinstance(m, nn.Flatten) or name != "0":
            return None
    return plan


class StackedTrainer:
    """``Trainer`` for K networks at once; ``run_epoch`` returns one epoch record per network."""

    def __init__(self, models: list[nn.Module], splits: Splits, specs: list[TrainSpec],
                 masks: list[dict[str, torch.Tensor] | None] | None = None):
        if not stackable(models, specs):
            raise ValueError("stacked networks share their shapes and every training setting but "
                             "the seed: train these one by one")
        self.splits, self.specs, self.spec = splits, specs, specs[0]
        self.k = len(models)
        device = next(models[0].parameters()).device
        self.params, self.buffers = stack_module_state(models)  # leaves [K, ...] with requires_grad
        self.base = copy.deepcopy(models[0]).to("meta")
        self.plan = _mlp_plan(models[0])
        self.models = models
        masks = masks or [None] * self.k
        names = sorted({n for m in masks if m for n in m})
        self.masks = {n: torch.stack([(m[n] if m and n in m else torch.ones_like(self.params[n][0])).to(device)
                                      for m in masks]) for n in names}
        self.steps_per_epoch = math.ceil(len(splits.y_train) / self.spec.batch_size)
        self.optimizer = torch.optim.SGD(list(self.params.values()), lr=self.spec.lr, momentum=self.spec.momentum,
                                         weight_decay=self.spec.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.steps_per_epoch, self.spec))
        if self.spec.bn_l1 > 0:  # network slimming's L1 subgradient on the BN scales (elementwise: per network)
            from trainables.structured import _add_l1_subgradient, bn_scale_names
            scales = [self.params[n] for n in bn_scale_names(models[0])]
            self.optimizer.register_step_pre_hook(lambda *_: _add_l1_subgradient(scales, self.spec.bn_l1))
        self.epoch = 0
        self.diverged = [False] * self.k
        self._remask()

    def _remask(self) -> None:
        if self.masks:
            with torch.no_grad():
                torch._foreach_mul_([self.params[n] for n in self.masks], list(self.masks.values()))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [K, B, classes] of the K networks on their own batches x [K, B, ...]."""
        if self.plan is not None:
            return self._forward_mlp(x)

        def one(params, buffers, xb):
            return functional_call(self.base, (params, buffers), (xb,))
        return vmap(one)(self.params, self.buffers, x)

    def _forward_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """An MLP as batched matrix products (``baddbmm``): the same numbers as ``vmap`` (tested),
        about 30% less time per step on small networks, where vmap's per-operation dispatch shows.
        Activations are held as [K, features, B], so each weight multiplies from the left (W h) and
        its gradient (grad h^T) comes out in the weight's own layout, with no transposed copy."""
        h = x.flatten(2).transpose(1, 2)
        for kind, prefix in self.plan:
            if kind == "linear":
                w, b = self.params[f"{prefix}.weight"], self.params.get(f"{prefix}.bias")
                h = torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)
            else:
                h = h.relu()
        return h.transpose(1, 2)  # [K, B, classes], a view

    @torch.inference_mode()
    def _accuracy(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> list[float]:
        self.base.eval()  # BatchNorm: the running statistics, left as they are
        correct = torch.zeros(self.k, device=x.device)
        for i in range(0, len(y), chunk):
            xb = x[i:i + chunk]
            logits = self._forward(xb.expand(self.k, *xb.shape))
            correct += (logits.argmax(-1) == y[i:i + chunk]).sum(1)
        return [float(c) / max(1, len(y)) for c in correct]

    def _orders(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each network's permutation (and augmentation draws) of this epoch, drawn as ``Trainer``
        draws them (``trainables.data.batches``): the same generator, seed and order of draws."""
        n, augment = len(self.splits.y_train), self.splits.augment
        perms, draws = [], []
        for spec in self.specs:
            gen = torch.Generator().manual_seed(spec.seed * 100_003 + self.epoch)
            perms.append(torch.randperm(n, generator=gen))
            if augment is not None:
                _check_augment(augment)
                draws.append(_crop_flip_draws(n, gen))
        device = self.splits.x_train.device
        return (torch.stack(perms).to(device),
                torch.stack(draws).to(device) if draws else None)

    def run_epoch(self) -> list[dict[str, Any]]:
        start = time.perf_counter()
        s, bs = self.splits, self.spec.batch_size
        perms, draws = self._orders()
        self.base.train()  # BatchNorm: batch statistics, each network's running ones updated in place
        total = torch.zeros(self.k, device=s.x_train.device)
        lr = self.optimizer.param_groups[0]["lr"]
        for i in range(0, perms.shape[1], bs):
            idx = perms[:, i:i + bs]
            xb, yb = s.x_train[idx], s.y_train[idx]  # [K, B, ...], [K, B]
            if draws is not None:
                xb = torch.stack([_crop_flip(xb[k], draws[k][:, i:i + bs]) for k in range(self.k)])
            logits = self._forward(xb)
            per = F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").mean(1)  # each network's mean loss
            self.optimizer.zero_grad(set_to_none=True)
            per.sum().backward()  # each network's gradient is that of its own loss
            self.optimizer.step()
            self._remask()
            self.scheduler.step()
            total += per.detach()
        self.epoch += 1
        losses = (total / self.steps_per_epoch).tolist()
        val, test = self._accuracy(s.x_val, s.y_val), self._accuracy(s.x_test, s.y_test)
        seconds = (time.perf_counter() - start) / self.k
        out = []
        for k in range(self.k):
            diverged = not math.isfinite(losses[k])
            out.append({"epoch": self.epoch, "lr": lr, "train_loss": losses[k], "val_acc": val[k],
                        "test_acc": test[k], "diverged": diverged, "seconds": seconds})
        return out

    def run(self, stop_epoch: int | None = None, on_epoch=None) -> list[list[dict[str, Any]]]:
        """Every network's history up to ``stop_epoch`` (default: the schedule's end); a network's
        history ends at the epoch it diverged, the others train on.  ``on_epoch(records)`` is called
        after every epoch but the last (progress reports)."""
        stop = self.spec.epochs if stop_epoch is None else stop_epoch
        histories: list[list[dict[str, Any]]] = [[] for _ in range(self.k)]
        while self.epoch < stop and not all(self.diverged):
            records = self.run_epoch()
            for k, rec in enumerate(records):
                if not self.diverged[k]:
                    histories[k].append(rec)
                    self.diverged[k] = rec["diverged"]
            if on_epoch is not None and self.epoch < stop and not all(self.diverged):
                on_epoch(records)
        self.write_back()
        return histories

    def write_back(self) -> None:
        """Each network's trained weights back into its own module."""
        with torch.no_grad():
            for k, model in enumerate(self.models):
                for n, p in model.named_parameters():
                    p.copy_(self.params[n][k])
                for n, b in model.named_buffers():
                    b.copy_(self.buffers[n][k])
