"""Driver-side Ray Tune callback: trial records -> MLflow child runs, Parquet tables, progress.

It runs in the driver, so MLflow and Parquet are written by one process; a trial's own record
file (written by the trainable) is the single source of its results, enriched here with its
status, MLflow run id and Optuna trial number.
"""
from __future__ import annotations

import math
import re
from collections import Counter
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from analysis.tables import TableWriter
from study.config import optuna_study_name
from study.runtime import DRIVER_LOG
from study.tracking import MlflowTracker
from trainables.storage import Storage, WriteFailure, storage_failure
from trainables.records import TrialRecord, TrialSpec
from trainables.record_store import RecordStore, load_records
from trainables.records import DamagedRecord, RunKey


class DeterministicFailure(Exception):
    """The first trials of a group failed with one and the same error: the rest would too."""


# trials of a group (a regime's search, or its confirmation) that must fail with the same error, with
# none completed, before the study stops: a lost node's error names its actor, so it never repeats
FAILURES_TO_STOP = 2


def error_text(trial) -> str:
    """A failed trial's latest error: Tune appends each failure to error.txt (``Failure # k ...``
    blocks), in the driver's staging folder first (``error_file``), synced to the trial's storage
    folder later."""
    for where in (getattr(trial, "error_file", None), getattr(trial, "path", None) and Path(trial.path, "error.txt")):
        try:
            text = Path(where).read_text() if where else ""
        except OSError:
            continue
        if text.strip():
            return re.split(r"^Failure # \d+.*$", text, flags=re.M)[-1].strip()
    return "trial failed"


# Ray's words for a trial whose process is gone (ray.exceptions.ActorDiedError and the GCS's reasons)
# or cannot be reached (ActorUnavailableError: its node or process stopped answering)
ACTOR_DIED = ("The actor died unexpectedly", "The actor is dead", "The actor died because")
ACTOR_UNAVAILABLE = "The actor is temporarily unavailable"
NODE_DIED = "because its node has died"


def lost_process(text: str) -> bool:
    """The trial's process or node was lost (not an error of the trial's own code)."""
    return ACTOR_UNAVAILABLE in text or any(s in text for s in ACTOR_DIED)


