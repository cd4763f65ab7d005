"""``python -m study.confirm <study folder>``: the confirmation of a finished search (``study.lottery``
runs it at its end unless ``--no-confirm``); what it runs: ``study.confirmation``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import pandas as pd


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
    from study.course import run_study
    return run_study(opts, search=False)


if __name__ == "__main__":
    sys.exit(main())
