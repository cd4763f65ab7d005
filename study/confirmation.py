"""The confirmation's plan: which trials confirm a finished search (no Ray, no I/O of its own).

Conditions, each on the same K fresh seeds (the search used ``--seed``; these are seed+1 .. seed+K):

- ``tuned``: every regime at the best LR its own search found (validation accuracy);
- ``fixed_small`` / ``fixed_large``: every regime at one fixed LR (the paper's contrast: a small LR
  favours the winning ticket, a large one levels it);
- the sparsity sweep (``tuned``, ``prune_round`` < rounds): the regimes whose registry entry says
  ``sweep`` (winning ticket, random re-init) on the mask of every earlier IMP round, for accuracy
  against sparsity.

``study.course`` runs them as Ray Tune trials (a grid over these explicit configs), MLflow child
runs with ``phase=confirm`` and rows of the Parquet tables; they reuse every shared artifact (same
LR and seed: same IMP).
"""
from __future__ import annotations

import math
import pandas as pd

from study.config import StudyConfig
from trainables.records import TrialSpec
from trainables.regimes import get_regime


def confirm_seeds(cfg: StudyConfig) -> list[int]:
    return [cfg.search.seed + 1 + i for i in range(cfg.confirmation.confirm_seeds)]


def best_lrs(trials: pd.DataFrame) -> dict[str, float]:
    """Each regime's best LR in the search (highest validation accuracy among completed trials)."""
    from analysis.summary import best_per_regime
    best = best_per_regime(trials[trials["phase"] == "search"])
    return {r["regime"]: float(r["best_lr"]) for _, r in best.iterrows() if not math.isnan(r["best_lr"])}


def confirm_specs(cfg: StudyConfig, best: dict[str, float]) -> list[TrialSpec]:
    """Every confirmation trial, in a stable order."""
    c, rounds = cfg.confirmation, cfg.pruning.rounds
    specs = []
    for seed in confirm_seeds(cfg):
        for regime in cfg.regimes:
            conditions = [("fixed_small", c.fixed_small_lr), ("fixed_large", c.fixed_large_lr)] if c.fixed else []
            if regime in best:
                conditions.insert(0, ("tuned", best[regime]))
            specs += [TrialSpec(regime, lr, (seed,), "confirm", condition, rounds) for condition, lr in conditions]
            if c.sweep and get_regime(regime).sweep and regime in best:
                specs += [TrialSpec(regime, best[regime], (seed,), "confirm", "tuned", r) for r in range(1, rounds)]
    return specs


def confirm_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"
