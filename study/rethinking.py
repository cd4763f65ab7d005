"""``python -m study.rethinking``: does a pruned network need its inherited weights?

Liu et al. (ICLR 2019) found that a pruned architecture trained from scratch (Scratch-E: the dense
network's epochs; Scratch-B: the same training FLOPs) matches fine-tuning the weights it inherited,
structured pruning above all.  This study makes that testable with the lottery study's machinery:
the same pipeline (dense pretraining, pruning as cached artifacts), one Optuna search of the
learning rate per regime, each regime in its own LR range (fine-tuning searches lower LRs), Ray Tune
trials, MLflow runs, Parquet tables, the confirmation on fresh seeds and the verdicts
(Scratch-E vs fine-tune, Scratch-B vs fine-tune).

Every flag of ``study.lottery`` applies; only the defaults differ (``RETHINKING_DEFAULTS``): the
pruning is structured (``--method l1-filter``, half of every conv's filters), pretraining runs at
a fixed LR (``--lr-coupling retrain``) so that the searched LR is the retraining's own, and the
confirmation compares each regime at its own best LR (no fixed-LR conditions, no sparsity sweep).
"""
from __future__ import annotations

import sys
from typing import Sequence

from study.options import build_parser, parse

PROG = "python -m study.rethinking"
RETHINKING_DEFAULTS = {
    "study_kind": "rethinking",
    "regimes": ("fine_tune", "scratch_e", "scratch_b"),
    "method": "l1-filter",
    "prune_ratio": 0.5,
    "model": "conv1d",
    "dataset": "mnist1d",
    "num_samples": 16,
    "startup_trials": 8,
    "epochs": 20,
    "rounds": 1,
    "lr_coupling": "retrain",
    "pretrain_lr": 0.1,
    "lr_min": 1e-2,
    "lr_max": 1.0,
    "fine_tune_lr_min": 1e-4,
    "fine_tune_lr_max": 1e-1,
    "lr_grid": 8,
    "confirm_seeds": 10,
    "no_fixed": True,
    "no_sweep": True,
}


def build_rethinking_parser():
    p = build_parser()
    p.prog = PROG
    p.description = (
        "The rethinking study: prune a trained network (structured: channels removed, or by magnitude), "
        "then compare fine-tuning its inherited weights with training the pruned network from scratch "
        "(Scratch-E, Scratch-B), each regime at its own best learning rate, found by its own Optuna "
        "search run as Ray Tune trials; every trial is logged to MLflow and Parquet.")
    p.set_defaults(**RETHINKING_DEFAULTS)
    for action in p._actions:  # --help shows this study's defaults, and regimes given as one string
        if action.dest == "regimes":
            action.default = ",".join(RETHINKING_DEFAULTS["regimes"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from study.course import run_study
    return run_study(parse(argv, build_rethinking_parser()))  # every flag is checked before anything is written


if __name__ == "__main__":
    sys.exit(main())
