"""``python -m study.rethinking``: does a pruned network need its inherited weights?

Liu et al. (ICLR 2019) found that a pruned architecture trained from scratch (Scratch-E: the dense
network's epochs; Scratch-B: the same training FLOPs) matches fine-tuning the weights it inherited,
structured pruning above all.  This study makes that testable with the lottery study's machinery:
the same pipeline (dense pretraining, pruning as cached artifacts), one Optuna search of the
learning rate per regime, each regime in its own LR range (fine-tuning searches lower LRs), Ray Tune
trials, MLflow runs, Parquet tables, the confirmation on fresh seeds and the verdicts
(Scratch-E vs fine-tune, Scratch-B vs fine-tune).

Every flag of ``study.lottery`` applies; only the defaults differ (``study.config.PRESETS``): the
pruning is structured (``--method l1-filter``, half of every conv's filters), pretraining runs at
a fixed LR (``--lr-coupling retrain``) so that the searched LR is the retraining's own, and the
confirmation compares each regime at its own best LR (no fixed-LR conditions, no sparsity sweep).
"""
from __future__ import annotations

import sys
from typing import Sequence

from study.cli import parse


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(argv, "rethinking")  # every flag is checked before anything is written
    from study.course import run_study
    return run_study(cfg)


if __name__ == "__main__":
    sys.exit(main())
