"""Trial records -> Parquet tables with explicit schemas (pyarrow).

``results/trials.parquet``: one row per trial, with the pruning ``method``, the epochs of the
regime's own training (``train_epochs``) and, from the record's ``efficiency`` dict, the pruned and
dense parameter counts, forward FLOPs per example and inference latency (null in older records).
``results/epochs.parquet``: one row per trial, training stage (pretrain, imp_round_<r>, final) and
epoch.  Both are rebuilt from the trial records in ``records/`` (one JSON file per trial, keyed by
trial id), so a trial is counted once however often the tables are written; writes are atomic.
"""
from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.storage import atomic_path

TRIALS_SCHEMA = pa.schema([
    ("study", pa.string()), ("phase", pa.string()), ("condition", pa.string()), ("regime", pa.string()),
    ("trial_id", pa.string()), ("status", pa.string()), ("lr", pa.float64()), ("log10_lr", pa.float64()), ("seed", pa.int64()),
    ("reinit_seed", pa.int64()), ("optuna_study", pa.string()), ("optuna_trial", pa.int64()),
    ("dataset", pa.string()), ("model", pa.string()), ("widths", pa.string()), ("epochs", pa.int64()),
    ("batch_size", pa.int64()), ("schedule", pa.string()), ("warmup_epochs", pa.int64()),
    ("momentum", pa.float64()), ("weight_decay", pa.float64()), ("lr_coupling", pa.string()),
    ("pretrain_lr", pa.float64()), ("prune_scope", pa.string()), ("rounds", pa.int64()),
    ("prune_round", pa.int64()), ("rewind_epoch", pa.int64()), ("target_sparsity", pa.float64()), ("achieved_sparsity", pa.float64()),
    ("layer_sparsity", pa.map_(pa.string(), pa.float64())), ("val_acc", pa.float64()),
    ("test_acc", pa.float64()), ("train_loss", pa.float64()), ("diverged", pa.bool_()),
    ("diverged_stage", pa.string()), ("wall_seconds", pa.float64()),
    ("method", pa.string()), ("train_epochs", pa.int64()), ("params", pa.int64()), ("dense_params", pa.int64()),
    ("flops", pa.int64()), ("dense_flops", pa.int64()), ("latency_ms", pa.float64()),
    ("dense_latency_ms", pa.float64()), ("init_artifact", pa.string()),
    ("pretrained_artifact", pa.string()), ("mask_artifact", pa.string()), ("rewind_artifact", pa.string()),
    ("reinit_artifact", pa.string()), ("trial_hash", pa.string()), ("study_hash", pa.string()),
    ("mlflow_run_id", pa.string()), ("error", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")), ("finished_at", pa.timestamp("ms", tz="UTC")),
])

EPOCHS_SCHEMA = pa.schema([
    ("study", pa.string()), ("phase", pa.string()), ("condition", pa.string()), ("regime", pa.string()),
    ("trial_id", pa.string()), ("lr", pa.float64()), ("seed", pa.int64()), ("prune_round", pa.int64()),
    ("stage", pa.string()), ("epoch", pa.int64()),
    ("epoch_lr", pa.float64()), ("train_loss", pa.float64()), ("val_acc", pa.float64()),
    ("test_acc", pa.float64()), ("sparsity", pa.float64()), ("diverged", pa.bool_()),
    ("seconds", pa.float64()), ("artifact", pa.string()),
])


def _ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, tz=timezone.utc) if t else None


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


def load_records(study_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    rec_dir = Path(study_dir) / "records"
    if not rec_dir.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(rec_dir.glob("*.json"))]


def trial_row(r: dict[str, Any]) -> dict[str, Any]:
    pipe, arts, seeds = r.get("pipeline", {}), r.get("artifacts", {}), r.get("seeds", {})
    lr = r.get("lr")
    eff = r.get("efficiency") or {}
    return {
        "study": r["study"], "phase": r.get("phase", "search"), "condition": r.get("condition"),
        "regime": r["regime"], "trial_id": r["trial_id"], "status": r.get("status", "completed"), "lr": _num(lr),
        "log10_lr": math.log10(lr) if lr else None, "seed": r.get("seed"),
        "reinit_seed": seeds.get("reinit_seed"), "optuna_study": r.get("optuna_study"),
        "optuna_trial": r.get("optuna_trial"), "dataset": pipe.get("dataset"), "model": pipe.get("model"),
        "widths": ",".join(map(str, pipe["widths"])) if pipe.get("widths") else None,
        "epochs": pipe.get("epochs"), "batch_size": pipe.get("batch_size"), "schedule": pipe.get("schedule"),
        "warmup_epochs": pipe.get("warmup_epochs"), "momentum": _num(pipe.get("momentum")),
        "weight_decay": _num(pipe.get("weight_decay")), "lr_coupling": pipe.get("lr_coupling"),
        "pretrain_lr": _num(pipe.get("pretrain_lr")), "prune_scope": pipe.get("prune_scope"),
        "rounds": pipe.get("rounds"), "prune_round": r.get("prune_round", pipe.get("rounds")),
        "rewind_epoch": seeds.get("rewind_epoch"),
        "target_sparsity": _num(pipe.get("target_sparsity")),
        "achieved_sparsity": _num(r.get("achieved_sparsity")),
        "layer_sparsity": list((r.get("layer_sparsity") or {}).items()),
        "val_acc": _num(r.get("val_acc")), "test_acc": _num(r.get("test_acc")),
        "train_loss": _num(r.get("train_loss")), "diverged": bool(r.get("diverged", False)),
        "diverged_stage": r.get("diverged_phase"), "wall_seconds": _num(r.get("wall_seconds")),
        "method": r.get("method"), "train_epochs": _int(r.get("train_epochs")),
        "params": _int(eff.get("params")), "dense_params": _int(eff.get("dense_params")),
        "flops": _int(eff.get("flops")), "dense_flops": _int(eff.get("dense_flops")),
        "latency_ms": _num(eff.get("latency_ms")), "dense_latency_ms": _num(eff.get("dense_latency_ms")),
        "init_artifact": arts.get("init"), "pretrained_artifact": arts.get("pretrained"),
        "mask_artifact": arts.get("mask"), "rewind_artifact": arts.get("rewind"),
        "reinit_artifact": arts.get("reinit"), "trial_hash": r.get("trial_hash"),
        "study_hash": r.get("study_hash"), "mlflow_run_id": r.get("mlflow_run_id"),
        "error": r.get("error"), "started_at": _ts(r.get("started_at")), "finished_at": _ts(r.get("finished_at")),
    }


