"""The lottery study's search space: the learning rate, log-uniform, optionally on a log grid.

Optuna samples ``log10_lr``: uniform (continuous mode) or in steps of 1/N decades (grid mode,
N = points per decade).  The grid makes trials of different regimes and repeated TPE suggestions
land on the same LRs, so that they share pretraining and IMP artifacts; Optuna's TPE treats the
stepped parameter as discrete, so what it models is exactly what was trained.  The effective
``lr`` is returned as a constant and appears in each Tune config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # optuna is imported by the search only: the flags are made without it
    import optuna


@dataclass(frozen=True)
class LrSpace:
    lr_min: float
    lr_max: float
    per_decade: int = 0  # 0: continuous

    def grid(self) -> tuple[int, int] | None:
        """Integer grid indices (k_lo, k_hi) with lr = 10 ** (k / per_decade), or None if continuous."""
        if not self.per_decade:
            return None
        n = self.per_decade
        return math.ceil(math.log10(self.lr_min) * n - 1e-9), math.floor(math.log10(self.lr_max) * n + 1e-9)

    def check(self) -> None:
        if not (0 < self.lr_min < self.lr_max):
            raise ValueError("need 0 < lr_min < lr_max")
        g = self.grid()
        if g is not None and g[1] - g[0] < 1:
            raise ValueError(f"the LR grid ({self.per_decade} per decade) has fewer than 2 points "
                             f"in [{self.lr_min:g}, {self.lr_max:g}]")

    def suggest(self, trial: optuna.Trial) -> float:
        g = self.grid()
        if g is None:
            x = trial.suggest_float("log10_lr", math.log10(self.lr_min), math.log10(self.lr_max))
            return 10 ** x
        n = self.per_decade
        # stepped float over whole grid steps; rounding undoes float error in k / n
        x = trial.suggest_float("log10_lr", g[0] / n, g[1] / n, step=1 / n)
        return 10 ** (round(x * n) / n)


@dataclass(frozen=True)
class DefineByRun:
    """A regime's define-by-run space (``study.search`` calls it on each Optuna trial it asks):
    samples the LR, returns it with the trial's constant spec (``trainables.records.TrialSpec``
    fields but the LR).

    A class rather than a closure: Ray Tune pickles the searcher (and this) with its state.
    """

    space: LrSpace
    constants: tuple[tuple[str, Any], ...]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        lr = self.space.suggest(trial)
        trial.set_user_attr("lr", lr)
        return {"lr": lr, "optuna_trial": trial.number, "spec": dict(self.constants)}


def define_by_run(space: LrSpace, constants: dict[str, Any]) -> DefineByRun:
    return DefineByRun(space, tuple(sorted(constants.items())))
