"""The confirmation phase: each regime at its own best LR on fresh seeds, plus fixed LRs.

``python -m study.confirm <study folder>`` runs it on a finished search (``study.lottery`` runs it
at its end unless ``--no-confirm``).  Conditions, each on the same K fresh seeds (the search used
``--seed``; these are seed+1 .. seed+K):

- ``tuned``: every regime at the best LR its own search found (validation accuracy);
- ``fixed_small`` / ``fixed_large``: every regime at one fixed LR (the paper's contrast: a small LR
  favours the winning ticket, a large one levels it);
- the sparsity sweep (``tuned``, ``prune_round`` < rounds): winning ticket and random re-init on the
  mask of every earlier IMP round, for accuracy against sparsity.

They are Ray Tune trials (a grid over explicit configs), MLflow child runs with ``phase=confirm``
and rows of the Parquet tables; they reuse every shared artifact (same LR and seed: same IMP).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

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


def run_confirmation(opts: StudyOptions, ctx, tracker, study_hash: str, trial_params: dict[str, Any],
                     concurrency: int, out=sys.stdout, resume: bool = False) -> bool:
    """Run every confirmation trial (with ``resume``: those not done yet); True when all finished."""
    from ray import tune

    from analysis.summary import read_tables
    from analysis.tables import write_tables
    from study.callbacks import DeterministicFailure, Progress, StudyCallback, label
    from study.tuning import run_experiment

    a = opts.args
    write_tables(opts.study_dir)  # from every record on disk: the best LRs come from all search trials
    trials, _ = read_tables(opts.study_dir)
    best = best_lrs(trials)
    specs = confirm_specs(opts, best)
    totals: dict[str, int] = {}
    for s in specs:
        totals[label(s)] = totals.get(label(s), 0) + 1
    print(f"--- confirmation: {len(specs)} trials on seeds {confirm_seeds(opts)}; best LRs "
          + ", ".join(f"{r} {lr:.3g}" for r, lr in best.items())
          + ("" if a.no_fixed else f"; fixed LRs {a.fixed_small_lr:g} and {a.fixed_large_lr:g}"), file=out, flush=True)
    cb = StudyCallback(a.name, opts.study_dir, study_hash, tracker, Progress(totals, out), trial_params,
                       shared=ctx.shared)
    if cb.finished_count(phase="confirm") < len(specs):
        run_experiment(opts, "confirm", ctx, cb, concurrency,
                       {"trial_dirname_creator": confirm_dirname}, {"spec": tune.grid_search(specs)}, resume)
    cb.tables.flush()
    if cb.failure:
        raise DeterministicFailure(cb.failure)
    return cb.finished_count(phase="confirm") >= len(specs)


def confirm_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m study.confirm <study folder>``: the confirmation phase of a finished search."""

    from study.options import BadFlag, OneLineParser, add_confirm_flags, check_confirm_flags, options_from_study
    p = OneLineParser(prog="python -m study.confirm", description=main.__doc__)
    p.add_argument("study_dir", help="a study folder made by python -m study.lottery")
    add_confirm_flags(p)
    p.add_argument("--address", default=None, help="Ray cluster to join (default: the study's own setting)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    study_dir = Path(args.study_dir).resolve()
    if not (study_dir / "study.json").exists() or not (study_dir / "results" / "trials.parquet").exists():
        p.error(f"study_dir must be a study folder with study.json and results/trials.parquet ({study_dir})")
    try:
        check_confirm_flags(args)
    except BadFlag as e:
        p.error(str(e))
    opts = options_from_study(study_dir)
    trials = pd.read_parquet(study_dir / "results" / "trials.parquet")
    if (trials["phase"] == "confirm").any():
        p.error(f"study_dir already has a confirmation ({study_dir}); its report: python -m analysis.report {study_dir}")
    for key in ("confirm_seeds", "fixed_small_lr", "fixed_large_lr", "equivalence_margin", "no_sweep"):
        setattr(opts.args, key, getattr(args, key))
    opts.args.no_fixed = args.no_fixed or opts.args.no_fixed  # a rethinking study has none by default
    opts.args.no_confirm = False
    if args.address:
        opts.args.address = args.address
    from study.lottery import run_study
    return run_study(opts, search=False)


if __name__ == "__main__":
    sys.exit(main())