def epoch_rows(r: dict[str, Any]) -> Iterable[dict[str, Any]]:
    base = {"study": r["study"], "phase": r.get("phase", "search"), "condition": r.get("condition"),
            "regime": r["regime"], "trial_id": r["trial_id"], "lr": _num(r.get("lr")), "seed": r.get("seed"),
            "prune_round": r.get("prune_round", r.get("pipeline", {}).get("rounds"))}
    stages = [(p["name"], p["artifact"], p["sparsity"], p["history"]) for p in r.get("phases", [])]
    stages.append(("final", None, r.get("achieved_sparsity"), r.get("history", [])))
    for stage, artifact, sp, history in stages:
        for e in history:
            yield {**base, "stage": stage, "epoch": e["epoch"], "epoch_lr": e["lr"],
                   "train_loss": _num(e["train_loss"]), "val_acc": e["val_acc"], "test_acc": e["test_acc"],
                   "sparsity": _num(sp), "diverged": bool(e["diverged"]), "seconds": e.get("seconds"),
                   "artifact": artifact}


def _write(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class TableWriter:
    """The tables of a study that grows one trial at a time, at a cost per trial that does not grow
    with the study: each record becomes its rows once (Arrow record batches, keyed by trial id, so a
    re-finalised trial replaces its rows), and both files are rewritten from the batches at most every
    ``every_s`` seconds (checked when a trial is added) and on ``flush``.  ``write_tables`` rebuilds
    them from the records on disk, as the driver does when it stops; between two writes the records in
    ``records/`` are ahead."""

    def __init__(self, study_dir: str | os.PathLike[str], records: Iterable[dict[str, Any]] = (),
                 every_s: float = 10.0):
        self.out, self.every_s = Path(study_dir) / "results", every_s
        self.trials: dict[str, pa.RecordBatch] = {}
        self.epochs: dict[str, pa.RecordBatch] = {}
        for r in records:
            self._convert(r)
        self.dirty, self.written_at = False, time.monotonic()

    def _convert(self, record: dict[str, Any]) -> None:
        tid = record["trial_id"]
        self.trials[tid] = pa.RecordBatch.from_pylist([trial_row(record)], schema=TRIALS_SCHEMA)
        self.epochs[tid] = pa.RecordBatch.from_pylist(list(epoch_rows(record)), schema=EPOCHS_SCHEMA)

    def add(self, record: dict[str, Any]) -> None:
        self._convert(record)
        self.dirty = True
        if time.monotonic() - self.written_at >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if not self.dirty:
            return
        for batches, schema, name in ((self.trials, TRIALS_SCHEMA, "trials"), (self.epochs, EPOCHS_SCHEMA, "epochs")):
            _write(pa.Table.from_batches(list(batches.values()), schema=schema).combine_chunks(),
                   self.out / f"{name}.parquet")
        self.dirty, self.written_at = False, time.monotonic()


def write_tables(study_dir: str | os.PathLike[str],
                 records: list[dict[str, Any]] | None = None) -> tuple[pa.Table, pa.Table]:
    """Rebuild ``results/trials.parquet`` and ``results/epochs.parquet`` from the trial records
    (those given, else every record in the study folder)."""
    records = load_records(study_dir) if records is None else records
    trials = pa.Table.from_pylist([trial_row(r) for r in records], schema=TRIALS_SCHEMA)
    epochs = pa.Table.from_pylist([row for r in records for row in epoch_rows(r)], schema=EPOCHS_SCHEMA)
    out = Path(study_dir) / "results"
    _write(trials, out / "trials.parquet")
    _write(epochs, out / "epochs.parquet")
    return trials, epochs
