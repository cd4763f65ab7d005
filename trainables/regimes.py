"""Retraining regimes: where the final sparse network's weights start.  One entry per regime.

A regime turns (pipeline, trial LR, trial seed[, IMP round]) into a ``Start``: the initial weights, the mask,
the artifacts it came from and the training phases that produced them.  Adding a regime is one
function plus one ``REGIMES`` entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from trainables.pipeline import ImpResult, Phase, Pipeline, derive_seed
from trainables.pruning import sparsity


@dataclass
class Start:
    weights: dict[str, torch.Tensor] | None  # None when the pipeline diverged before a mask existed
    masks: dict[str, torch.Tensor] | None
    phases: list[Phase]
    artifacts: dict[str, str]
    seeds: dict[str, int] = field(default_factory=dict)
    diverged_phase: str | None = None

    @property
    def sparsity(self) -> tuple[float, dict[str, float]]:
        return sparsity(self.masks) if self.masks else (0.0, {})


def _from_imp(imp: ImpResult, weights_from, seeds: dict[str, int] | None, prune_round: int) -> Start:
    """The start point on the mask of IMP round ``prune_round``; none if IMP diverged before it."""
    arts = {"init": imp.theta0.name, "pretrained": imp.pretrained.name}
    r = prune_round
    if r < 1 or r > len(imp.masks):
        return Start(None, None, imp.phases, arts, seeds or {}, diverged_phase=imp.phases[-1].name)
    mask = imp.masks[r - 1]
    arts["mask"] = mask.name
    arts["rewind"] = imp.rewind.name
    weights, extra = weights_from(imp)
    arts.update(extra)
    # the phases that led to this mask: pretraining and the rounds before r
    return Start(weights, mask.tensors(), imp.phases[:r], arts, seeds or {})


def winning_ticket(p: Pipeline, lr: float, seed: int, prune_round: int | None = None) -> Start:
    """theta_0 * m: the survivors reset to their original initial values."""
    return _from_imp(p.imp(lr, seed), lambda imp: (imp.theta0.tensors(), {}), None, prune_round or p.cfg.rounds)


def random_reinit(p: Pipeline, lr: float, seed: int, prune_round: int | None = None) -> Start:
    """A fresh seeded draw from the same initialiser, same mask as the winning ticket."""
    reinit_seed = derive_seed(seed, "random_reinit")

    def weights(imp: ImpResult):
        art = p.init(reinit_seed)
        return art.tensors(), {"reinit": art.name}
    return _from_imp(p.imp(lr, seed), weights, {"reinit_seed": reinit_seed}, prune_round or p.cfg.rounds)


def late_rewind(p: Pipeline, lr: float, seed: int, prune_round: int | None = None) -> Start:
    """theta_k * m, with IMP itself rewinding to epoch k (Frankle et al., 2019)."""
    k = p.cfg.rewind_epoch
    return _from_imp(p.imp(lr, seed, rewind_epoch=k), lambda imp: (imp.rewind.tensors(), {}),
                     {"rewind_epoch": k}, prune_round or p.cfg.rounds)


@dataclass(frozen=True)
class Regime:
    name: str
    start: Callable[..., Start]  # (pipeline, lr, seed, prune_round=None) -> Start
    description: str


REGIMES: dict[str, Regime] = {r.name: r for r in [
    Regime("winning_ticket", winning_ticket, "theta_0 * m (lottery ticket rewinding to initialisation)"),
    Regime("random_reinit", random_reinit, "fresh seeded draw from the same initialiser * m"),
    Regime("late_rewind", late_rewind, "theta_k * m, IMP rewinding to epoch k (--rewind-epoch)"),
]}

DEFAULT_REGIMES = ("winning_ticket", "random_reinit")


def describe() -> dict[str, Any]:
    return {name: r.description for name, r in REGIMES.items()}
