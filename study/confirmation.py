"""The confirmation's plan: which trials confirm a finished search (no Ray, no I/O of its own).

The trials run on fresh seeds (the search used ``--seed``; these are seed+1, seed+2, ...), in looks
(``analysis.sequential``): the first ``--confirm-seeds`` K of them at the first look, K more at each
later one for the comparisons not decided yet, up to ``--max-confirm-seeds``:

1. ``tuned``: each regime at its best ``--candidates`` search LRs (validation accuracy, one seed
   each in the search); the regime's tuned LR is then the candidate of highest mean *validation*
   accuracy over the seeds (``analysis.stats.candidates``), and the verdict compares *test*
   accuracy at the picked LRs, paired by seed, with the chance in the pick in its interval;
   ``fixed_small`` / ``fixed_large``: every regime at one fixed LR (the paper's contrast: a small LR
   favours the winning ticket, a large one levels it);
   later looks (``look_specs``): the configurations ``analysis.stats.Replay.next_look`` names, the
   regimes of the open comparisons (tuned: their candidates that can still be picked);
2. the sparsity sweep (``tuned``, ``prune_round`` < rounds) on the first look's seeds, once the
   tuned LRs are picked: the regimes whose registry entry says ``sweep`` (winning ticket, random
   re-init) at their tuned LR on the mask of every earlier IMP round, for accuracy against sparsity.

``study.course`` runs each stage as Ray Tune trials (a grid over these specs), MLflow child runs
with ``phase=confirm`` and rows of the Parquet tables; they reuse every shared artifact (same LR and
seed: same IMP).
"""
from __future__ import annotations

import pandas as pd

from study.config import StudyConfig
from trainables.records import TrialSpec
from trainables.regimes import get_regime


def plan(cfg: StudyConfig):
    """The confirmation's looks (``analysis.sequential.Plan``), as ``analysis.report`` reads them
    from ``study.json``."""
    from analysis.design import sequential_plan
    return sequential_plan(cfg.to_dict())


def confirm_seeds(cfg: StudyConfig) -> list[int]:
    """The first look's seeds."""
    return [cfg.search.seed + 1 + i for i in range(cfg.confirmation.confirm_seeds)]


def look_specs(cfg: StudyConfig, seeds: tuple[int, ...], configs) -> list[TrialSpec]:
    """A later look: each configuration ``(regime, condition, lr)`` on the look's new ``seeds``."""
    return [TrialSpec(regime, lr, tuple(seeds), "confirm", condition, cfg.pruning.rounds)
            for regime, condition, lr in configs]


def candidate_lrs(trials: pd.DataFrame, n: int) -> dict[str, list[float]]:
    """Each regime's ``n`` best distinct LRs of the search (completed runs, by mean validation
    accuracy over the search's seeds; a repeated LR counts once), best first."""
    done = trials[(trials["phase"] == "search") & (trials["status"] == "completed") & trials["val_acc"].notna()]
    out = {}
    for regime, g in done.groupby("regime", sort=False):
        by_lr = g.groupby("lr")["val_acc"].mean().sort_values(ascending=False, kind="stable")  # over search seeds
        out[regime] = [float(lr) for lr in by_lr.index[:n]]
    return out


def confirm_specs(cfg: StudyConfig, candidates: dict[str, list[float]]) -> list[TrialSpec]:
    """The first stage: every regime at its candidate LRs and at the fixed LRs, in a stable order;
    each spec holds all the fresh seeds (one trial trains them together, one record per seed)."""
    c, rounds, seeds = cfg.confirmation, cfg.pruning.rounds, tuple(confirm_seeds(cfg))
    specs = []
    for regime in cfg.regimes:
        conditions = [("tuned", lr) for lr in candidates.get(regime, [])]
        if c.fixed:
            conditions += [("fixed_small", c.fixed_small_lr), ("fixed_large", c.fixed_large_lr)]
        specs += [TrialSpec(regime, lr, seeds, "confirm", condition, rounds) for condition, lr in conditions]
    return specs


def sweep_specs(cfg: StudyConfig, picked: dict[str, float]) -> list[TrialSpec]:
    """The second stage: the sweep regimes at their picked LR on every earlier IMP round's mask."""
    if not cfg.confirmation.sweep:
        return []
    return [TrialSpec(regime, picked[regime], tuple(confirm_seeds(cfg)), "confirm", "tuned", r)
            for regime in cfg.regimes if get_regime(regime).sweep and regime in picked
            for r in range(1, cfg.pruning.rounds)]


def confirm_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"
