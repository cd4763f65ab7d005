"""The confirmation's plan: which trials confirm a finished search (no Ray, no I/O of its own).

Conditions, each on the same K fresh seeds (the search used ``--seed``; these are seed+1 .. seed+K):

- ``tuned``: every regime at the best LR its own search found (validation accuracy);
- ``fixed_small`` / ``fixed_large``: every regime at one fixed LR (the paper's contrast: a small LR
  favours the winning ticket, a large one levels it);
- the sparsity sweep (``tuned``, ``prune_round`` < rounds): winning ticket and random re-init on the
  mask of every earlier IMP round, for accuracy against sparsity.

``study.course`` runs them as Ray Tune trials (a grid over these explicit configs), MLflow child
runs with ``phase=confirm`` and rows of the Parquet tables; they reuse every shared artifact (same
LR and seed: same IMP).
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from study.options import StudyOptions

SWEEP_REGIMES = ("winning_ticket", "random_reinit")


def confirm_seeds(opts: StudyOptions) -> list[int]:
    return [opts.args.seed + 1 + i for i in range(opts.args.confirm_seeds)]


def best_lrs(trials: pd.DataFrame) -> dict[str, float]:
    """Each regime's best LR in the search (highest validation accuracy among completed trials)."""
    from analysis.summary import best_per_regime
    best = best_per_regime(trials[trials["phase"] == "search"])
    return {r["regime"]: float(r["best_lr"]) for _, r in best.iterrows() if not math.isnan(r["best_lr"])}


def confirm_specs(opts: StudyOptions, best: dict[str, float]) -> list[dict[str, Any]]:
    """Every confirmation trial's settings, in a stable order."""
    a, rounds = opts.args, opts.pipeline.rounds
    specs = []
    for seed in confirm_seeds(opts):
        for regime in opts.regimes:
            conditions = [] if a.no_fixed else [("fixed_small", a.fixed_small_lr), ("fixed_large", a.fixed_large_lr)]
            if regime in best:
                conditions.insert(0, ("tuned", best[regime]))
            for condition, lr in conditions:
                specs.append({"regime": regime, "lr": lr, "seed": seed, "phase": "confirm",
                              "condition": condition, "prune_round": rounds})
            if not a.no_sweep and regime in SWEEP_REGIMES and regime in best:
                specs += [{"regime": regime, "lr": best[regime], "seed": seed, "phase": "confirm",
                           "condition": "tuned", "prune_round": r} for r in range(1, rounds)]
    return specs


def confirm_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"
