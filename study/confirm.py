"""``python -m study.confirm <study folder>``: the confirmation of a finished search (``study.lottery``
runs it at its end unless ``--no-confirm``); what it runs: ``study.confirmation``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from study.cli import confirm_parser


def main(argv: Sequence[str] | None = None) -> int:
    """The study's own config, with the confirmation's flags given here."""
    from trainables.config import ConfigError
    p = confirm_parser()
    given = vars(p.parse_args(list(sys.argv[1:] if argv is None else argv)))
    study_dir = Path(given.pop("study_dir")).resolve()
    trials_file = study_dir / "results" / "trials.parquet"
    if not (study_dir / "study.json").exists() or not trials_file.exists():
        p.error(f"study_dir must be a study folder with study.json and results/trials.parquet ({study_dir})")
    from study.cli import load_study_config
    cfg = load_study_config(study_dir)
    try:
        cfg = cfg.updated(confirm=True, **given)
        cfg.confirmation.check()
    except ConfigError as e:
        p.error(str(e))
    import pyarrow.parquet as pq
    if "confirm" in set(pq.read_table(trials_file, columns=["phase"]).column("phase").to_pylist()):
        p.error(f"study_dir already has a confirmation ({study_dir}); its report: python -m analysis.report {study_dir}")
    cfg = cfg.updated(root=str(study_dir.parent), name=study_dir.name)
    from study.course import run_study
    return run_study(cfg, search=False)


if __name__ == "__main__":
    sys.exit(main())
