"""The study's trial records, in one place.

- A trial's own copy: ``<shared>/trial-records/<Tune trial id>.json``, every seed's record of the
  trial in one file, written by the trial on whichever node it ran (``write_trial``), read by the
  driver (``read_trial``, ``trial_ids``).  A stale worker of an interrupted run may still write
  here, never over the driver's copy.
- The driver's finalised copy: ``<study>/records/<record id>.json``, one per seed, enriched with its
  status, MLflow run, Optuna trial and hashes (``write_final``); the source of the Parquet tables
  (``load_records``).

Every file carries the sha256 of its records (``trainables.records``); a damaged one (truncated,
changed, unreadable) is moved to a ``damaged/`` folder beside it (kept for inspection), named in one
line and left out.  Nothing heavy is imported here.
"""
from __future__ import annotations

import os
from pathlib import Path

from trainables.records import DamagedRecord, TrialRecord, parse_records, record_text, records_text
from trainables.storage import DAMAGED, Storage, atomic_path

TRIAL_RECORDS = "trial-records"
FINAL_RECORDS = "records"


class RecordStore:
    """The trials' copies below the shared root ``shared``; the driver's below ``study_dir``."""

    def __init__(self, shared: Storage, study_dir: str | os.PathLike[str] | None = None):
        self.shared, self.study_dir = shared, Path(study_dir) if study_dir is not None else None

    # -- the trials' own copies ----------------------------------------------------------------
    def trial_location(self, trial_id: str) -> str:
        return self.shared.join(TRIAL_RECORDS, f"{trial_id}.json")

    def write_trial(self, trial_id: str, records: list[TrialRecord]) -> None:
        """The trial's records, one per seed, in one file, whole or not at all."""
        self.shared.write_text(self.trial_location(trial_id), records_text(records))

    def trial_ids(self) -> list[str]:
        """The trials that wrote their records (not those being written: ``atomic_path``'s '.' files)."""
        return [n.removesuffix(".json") for n in self.shared.list_names(self.shared.join(TRIAL_RECORDS), ".json")
                if not n.startswith(".")]

    def read_trial(self, trial_id: str, set_aside: bool = True) -> list[TrialRecord] | None:
        """The trial's records; None if it wrote none.  A damaged file raises ``DamagedRecord``, after
        (with ``set_aside``) moving it to ``trial-records/damaged/`` and naming it in one line."""
        where = self.trial_location(trial_id)
        if not self.shared.exists(where):
            return None
        try:
            return parse_records(self.shared.read_bytes(where))
        except DamagedRecord as e:
            if set_aside:
                aside = self.shared.set_aside(TRIAL_RECORDS, f"{trial_id}.json")
                print(f"the record file of trial {trial_id} was damaged ({e}): moved to "
                      f"{TRIAL_RECORDS}/{DAMAGED}/{aside}", flush=True)
            raise

    # -- the driver's finalised copies --------------------------------------------------------
    def write_final(self, record: TrialRecord) -> None:
        assert self.study_dir is not None, "the driver's records need the study folder"
        with atomic_path(self.study_dir / FINAL_RECORDS / f"{record.trial_id}.json") as tmp:
            tmp.write_text(record_text(record))


def load_records(study_dir: str | os.PathLike[str]) -> list[TrialRecord]:
    """The driver's copies of the study's trial records (``records/``), by record id: each checked
    against its sha256 (a copy without one, written before digests, is trusted).  A damaged copy is
    moved aside to ``records/damaged/`` (kept), named in one line and left out: its trial counts as
    not done, so the driver finalises it again from the trial's own copy, or trains it again."""
    rec_dir = Path(study_dir) / FINAL_RECORDS
    if not rec_dir.exists():
        return []
    out: list[TrialRecord] = []
    for p in sorted(rec_dir.glob("*.json")):
        if p.name.startswith(".") or not p.is_file():  # a copy being written (atomic_path), or not a file
            continue
        try:
            out += parse_records(p.read_bytes())
        except FileNotFoundError:
            continue  # moved aside by another reader meanwhile
        except (OSError, DamagedRecord) as e:
            why = str(e) if isinstance(e, DamagedRecord) else f"cannot be read: {e.strerror or type(e).__name__}"
            _set_aside(p, why)
    return out


def _set_aside(path: Path, why: str) -> None:
    """Move a damaged record copy to ``records/damaged/`` and say so."""
    try:
        aside = Storage(str(path.parent.parent)).set_aside(FINAL_RECORDS, path.name)
    except FileNotFoundError:
        return  # another reader moved it first (and said so)
    except OSError as e:
        print(f"record {path.stem} was damaged ({why}) and cannot be moved aside ({e.strerror or type(e).__name__}): "
              f"left out; the trial counts as not done", flush=True)
        return
    print(f"record {path.stem} was damaged ({why}): moved to {FINAL_RECORDS}/{DAMAGED}/{aside}; the trial counts "
          f"as not done", flush=True)
