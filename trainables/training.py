"""The training loop: the hot path of every trial.

Data are batched from in-memory tensors; masks are re-applied after every optimiser step with one
fused ``_foreach_mul_`` in an optimiser step post-hook (gradient masking alone would let momentum and weight decay revive pruned
weights); the LR follows a per-step ``LambdaLR`` schedule; divergence ends the run early.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import SCHEDULES
from trainables.data import Splits, batches


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a training run's result besides its start weights and mask."""

    lr: float
    epochs: int
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0
    seed: int = 0  # data order
    bn_l1: float = 0.0  # network slimming's L1 penalty on BatchNorm scales (0: none)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["bn_l1"]:  # absent when unused, so that artifact keys made before it existed still match
            del d["bn_l1"]
        return d


def lr_factor(step: int, steps_per_epoch: int, spec: TrainSpec) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (0-based)."""
    total = spec.epochs * steps_per_epoch
    warm = spec.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if spec.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if spec.schedule == "step":  # /10 at 50% and at 75% of training, as in the paper
        frac = step / max(1, total)
        return 1.0 if frac < 0.5 else (0.1 if frac < 0.75 else 0.01)
    if spec.schedule == "constant":  # fine-tuning: a small constant LR
        return 1.0
    raise ValueError(f"unknown schedule {spec.schedule!r}; known: {SCHEDULES}")


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), chunk):
        correct += int((model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum())
    model.train(was_training)
    return correct / max(1, len(y))


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    if masks:
        params = dict(model.named_parameters())
        with torch.no_grad():
            torch._foreach_mul_([params[n] for n in masks], list(masks.values()))


@dataclass
class TrainState:
    """What a resumed run needs: weights, optimiser and scheduler state, the epoch reached."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int


class Trainer:
    """SGD with momentum and weight decay over a fixed mask; epochs run one call at a time."""

    def __init__(self, model: nn.Module, splits: Splits, spec: TrainSpec,
                 masks: dict[str, torch.Tensor] | None = None):
        self.model, self.splits, self.spec = model, splits, spec
        device = next(model.parameters()).device
        self.masks = {n: m.to(device) for n, m in (masks or {}).items()}
        self.steps_per_epoch = math.ceil(len(splits.y_train) / spec.batch_size)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                         weight_decay=spec.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.steps_per_epoch, spec))
        self.epoch = 0
        apply_masks(model, self.masks)
        if self.masks:  # the mask holds after every optimiser step, whoever calls step()
            params = dict(model.named_parameters())
            masked, mask_list = [params[n] for n in self.masks], list(self.masks.values())

            def remask(optimizer, args, kwargs) -> None:
                with torch.no_grad():
                    torch._foreach_mul_(masked, mask_list)
            self.optimizer.register_step_post_hook(remask)
        if spec.bn_l1 > 0:  # network slimming: the L1 subgradient on BN scales, just before each step
            from trainables.structured import slimming_hook
            self.optimizer.register_step_pre_hook(slimming_hook(model, spec.bn_l1))

    def state(self) -> TrainState:
        return TrainState({k: v.detach().clone() for k, v in self.model.state_dict().items()},
                          self.optimizer.state_dict(), self.scheduler.state_dict(), self.epoch)

    def load_state(self, state: TrainState) -> None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.epoch = state.epoch

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch; return its record (epoch, lr, train_loss, val/test accuracy, diverged)."""
        start = time.perf_counter()
        model, opt, sched = self.model, self.optimizer, self.scheduler
        gen = torch.Generator().manual_seed(self.spec.seed * 100_003 + self.epoch)
        model.train()
        total = torch.zeros((), device=self.splits.x_train.device)
        lr = opt.param_groups[0]["lr"]
        for xb, yb in batches(self.splits.x_train, self.splits.y_train, self.spec.batch_size, gen,
                              augment=self.splits.augment):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()  # masks re-applied by the step post-hook
            sched.step()
            total += loss.detach()
        self.epoch += 1
        train_loss = float(total) / self.steps_per_epoch
        s = self.splits
        return {"epoch": self.epoch, "lr": lr, "train_loss": train_loss,
                "val_acc": accuracy(model, s.x_val, s.y_val), "test_acc": accuracy(model, s.x_test, s.y_test),
                "diverged": not math.isfinite(train_loss), "seconds": time.perf_counter() - start}

    def run(self, stop_epoch: int | None = None) -> list[dict[str, Any]]:
        """Train until ``stop_epoch`` (default: the schedule's end) or divergence."""
        stop = self.spec.epochs if stop_epoch is None else stop_epoch
        history = []
        while self.epoch < stop:
            rec = self.run_epoch()
            history.append(rec)
            if rec["diverged"]:
                break
        return history
