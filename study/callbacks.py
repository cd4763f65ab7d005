"""Driver-side Ray Tune callback: trial records -> MLflow child runs, Parquet tables, progress.

It runs in the driver, so MLflow and Parquet are written by one process; a trial's own record
file (written by the trainable) is the single source of its results, enriched here with its
status, MLflow run id and Optuna trial number.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from analysis.tables import load_records, write_tables
from study.tracking import MlflowTracker
from trainables.artifacts import spec_hash
from trainables.trainable import trial_spec


def label(config: dict[str, Any]) -> str:
    """Progress group of a trial: its regime in the search, ``<regime>/confirm`` in the confirmation."""
    return config["regime"] if config.get("phase", "search") == "search" else f"{config['regime']}/confirm"


class Progress:
    """Trials done / running / pending per group (regime, phase) and the best search result so far."""

    def __init__(self, totals: dict[str, int], out: TextIO = sys.stdout):
        self.totals, self.out = dict(totals), out
        self.started: dict[str, set[str]] = {}
        self.finished: dict[str, set[str]] = {}
        self.best: dict[str, tuple[float, float]] = {}
        self.t0 = time.time()

    HEARTBEAT_S = 30.0

    def start(self, regime: str, trial_id: str) -> None:
        self.started.setdefault(regime, set()).add(trial_id)
        self.last_line = time.time()

    def heartbeat(self, regime: str) -> None:
        """A status line when nothing has been printed for a while (long trials)."""
        if time.time() - getattr(self, "last_line", self.t0) < self.HEARTBEAT_S:
            return
        self.last_line = time.time()
        running = len(self.started.get(regime, set()) - self.finished.get(regime, set()))
        print(f"[{time.time() - self.t0:6.0f}s] {regime} {len(self.finished.get(regime, ()))}/{self.totals.get(regime, 0)} "
              f"done, {running} running ...", file=self.out, flush=True)

    def finish(self, record: dict[str, Any]) -> None:
        regime = label(record)
        self.started.setdefault(regime, set()).add(record["trial_id"])
        self.finished.setdefault(regime, set()).add(record["trial_id"])
        val = record.get("val_acc")
        if (record.get("phase", "search") == "search" and val is not None and not math.isnan(val)
                and (regime not in self.best or val > self.best[regime][0])):
            self.best[regime] = (val, record["lr"])
        done = len(self.finished[regime])
        running = len(self.started[regime] - self.finished[regime])
        pending = max(0, self.totals.get(regime, 0) - len(self.started[regime]))
        if record.get("status") == "error":
            what = f"ERROR {record.get('error', '')[:80]}"
        else:
            what = (f"val {record['val_acc']:.4f} test {record['test_acc']:.4f} "
                    f"sparsity {record.get('achieved_sparsity', 0):.3f}"
                    + (f" DIVERGED ({record.get('diverged_phase')})" if record.get("diverged") else ""))
        best = ", ".join(f"{r} {v:.4f}@{lr:.3g}" for r, (v, lr) in self.best.items())
        self.last_line = time.time()
        where = f"lr {record.get('lr', float('nan')):.3g}"
        if record.get("condition"):
            where += f" {record['condition']} seed {record.get('seed')}"
            if record.get("prune_round") != record.get("pipeline", {}).get("rounds", record.get("prune_round")):
                where += f" round {record['prune_round']}"
        print(f"[{time.time() - self.t0:6.0f}s] {regime} {done}/{self.totals.get(regime, 0)} done, {running} running, "
              f"{pending} pending | {where}: {what}" + (f" | best val: {best}" if best else ""),
              file=self.out, flush=True)


class StudyCallback(tune.Callback):
    def __init__(self, study: str, study_dir: Path, study_hash: str, tracker: MlflowTracker,
                 progress: Progress, trial_params: dict[str, Any], optuna_study: str | None = None):
        self.study, self.study_dir, self.study_hash = study, Path(study_dir), study_hash
        self.tracker, self.progress, self.trial_params = tracker, progress, trial_params
        self.optuna_study = optuna_study
        self.runs: dict[str, str] = {}
        self.records = {r["trial_id"]: r for r in load_records(self.study_dir)}  # every regime's so far

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self.runs:
            c = trial_spec(trial.config)
            params = {"regime": c["regime"], "lr": c["lr"], "log10_lr": math.log10(c["lr"]), "seed": c["seed"],
                      "phase": c.get("phase", "search"), **self.trial_params}
            if c.get("phase", "search") == "search":
                params.update(optuna_trial=c.get("optuna_trial"), optuna_study=self.optuna_study)
            else:
                params.update(condition=c.get("condition"), prune_round=c.get("prune_round"))
            self.runs[trial.trial_id] = self.tracker.start_child(
                self.study, trial.trial_id, c["regime"], c.get("phase", "search"), params, c.get("condition"))
        return self.runs[trial.trial_id]

    def on_step_end(self, iteration, trials, **info) -> None:
        running = [t for t in trials if t.status == "RUNNING"]
        if running:
            self.progress.heartbeat(label(trial_spec(running[0].config)))

    def finished_count(self, regime: str, phase: str = "search") -> int:
        return sum(1 for r in self.records.values() if r["regime"] == regime and r.get("phase", "search") == phase)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.progress.start(label(trial_spec(trial.config)), trial.trial_id)
        self._run_id(trial)

    def _record_path(self, trial) -> Path:
        return self.study_dir / "records" / f"{trial.trial_id}.json"

    def _finalise(self, trial, record: dict[str, Any]) -> dict[str, Any]:
        c = trial_spec(trial.config)
        search = c.get("phase", "search") == "search"
        record.update(
            mlflow_run_id=self._run_id(trial), optuna_study=self.optuna_study if search else None,
            optuna_trial=c.get("optuna_trial"), study_hash=self.study_hash,
            trial_hash=spec_hash({"study": self.study_hash, **{k: v for k, v in c.items() if k != "optuna_trial"}}))
        path = self._record_path(trial)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp-driver")
        tmp.write_text(json.dumps(record, default=float))
        os.replace(tmp, path)
        self.records[record["trial_id"]] = record
        write_tables(self.study_dir, list(self.records.values()))
        self.progress.finish(record)
        return record

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        path = self._record_path(trial)
        if not path.exists():  # ended without a record: count it as an error, never silently
            return self._error(trial, "trial ended without writing its record")
        record = json.loads(path.read_text())
        record["status"] = "completed"
        self._finalise(trial, record)
        self.tracker.finish_child(record["mlflow_run_id"], record)

    def _error(self, trial, message: str) -> None:
        c = trial_spec(trial.config)
        record = {"study": self.study, "trial_id": trial.trial_id, "regime": c["regime"],
                  "phase": c.get("phase", "search"), "condition": c.get("condition"),
                  "prune_round": c.get("prune_round"), "lr": c["lr"], "seed": c["seed"], "status": "error",
                  "error": message, "diverged": False, "finished_at": time.time()}
        self._finalise(trial, record)
        self.tracker.fail_child(record["mlflow_run_id"], message)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        err = getattr(trial, "error_file", None) or ""
        text = ""
        try:
            text = Path(trial.path, "error.txt").read_text() if getattr(trial, "path", None) else ""
        except OSError:
            pass
        lines = [ln for ln in (text or str(err)).strip().splitlines() if ln.strip()]
        self._error(trial, lines[-1] if lines else "trial failed")
