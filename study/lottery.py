"""``python -m study.lottery``: does a well-tuned learning rate remove the winning ticket's advantage?

One Optuna learning-rate search per retraining regime, run as Ray Tune trials; every trial is an
MLflow child run of the study's parent run and a row of ``results/trials.parquet``; the summary
compares each regime at its own best learning rate.
"""
from __future__ import annotations

import sys
from typing import Sequence

from study.options import parse


def main(argv: Sequence[str] | None = None) -> int:
    from study.course import run_study
    return run_study(parse(argv))  # every flag is checked before anything is written


if __name__ == "__main__":
    sys.exit(main())
