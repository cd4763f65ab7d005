"""MLflow layout of a study: one experiment, a parent run for the study, a child run per trial.

Children carry the tag ``mlflow.parentRunId`` (MLflow's nesting) and the tags study, regime,
phase and trial_id; a child is found again by its trial_id, so a resumed trial continues its run.
All calls go through ``MlflowClient`` with an explicit tracking URI (never the working directory).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trainables.records import TrialRecord, TrialSpec

BATCH = 1000  # MLflow's limit of metrics per log_batch call
# MLflow 3's UI opens an experiment of unknown kind on its GenAI (traces) overview; this kind opens
# it on the runs table, where the regimes are compared.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(f"{key}.", v))
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


class MlflowTracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: Path | None = None):
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location,
                                                               tags=EXPERIMENT_TAGS)
        else:
            self.experiment_id = exp.experiment_id
            for k, v in EXPERIMENT_TAGS.items():
                if exp.tags.get(k) != v:
                    self.client.set_experiment_tag(self.experiment_id, k, v)
        self.parent_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # Ray Tune pickles callbacks with its experiment state
        return {"uri": self.uri, "experiment_id": self.experiment_id, "parent_id": self.parent_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(self.uri)

    def find_run(self, **tags: str) -> str | None:
        flt = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1)
        return runs[0].info.run_id if runs else None

    def start_parent(self, study: str, params: dict[str, Any]) -> str:
        run_id = self.find_run(study=study, phase="study")
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=study,
                                         tags={"study": study, "phase": "study"})
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in _flat("", params).items()])
        self.parent_id = run_id
        return run_id

    def start_child(self, study: str, trial_id: str, spec: TrialSpec, settings: dict[str, Any],
                    optuna_study: str | None = None) -> str:
        """The trial's run (found again by its trial_id): tagged with its regime, phase and condition,
        its params the spec's fields and the study's pipeline settings."""
        run_id = self.find_run(trial_id=trial_id)
        if run_id is not None:
            return run_id
        name = f"{spec.regime} lr={spec.lr:.3g} seed={spec.seed}"
        tags = {"mlflow.parentRunId": self.parent_id or "", "study": study, "regime": spec.regime,
                "phase": spec.phase, "trial_id": trial_id}
        if spec.condition:
            tags["condition"] = spec.condition
            name += f" {spec.condition} round={spec.prune_round}"
        params = {**{k: v for k, v in asdict(spec).items() if k != "seeds" and v is not None},
                  "seed": spec.seed, "log10_lr": math.log10(spec.lr),
                  **({"optuna_study": optuna_study} if optuna_study else {}),
                  **{k: ("" if v is None else v) for k, v in settings.items()}}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _flat("", params).items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int]],
                    skip: Iterable[str] = ()) -> None:
        """Log (key, value, step) rows in few ``log_batch`` calls, each holding whole keys: a call is
        one transaction, so after an interruption a key is either fully logged or absent; keys in
        ``skip`` (those the run already has) are left out, which makes re-logging idempotent."""
        now = int(time.time() * 1000)
        by_key: dict[str, list[Metric]] = {}
        for k, v, step in metrics:
            if v is not None:
                by_key.setdefault(k, []).append(Metric(k, float(v), now, int(step)))
        for k in skip:
            by_key.pop(k, None)
        batch: list[Metric] = []
        for ms in by_key.values():
            if batch and len(batch) + len(ms) > BATCH:
                self.client.log_batch(run_id, metrics=batch)
                batch = []
            for i in range(0, len(ms), BATCH):  # a history longer than one call is split (rare)
                batch += ms[i:i + BATCH]
                if len(batch) >= BATCH:
                    self.client.log_batch(run_id, metrics=batch)
                    batch = []
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def finish_child(self, run_id: str, record: TrialRecord) -> None:
        """Per-epoch curves of every stage, the final metrics, artifact tags; then FINISHED.
        A run already FINISHED is left as it is (its trial was recorded before an interruption)."""
        run = self.client.get_run(run_id)
        if run.info.status == "FINISHED":
            return
        rows: list[tuple[str, float, int]] = []
        for stage in record.stages:
            for e in stage.history:
                rows += [(f"{stage.name}/{k}", e[k], e["epoch"]) for k in ("train_loss", "val_acc", "test_acc")]
        for e in record.history:
            rows += [(k, e[k], e["epoch"]) for k in ("train_loss", "val_acc", "test_acc")]
            rows.append(("epoch_lr", e["lr"], e["epoch"]))  # not "lr": that is the trial's param
        rows += [(k, v, 0) for k, v in record.metrics().items()]
        self.log_metrics(run_id, rows, skip=run.data.metrics)
        tags = [RunTag(f"artifact.{k}", v) for k, v in asdict(record.artifacts).items() if v is not None]
        tags += [RunTag("diverged", str(record.diverged)), RunTag("status", record.status)]
        if record.reused_from:  # answered from an identical trial's result, not trained again
            tags.append(RunTag("reused_from", record.reused_from))
        params = [Param(k, str(v)) for k, v in asdict(record.seeds).items() if v is not None]
        self.client.log_batch(run_id, params=params, tags=tags)
        self.client.set_terminated(run_id, "FINISHED")

    def fail_child(self, run_id: str, error: str) -> None:
        if self.client.get_run(run_id).info.status == "FAILED":
            return
        self.client.set_tag(run_id, "error", error[:5000])
        self.client.set_tag(run_id, "status", "error")
        self.client.set_terminated(run_id, "FAILED")

    def drop_unrecorded(self, recorded: set[str]) -> int:
        """Delete the child runs still RUNNING whose trial has no record (``recorded``: the trial ids
        that have one): trials a killed driver had started that no one will finish (its search
        suggestions made after Tune's last snapshot).  Returns how many."""
        if self.parent_id is None:
            return 0
        runs = self.client.search_runs(
            [self.experiment_id], max_results=50_000,
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'")
        orphans = [r for r in runs if r.data.tags.get("trial_id") not in recorded]
        for r in orphans:
            self.client.delete_run(r.info.run_id)
        return len(orphans)

    def finish_parent(self, metrics: dict[str, float], files: Iterable[tuple[Path, str | None]],
                      status: str = "FINISHED") -> None:
        """Summary metrics, and files as artifacts: (path, artifact folder or None for the root)."""
        if self.parent_id is None:
            return
        self.log_metrics(self.parent_id, [(k, v, 0) for k, v in metrics.items() if not _isnan(v)])
        for f, folder in files:
            if Path(f).exists():
                self.client.log_artifact(self.parent_id, str(f), folder)
        self.client.set_terminated(self.parent_id, status)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
