"""Trial records -> Parquet tables with explicit schemas (pyarrow).

``results/trials.parquet``: one row per trial, its columns made from the fields of
``trainables.records.TrialRecord`` (the spec, the study's pipeline settings, derived seeds, artifact
names, the efficiency figures: pruned and dense parameters, forward FLOPs per example, latency).
``results/epochs.parquet``: one row per trial, training stage (pretrain, imp_round_<r>, final) and
epoch.  Both are rebuilt from the trial records in ``records/`` (one JSON file per trial, keyed by
trial id), so a trial is counted once however often the tables are written; writes are atomic.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.config import DataConfig, ModelConfig, PruningConfig, TrainingConfig
from trainables.record_store import load_records
from trainables.records import Artifacts, DerivedSeeds, Efficiency, TrialRecord, TrialSpec
from trainables.storage import atomic_path

_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def _arrow_type(annotation: str) -> pa.DataType:
    """The column type of a field: its Python type; a tuple (widths, layers) as comma-separated text."""
    base = str(annotation).split("|")[0].strip()
    return pa.string() if base.startswith("tuple") else _ARROW[base]


def _text(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ",".join("=".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x) for x in v)
    return v


def _columns() -> list[tuple[str, pa.DataType, Callable[[TrialRecord], Any]]]:
    """The trials table's columns, each from a field: the spec's, the study's pipeline settings, the
    derived seeds, the artifacts (``<name>_artifact``), the efficiency figures and the record's own."""
    cols: list[tuple[str, pa.DataType, Callable[[TrialRecord], Any]]] = [
        ("study", pa.string(), lambda r: r.study), ("trial_id", pa.string(), lambda r: r.trial_id),
        ("status", pa.string(), lambda r: r.status)]
    for f in fields(TrialSpec):
        if f.name == "seeds":
            cols.append(("seed", pa.int64(), lambda r: r.spec.seed))
        else:
            cols.append((f.name, _arrow_type(f.type), lambda r, n=f.name: getattr(r.spec, n)))
    cols.append(("log10_lr", pa.float64(), lambda r: math.log10(r.spec.lr) if r.spec.lr > 0 else None))
    for part in (DataConfig, ModelConfig, TrainingConfig, PruningConfig):
        cols += [(f.name, _arrow_type(f.type), lambda r, n=f.name: _text(r.settings.get(n)))
                 for f in fields(part) if f.name != "data_dir"]
    for attr, cls, suffix in (("seeds", DerivedSeeds, ""), ("artifacts", Artifacts, "_artifact"),
                              ("efficiency", Efficiency, "")):
        cols += [(f.name + suffix, _arrow_type(f.type), lambda r, a=attr, n=f.name: getattr(getattr(r, a), n))
                 for f in fields(cls)]
    cols.append(("layer_sparsity", pa.map_(pa.string(), pa.float64()), lambda r: list(r.layer_sparsity.items())))
    nested = {"study", "trial_id", "status", "spec", "settings", "seeds", "artifacts", "efficiency", "stages",
              "history", "layer_sparsity"}
    for f in fields(TrialRecord):
        if f.name in nested:
            continue
        if f.name.endswith("_at"):
            cols.append((f.name, pa.timestamp("ms", tz="UTC"), lambda r, n=f.name: _ts(getattr(r, n))))
        else:
            cols.append((f.name, _arrow_type(f.type), lambda r, n=f.name: getattr(r, n)))
    names = [c[0] for c in cols]
    if len(set(names)) != len(names):  # two fields would make one column
        raise RuntimeError(f"trials table: repeated columns {sorted({n for n in names if names.count(n) > 1})}")
    return cols


TRIAL_COLUMNS = _columns()
TRIALS_SCHEMA = pa.schema([(name, kind) for name, kind, _ in TRIAL_COLUMNS])

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


def trial_row(r: TrialRecord) -> dict[str, Any]:
    return {name: get(r) for name, _, get in TRIAL_COLUMNS}


def epoch_rows(r: TrialRecord) -> Iterable[dict[str, Any]]:
    s = r.spec
    base = {"study": r.study, "phase": s.phase, "condition": s.condition, "regime": s.regime,
            "trial_id": r.trial_id, "lr": s.lr, "seed": s.seed, "prune_round": s.prune_round}
    stages = [(st.name, st.artifact, st.sparsity, st.history) for st in r.stages]
    stages.append(("final", None, r.achieved_sparsity, r.history))
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

    def __init__(self, study_dir: str | os.PathLike[str], records: Iterable[TrialRecord] = (),
                 every_s: float = 10.0):
        self.out, self.every_s = Path(study_dir) / "results", every_s
        self.trials: dict[str, pa.RecordBatch] = {}
        self.epochs: dict[str, pa.RecordBatch] = {}
        for r in records:
            self._convert(r)
        self.dirty, self.written_at = False, time.monotonic()

    def _convert(self, record: TrialRecord) -> None:
        tid = record.trial_id
        self.trials[tid] = pa.RecordBatch.from_pylist([trial_row(record)], schema=TRIALS_SCHEMA)
        self.epochs[tid] = pa.RecordBatch.from_pylist(list(epoch_rows(record)), schema=EPOCHS_SCHEMA)

    def add(self, record: TrialRecord) -> None:
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
                 records: list[TrialRecord] | None = None) -> tuple[pa.Table, pa.Table]:
    """Rebuild ``results/trials.parquet`` and ``results/epochs.parquet`` from the trial records
    (those given, else every record in the study folder)."""
    records = load_records(study_dir) if records is None else records
    trials = pa.Table.from_pylist([trial_row(r) for r in records], schema=TRIALS_SCHEMA)
    epochs = pa.Table.from_pylist([row for r in records for row in epoch_rows(r)], schema=EPOCHS_SCHEMA)
    out = Path(study_dir) / "results"
    _write(trials, out / "trials.parquet")
    _write(epochs, out / "epochs.parquet")
    return trials, epochs
