"""``python -m study.lottery``: does a well-tuned learning rate remove the winning ticket's advantage?

One Optuna learning-rate search per retraining regime, run as Ray Tune trials; every trial is an
MLflow child run of the study's parent run and a row of ``results/trials.parquet``; the summary
compares each regime at its own best learning rate.
"""
from __future__ import annotations

import sys
from typing import Sequence

from study.cli import parse


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(argv, "lottery")  # every flag is checked before anything is written
    from study.course import run_study
    return run_study(cfg)


if __name__ == "__main__":
    sys.exit(main())