def failure_line(text: str, node: str | None = None) -> str:
    """One line for a failed attempt: a lost node, a dead worker process or one that stopped
    answering named as such, with the node's address (from Ray's error, else ``node``: where the
    trial last reported from); otherwise the error's last line."""
    ip = re.search(r"^\s*ip: (\S+)", text, flags=re.M)
    pid = re.search(r"^\s*pid: (\d+)", text, flags=re.M)
    at = ip.group(1) if ip else node
    if NODE_DIED in text:
        return f"lost node {at or '(address unknown)'}: the trial's node died (its worker with it)"
    if ACTOR_UNAVAILABLE in text:
        return (f"lost contact with the trial's worker{' on node ' + at if at else ''} "
                f"(its node or its process stopped answering)")
    if lost_process(text):
        return (f"the trial's worker process{' ' + pid.group(1) if pid else ''}{' on ' + at if at else ''} died "
                f"(killed, or out of memory)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else "trial failed"
    return last if len(last) <= 200 else last[:197] + "..."


class StopOnDeterministicFailure(tune.Stopper):
    """Stops the experiment once its callback has seen a deterministic failure."""

    def __init__(self, callback: "StudyCallback"):
        self.callback = callback

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.callback.failure is not None


class Progress:
    """Trials done / running / pending per group (regime, phase) and the best search result so far."""

    def __init__(self, totals: dict[str, int], out: TextIO = sys.stdout):
        self.totals, self.out = dict(totals), out
        self.started: dict[str, set[str]] = {}
        self.finished: dict[str, set[str]] = {}
        self.best: dict[str, tuple[float, float]] = {}
        self.t0 = self.last_line = time.time()

    HEARTBEAT_S = 30.0

    def start(self, regime: str, trial_id: str) -> None:
        self.started.setdefault(regime, set()).add(trial_id)
        self.last_line = time.time()

    def heartbeat(self, regime: str) -> None:
        """A status line when nothing has been printed for a while (long trials)."""
        if time.time() - self.last_line < self.HEARTBEAT_S:
            return
        self.last_line = time.time()
        running = len(self.started.get(regime, set()) - self.finished.get(regime, set()))
        print(f"[{time.time() - self.t0:6.0f}s] {regime} {len(self.finished.get(regime, ()))}/{self.totals.get(regime, 0)} "
              f"done, {running} running ...", file=self.out, flush=True)

    @staticmethod
    def where(spec: TrialSpec, seed: bool = False) -> str:
        """The run in a progress line: its LR; with its condition and seed in the confirmation (or
        with ``seed``)."""
        return f"lr {spec.lr:.3g}" + (f"{' ' + spec.condition if spec.condition else ''} seed {spec.seed}"
                                      if spec.condition or seed else "")

    def retry(self, spec: TrialSpec, attempt: int, attempts: int, line: str) -> None:
        """A failed attempt that Tune retries from the trial's last checkpoint: one line."""
        self.last_line = time.time()
        print(f"[{time.time() - self.t0:6.0f}s] {spec.group} | {self.where(spec, seed=True)}: attempt {attempt} of {attempts} "
              f"failed, retrying: {line} (trace: {DRIVER_LOG})", file=self.out, flush=True)

    def finish(self, record: TrialRecord, note: str = "") -> None:
        spec, regime = record.spec, record.spec.group
        self.started.setdefault(regime, set()).add(record.trial_id)
        self.finished.setdefault(regime, set()).add(record.trial_id)
        val = record.val_acc
        if (spec.phase == "search" and val is not None and not math.isnan(val)
                and (regime not in self.best or val > self.best[regime][0])):
            self.best[regime] = (val, spec.lr)
        done = len(self.finished[regime])
        running = len(self.started[regime] - self.finished[regime])
        pending = max(0, self.totals.get(regime, 0) - len(self.started[regime]))
        if not record.completed:
            what = f"ERROR ({note}): {record.error} (trace: {DRIVER_LOG})" if note else f"ERROR: {record.error}"
        else:
            what = (f"val {record.val_acc:.4f} test {record.test_acc:.4f} "
                    f"sparsity {record.achieved_sparsity or 0:.3f}"
                    + (f" DIVERGED ({record.diverged_stage})" if record.diverged else "")
                    + (f" (trained before by {record.reused_from})" if record.reused_from else ""))
        best = ", ".join(f"{r} {v:.4f}@{lr:.3g}" for r, (v, lr) in self.best.items())
        self.last_line = time.time()
        where = self.where(spec)
        if spec.condition and spec.prune_round != record.settings.get("rounds", spec.prune_round):
            where += f" round {spec.prune_round}"
        print(f"[{time.time() - self.t0:6.0f}s] {regime} {done}/{self.totals.get(regime, 0)} done, {running} running, "
              f"{pending} pending | {where}: {what}" + (f" | best val: {best}" if best else ""),
              file=self.out, flush=True)


class StudyCallback(tune.Callback):
    def __init__(self, study: str, study_dir: Path, study_hash: str, tracker: MlflowTracker,
                 progress: Progress, settings: dict[str, Any], shared: Storage | None = None):
        self.study, self.study_dir, self.study_hash = study, Path(study_dir), study_hash
        self.tracker, self.progress, self.settings = tracker, progress, settings
        self.shared = shared or Storage(str(self.study_dir))  # where trials write their records
        self.store = RecordStore(self.shared, self.study_dir)
        self.failures: dict[str, dict[str, tuple]] = {}  # group -> trial id -> (trial, its latest error line)
        self.failure: str | None = None  # why the study must stop, once the same error repeats
        self._load()

    def _load(self) -> None:
        self.runs: dict[str, str] = {}
        self.records = {r.trial_id: r for r in load_records(self.study_dir)}  # every regime's so far
        self.tables = TableWriter(self.study_dir, self.records.values())

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles callbacks into its experiment; a restored one reloads what is on disk."""
        state = self.__dict__.copy()
        for key in ("runs", "records", "failures", "tables"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.failures = {}
        self._load()

    def _optuna_study(self, spec: TrialSpec) -> str | None:
        return optuna_study_name(self.study, spec.regime) if spec.phase == "search" else None

    def _run_id(self, trial_id: str, spec: TrialSpec) -> str:
        if trial_id not in self.runs:
            self.runs[trial_id] = self.tracker.start_child(self.study, trial_id, spec, self.settings,
                                                           self._optuna_study(spec))
        return self.runs[trial_id]

    def catch_up(self) -> int:
        """Finalise records that trials wrote but the driver never processed (it was killed in
        between, or a driver's copy was damaged); returns how many.  Keyed by record id, so nothing
        is counted twice."""
        done = 0
        for trial_id in self.store.trial_ids():
            try:
                records = self.store.read_trial(trial_id) or []
            except DamagedRecord:
                continue  # set aside and named; the trial is not done
            for record in records:
                if record.trial_id not in self.records:
                    self.finalise(record)
                    done += 1
        return done

    def on_step_end(self, iteration, trials, **info) -> None:
        running = [t for t in trials if t.status == "RUNNING"]
        if running:
            self.progress.heartbeat(TrialSpec.from_config(running[0].config).group)

    def search_runs(self) -> Counter:
        """Search runs recorded so far per regime, read from disk (once for every regime): after
        ``Tuner.restore`` the events go to Tune's own unpickled copy of this callback."""
        return Counter(r.spec.regime for r in load_records(self.study_dir) if r.spec.phase == "search")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """An MLflow run (and a place in the progress view) for each of the trial's seeds."""
        spec = TrialSpec.from_config(trial.config)
        for rid, one in zip(spec.record_ids(trial.trial_id), spec.per_seed()):
            self.progress.start(spec.group, rid)
            self._run_id(rid, one)

    def finalise(self, record: TrialRecord, note: str = "") -> TrialRecord:
        """Enrich the record, close its MLflow run, then write the driver's copy (the source of the
        Parquet tables): a record on disk means its run is closed too, so an interrupted driver
        redoes at most the MLflow step."""
        spec = record.spec
        record = record.replace(
            mlflow_run_id=self._run_id(record.trial_id, spec), optuna_study=self._optuna_study(spec),
            study_hash=self.study_hash, trial_hash=RunKey.of(spec, self.settings).hash)
        if record.completed:
            self.tracker.finish_child(record.mlflow_run_id, record)
        else:
            self.tracker.fail_child(record.mlflow_run_id, record.error or "")
        self.store.write_final(record)
        self.records[record.trial_id] = record
        self.tables.add(record)
        self.progress.finish(record, note)
        return record

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finish(trial.trial_id, TrialSpec.from_config(trial.config))

    def finish(self, trial_id: str, spec: TrialSpec, records: list[TrialRecord] | None = None) -> None:
        """Finalise the records the trial ``trial_id`` (asked ``spec``) left in the store (read
        there, unless the caller that wrote them passes ``records``): a Tune trial, or a search
        suggestion answered from an identical trial's records."""
        try:
            records = self.store.read_trial(trial_id) if records is None else records
        except DamagedRecord:
            return self.record_error(spec, trial_id, "its record file was damaged")
        if records is None:  # ended without a record: count it as an error, never silently
            return self.record_error(spec, trial_id, "stopped with the study" if self.failure else
                                     "trial ended without writing its record")
        for record in records:
            if record.trial_id in self.records and self.records[record.trial_id].completed:
                continue  # finished before an interruption, then re-run from a checkpoint: counted once
            self.finalise(record)

    def _error(self, trial, message: str, note: str = "") -> None:
        self.record_error(TrialSpec.from_config(trial.config), trial.trial_id, message, note)

    def record_error(self, spec: TrialSpec, trial_id: str, message: str, note: str = "") -> None:
        """An error record for each of the trial's seeds."""
        for rid, one in zip(spec.record_ids(trial_id), spec.per_seed()):
            if rid in self.records and self.records[rid].status == "error":
                continue  # recorded when the study stopped
            self.finalise(TrialRecord(self.study, rid, one, self.settings, status="error", error=message,
                                      finished_at=time.time()), note)

    def _note_failure(self, trial) -> str:
        """The failed attempt's line.  A write that cannot succeed (a full disk, a read-only folder)
        stops the study at once (``WriteFailure``; no error record, no retry into the same wall:
        ``--resume`` runs the trial again once the cause is fixed).  Otherwise the error is
        remembered: when the first FAILURES_TO_STOP trials of its group failed with the same one
        (not a lost process or node) and none completed, the study stops (retrying the rest is
        pointless)."""
        text = error_text(trial)
        wall = storage_failure(text)
        if wall is not None:
            raise WriteFailure(wall)
        node = trial.last_result.get("node_ip")  # where it last reported from
        group, line = TrialSpec.from_config(trial.config).group, failure_line(text, node)
        if lost_process(text):
            return line
        seen = self.failures.setdefault(group, {})
        seen[trial.trial_id] = (trial, line)
        completed = any(r.spec.group == group and r.completed for r in self.records.values())
        if (self.failure is None and not completed and len(seen) >= FAILURES_TO_STOP
                and len({why for _, why in seen.values()}) == 1):
            self.failure = f"{group}: its first {len(seen)} trials failed with the same error: {line}"
            for failed, why in seen.values():  # Tune stops them without another event: record them now
                self._error(failed, why)
        return line

    @staticmethod
    def _attempts(trial) -> tuple[int, int]:
        """(this attempt, attempts in all): Tune counts the failure before calling back."""
        failures = trial.run_metadata.num_failures
        return failures, max(failures, trial.max_failures + 1)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        line = self._note_failure(trial)  # a failure Tune retries from the last checkpoint
        self.progress.retry(TrialSpec.from_config(trial.config), *self._attempts(trial), line)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        line = self._note_failure(trial)
        attempt, attempts = self._attempts(trial)
        self._error(trial, line, f"attempt {attempt} of {attempts}, none left")
