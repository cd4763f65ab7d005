"""What a trial is asked (``TrialSpec``) and what it produced (``TrialRecord``).

The trainable writes a ``TrialRecord`` as JSON; the driver adds its status, MLflow run, Optuna trial
and hashes, and turns it into an MLflow child run and Parquet rows.  The JSON, the MLflow params
and metrics and the trials table's columns all come from these fields.  Every record file carries the
sha256 of its records' canonical JSON (``records_text``, ``record_text``); ``parse_records`` refuses a
file that does not match it, or is not JSON or not a record, with ``DamagedRecord`` (a file without a
digest, written before digests, is trusted):

- a *phase* is where a trial belongs in the study: ``search`` or ``confirm``;
- a *stage* is a training run inside a trial: ``pretrain``, ``imp_round_<r>``, ``final``;
- a *condition* is how a confirmation trial's LR was chosen: ``tuned``, ``fixed_small``, ``fixed_large``.

Nothing heavy is imported here.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from trainables.config import plain
from trainables.hashing import canonical, sha256, spec_hash

PHASES = ("search", "confirm")
CONDITIONS = ("tuned", "fixed_small", "fixed_large")


@dataclass(frozen=True)
class TrialSpec:
    """What a trial is asked to train."""

    regime: str
    lr: float
    seeds: tuple[int, ...]  # the seeds trained (stacked where they can be): each seed its own record
    phase: str = "search"
    condition: str | None = None  # confirm trials only
    prune_round: int = 1  # the IMP round whose mask (or pruned network) the regime starts from
    optuna_trial: int | None = None  # search trials only: the Optuna trial that suggested the LR

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES} (got {self.phase!r})")
        if self.condition is not None and self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS} (got {self.condition!r})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"a trial trains one or more distinct seeds (got {self.seeds})")

    @property
    def seed(self) -> int:
        """The seed of a one-seed spec (every record's spec has one seed)."""
        if len(self.seeds) != 1:
            raise ValueError(f"a spec of {len(self.seeds)} seeds has no one seed")
        return self.seeds[0]

    def per_seed(self) -> list["TrialSpec"]:
        """One spec per seed: what each of the trial's records was asked."""
        return [dataclasses.replace(self, seeds=(s,)) for s in self.seeds]

    def record_ids(self, trial_id: str) -> list[str]:
        """The ids of the trial's records: the Tune trial's id for one seed, ``<id>-s<seed>`` for several."""
        return [trial_id] if len(self.seeds) == 1 else [f"{trial_id}-s{s}" for s in self.seeds]

    @property
    def group(self) -> str:
        """Progress group: the regime in the search, ``<regime>/confirm`` in the confirmation."""
        return self.regime if self.phase == "search" else f"{self.regime}/confirm"

    def as_config(self) -> dict[str, Any]:
        """The Ray Tune config that asks for this trial (plain values, JSON-ready)."""
        return {"spec": {**dataclasses.asdict(self), "seeds": list(self.seeds)}}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrialSpec":
        """From a Tune config: ``{"spec": {...}}`` (a grid of specs, the search's constants), with the
        search's sampled ``lr`` and ``optuna_trial`` beside it."""
        d = dict(config["spec"])
        for key in ("lr", "optuna_trial"):
            if key in config:
                d[key] = config[key]
        d["seeds"] = tuple(d["seeds"])
        d["lr"] = float(d["lr"])
        return cls(**d)


@dataclass(frozen=True)
class RunKey:
    """What determines a run's result: the regime, LR, seeds and IMP round asked and the pipeline's
    settings (not the phase, condition or Optuna trial that asked).  ``hash`` is the one answer to
    "has this configuration been trained?": for the searcher's repeated suggestions, the trainable's
    cache of trained results (``result`` artifacts) and the tables' ``trial_hash``."""

    regime: str
    lr: float
    seeds: tuple[int, ...]
    prune_round: int
    settings: dict[str, Any]

    @classmethod
    def of(cls, spec: TrialSpec, settings: dict[str, Any]) -> "RunKey":
        return cls(spec.regime, float(spec.lr), tuple(spec.seeds), spec.prune_round, dict(settings))

    def as_dict(self) -> dict[str, Any]:
        return {"regime": self.regime, "lr": self.lr, "seeds": list(self.seeds), "prune_round": self.prune_round,
                "settings": self.settings}

    @property
    def hash(self) -> str:
        """16 hex digits of the sha256 of the key's canonical JSON."""
        return spec_hash(self.as_dict())


@dataclass(frozen=True)
class DerivedSeeds:
    """Seeds a regime derives from the trial seed (recorded)."""

    reinit_seed: int | None = None
    random_prune_seed: int | None = None


@dataclass(frozen=True)
class Artifacts:
    """Names of the cached pipeline artifacts the trial's start point came from."""

    init: str | None = None
    pretrained: str | None = None
    mask: str | None = None
    rewind: str | None = None
    reinit: str | None = None
    trained: str | None = None
    arch: str | None = None
    random_arch: str | None = None


@dataclass(frozen=True)
class Efficiency:
    """The pruned network against the dense one: parameters, forward FLOPs per example, median
    inference latency (batch of 256)."""

    params: int | None = None
    dense_params: int | None = None
    flops: int | None = None
    dense_flops: int | None = None
    latency_ms: float | None = None
    dense_latency_ms: float | None = None


@dataclass(frozen=True)
class StageRun:
    """A training stage that led to the trial's start point (pretrain, imp_round_<r>), for the
    epochs table."""

    name: str
    artifact: str | None
    history: tuple[dict[str, Any], ...]
    sparsity: float


def metric(name: str | None = None) -> dict[str, Any]:
    """Field metadata: the field is an MLflow metric of the trial's run (under ``name``)."""
    return {"metric": name}


@dataclass(frozen=True)
class TrialRecord:
    """What a trial produced; the driver fills in the last four fields."""

    study: str
    trial_id: str
    spec: TrialSpec
    settings: dict[str, Any]  # the study's pipeline settings (trainables.config.PipelineConfig.flat)
    status: str = "completed"  # or "error"
    seeds: DerivedSeeds = DerivedSeeds()
    artifacts: Artifacts = Artifacts()
    efficiency: Efficiency = Efficiency()
    stages: tuple[StageRun, ...] = ()
    history: tuple[dict[str, Any], ...] = ()  # the final stage's epochs
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    achieved_sparsity: float | None = field(default=None, metadata=metric())
    train_epochs: int | None = field(default=None, metadata=metric())  # epochs of the regime's own training
    val_acc: float | None = field(default=None, metadata=metric("final_val_acc"))
    test_acc: float | None = field(default=None, metadata=metric("final_test_acc"))
    train_loss: float | None = None
    diverged: bool = field(default=False, metadata=metric())
    diverged_stage: str | None = None
    resumed_from_epoch: int | None = None
    reused_from: str | None = None  # the trial that trained this configuration: answered from its result
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    wall_seconds: float | None = field(default=None, metadata=metric())
    mlflow_run_id: str | None = None
    optuna_study: str | None = None
    study_hash: str | None = None
    trial_hash: str | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def replace(self, **changes: Any) -> "TrialRecord":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrialRecord":
        d = dict(d)
        d["spec"] = TrialSpec(**{**d["spec"], "seeds": tuple(d["spec"]["seeds"])})
        d["seeds"] = DerivedSeeds(**d.get("seeds") or {})
        d["artifacts"] = Artifacts(**d.get("artifacts") or {})
        d["efficiency"] = Efficiency(**d.get("efficiency") or {})
        d["stages"] = tuple(StageRun(**{**s, "history": tuple(s["history"])}) for s in d.get("stages") or ())
        d["history"] = tuple(d.get("history") or ())
        return cls(**d)

    def metrics(self) -> dict[str, float]:
        """The run's final metrics: the fields marked ``metric`` and the efficiency figures."""
        out = {}
        for f in fields(self):
            if "metric" in f.metadata:
                v = getattr(self, f.name)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    out[f.metadata["metric"] or f.name] = float(v)
        out.update({k: float(v) for k, v in dataclasses.asdict(self.efficiency).items() if v is not None})
        return out


# -- record files ---------------------------------------------------------------------------------

class DamagedRecord(ValueError):
    """A record file is not what was written: not JSON (truncated), not a record, or its records do
    not match their sha256."""


def records_digest(data: Any) -> str:
    """The sha256 of records' JSON (a record's ``to_json``, or a list of them), in canonical form:
    the same for the data written and the data read back, whatever the file's layout."""
    return sha256(canonical(data))


def _as_read(data: Any) -> Any:
    """``data`` as a reader of its JSON gets it (what the digest is taken of on both sides)."""
    return json.loads(canonical(data))


def records_text(records: list[TrialRecord]) -> str:
    """A trial's records, as the trial writes them to shared storage: ``{"records": [...], "sha256": ...}``."""
    data = _as_read([r.to_json() for r in records])
    return json.dumps({"records": data, "sha256": records_digest(data)})


def record_text(record: TrialRecord) -> str:
    """One record, as the driver keeps it (``records/<trial_id>.json``): the record's JSON, as
    before, with its ``sha256`` beside its fields (readers of the fields are unaffected)."""
    data = _as_read(record.to_json())
    return json.dumps({**data, "sha256": records_digest(data)})


def parse_records(text: str | bytes) -> list[TrialRecord]:
    """The records of a record file in any of its forms: ``{"records": [...], "sha256": ...}`` (a
    trial's), one record's fields with its ``sha256`` (the driver's copy), or either without the
    digest (written before digests: trusted).  A text that is not UTF-8 or JSON (a truncated file),
    not records, or whose records do not match its digest raises ``DamagedRecord`` (one line: why)."""
    try:
        obj = json.loads(text.decode() if isinstance(text, (bytes, bytearray)) else text)
    except UnicodeDecodeError as e:
        raise DamagedRecord("not UTF-8 text") from e
    except ValueError as e:  # json.JSONDecodeError: a truncated or garbled file
        raise DamagedRecord(f"not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise DamagedRecord(f"not a record file: a JSON {type(obj).__name__}")
    obj = dict(obj)
    want = obj.pop("sha256", None)
    if "records" in obj:
        if set(obj) != {"records"} or not isinstance(obj["records"], list):
            raise DamagedRecord(f"not a record file: keys {sorted(obj)}")
        data, many = obj["records"], True
    else:
        data, many = obj, False  # one record's fields (the driver's copy)
    if want is not None and records_digest(data) != want:
        raise DamagedRecord("sha256 mismatch")
    try:
        return [TrialRecord.from_json(d) for d in (data if many else [data])]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DamagedRecord(f"not a trial record ({type(e).__name__}: {e})".splitlines()[0]) from e
