"""Analysis of a study from its Parquet tables: tables, summary, statistics, figures, report.

``analysis.contrasts(study_dir)`` and ``analysis.study_kind(study_dir)`` read what a study compares
from its ``study.json`` (see ``analysis.design``).
"""
from analysis.design import contrasts, study_kind

__all__ = ["contrasts", "study_kind"]
