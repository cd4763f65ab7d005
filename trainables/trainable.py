"""The Ray Tune function trainable of every study: one trial of one retraining regime.

A trial (``TrialSpec``: regime, LR, seed, phase, IMP round) obtains its start point from its regime
(shared artifacts: theta_0, pretraining, IMP masks or the pruned network), then trains the sparse
network, reporting every epoch with ``ray.tune.report`` and a checkpoint so that an interrupted trial
resumes at its last epoch.  Before its last report it writes its ``TrialRecord`` (JSON, atomically)
that the driver turns into an MLflow run and Parquet rows.
"""
from __future__ import annotations

import importlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from trainables.artifacts import ArtifactStore
from trainables.config import PipelineConfig
from trainables.pipeline import Pipeline
from trainables.records import Artifacts, DerivedSeeds, Efficiency, TrialRecord, TrialSpec
from trainables.regimes import get_regime
from trainables.storage import Storage
from trainables.training import Trainer, TrainState

CHECKPOINT_FILE = "trial.pt"
TRIAL_RECORDS = "trial-records"
# Every checkpoint costs Ray Tune a forced experiment snapshot on the driver (with num_to_keep=1):
# about 1 s per 20-epoch MNIST-1D trial when taken every epoch.  Checkpoints therefore come every
# ``checkpoint_every`` epochs, and after any epoch that ends this long after the last checkpoint, so
# slow epochs are always checkpointed one by one.
CHECKPOINT_MAX_GAP_S = 30.0


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares; all paths absolute (Ray runs trials in other folders)."""

    study: str
    study_dir: str
    pipeline: PipelineConfig
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    checkpoint_every: int = 5  # epochs; and at least every CHECKPOINT_MAX_GAP_S seconds
    storage: str = ""  # shared location of artifacts, records and Tune state (default: study_dir)
    plugins: tuple[str, ...] = ()  # modules that register regimes and pruning methods (--plugins)

    @property
    def shared(self) -> Storage:
        return Storage(self.storage or self.study_dir)

    @property
    def artifact_root(self) -> str:
        return self.shared.join("artifacts")

    def record_location(self, trial_id: str) -> str:
        """Where the trial leaves its record for the driver (which keeps its own copy in records/:
        a stale worker of an interrupted run may still write here, never over the driver's)."""
        return self.shared.join(TRIAL_RECORDS, f"{trial_id}.json")


def _device(ctx: TrialContext) -> torch.device:
    return torch.device("cuda" if ctx.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")


def _write_record(ctx: TrialContext, record: TrialRecord) -> None:
    ctx.shared.write_text(ctx.record_location(record.trial_id), json.dumps(record.to_json()))


def _metrics(rec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"epoch": rec["epoch"], "val_acc": rec["val_acc"], "test_acc": rec["test_acc"],
            "train_loss": rec["train_loss"] if math.isfinite(rec["train_loss"]) else float("nan"),
            "lr": rec["lr"], "diverged": rec["diverged"], **extra}


def run_trial(config: dict[str, Any], ctx: TrialContext, trial_id: str,
              report=None, checkpoint_dir: str | None = None) -> TrialRecord:
    """One trial: start point from the regime, then the sparse network's training.

    The training is itself a cached artifact (``result``, keyed by the regime, LR, seeds, IMP round
    and the pipeline's settings): a trial asked for a configuration already trained (a repeated
    search suggestion) is answered from that result without training (``reused_from`` names the
    trial that trained it), and two trials asking for it at once train it once.

    ``report(metrics, checkpoint_dir)`` is called after every epoch (Ray Tune's, when under Tune).
    Returns the trial record.
    """
    started = time.time()
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    for module in ctx.plugins:
        importlib.import_module(module)
    spec = TrialSpec.from_config(config)
    store = ArtifactStore(ctx.artifact_root)
    pipe = Pipeline(ctx.pipeline, store, _device(ctx))
    start = get_regime(spec.regime).make_start(pipe, spec.lr, spec.seed, spec.prune_round)
    overall, per_layer = start.sparsity
    record = TrialRecord(
        study=ctx.study, trial_id=trial_id, spec=spec, settings=ctx.pipeline.flat(),
        seeds=DerivedSeeds(**start.seeds), artifacts=Artifacts(**start.artifacts),
        efficiency=Efficiency(**start.efficiency), stages=tuple(start.stages), achieved_sparsity=overall,
        layer_sparsity=per_layer, diverged_stage=start.diverged_stage, started_at=started)
    if not start.ready:  # diverged before the sparse network existed: report it as it is
        last = start.stages[-1].history[-1]
        record = record.replace(diverged=True, val_acc=last["val_acc"], test_acc=last["test_acc"],
                                train_loss=float("nan"), wall_seconds=time.time() - started, finished_at=time.time())
        _write_record(ctx, record)
        if report:
            report(_metrics(last, diverged_stage=start.diverged_stage, sparsity=overall, done=True), None)
        return record

    train = replace(pipe.train_spec(spec.lr, spec.seed), **start.train)  # the regime's epochs and schedule
    resumed: list[int] = []

    def compute(tmp) -> dict[str, Any]:
        """The regime's training, reporting every epoch but the last (the trial's final report
        follows its record)."""
        model = start.model.to(pipe.device) if start.model is not None else pipe.new_model()
        if start.weights is not None:
            model.load_state_dict(start.weights)
        trainer = Trainer(model, pipe.splits, train, start.masks)
        history: list[dict[str, Any]] = []
        if checkpoint_dir is not None:  # resume: weights, optimiser, schedule position and history
            saved = torch.load(Path(checkpoint_dir) / CHECKPOINT_FILE, map_location=pipe.device, weights_only=True)
            trainer.load_state(TrainState(**saved["state"]))
            history = saved["history"]
            resumed.append(trainer.epoch)
        last_checkpoint = time.monotonic()
        while True:  # a checkpoint is never taken at the last epoch, so a resumed trial has epochs left
            rec = trainer.run_epoch()
            history.append(rec)
            if rec["diverged"] or trainer.epoch >= train.epochs:
                return {"history": history, "trial_id": trial_id}
            due = trainer.epoch % ctx.checkpoint_every == 0 or time.monotonic() - last_checkpoint >= CHECKPOINT_MAX_GAP_S
            if report and not due:
                report(_metrics(rec, sparsity=overall, done=False), None)
            elif report:
                last_checkpoint = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt:
                    torch.save({"state": asdict(trainer.state()), "history": history}, Path(ckpt) / CHECKPOINT_FILE)
                    report(_metrics(rec, sparsity=overall, done=False), ckpt)

    # what determines the result (not the phase, condition or Optuna trial that asked for it)
    key = {"regime": spec.regime, "lr": spec.lr, "seeds": list(spec.seeds), "prune_round": spec.prune_round,
           "train": train.as_dict(), "start": asdict(record.artifacts), "settings": record.settings}
    result = store.get_or_create("result", key, compute)
    history = result.meta["history"]
    last = history[-1]
    record = record.replace(
        history=tuple(history), train_epochs=train.epochs, diverged=last["diverged"],
        diverged_stage="final" if last["diverged"] else None, val_acc=last["val_acc"], test_acc=last["test_acc"],
        train_loss=last["train_loss"], resumed_from_epoch=resumed[0] if resumed else None,
        reused_from=result.meta["trial_id"] if result.meta["trial_id"] != trial_id else None,
        wall_seconds=time.time() - started, finished_at=time.time())
    _write_record(ctx, record)  # the record goes out before the last report: the trial counts as finished after it
    if report:
        report(_metrics(last, sparsity=overall, done=True), None)  # a finished trial needs no checkpoint
    return record


def regime_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune entry point (wrap with ``tune.with_parameters(regime_trial, ctx=...)``)."""
    from ray import tune

    def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        tune.report(metrics, checkpoint=ckpt)

    checkpoint = tune.get_checkpoint()
    trial_id = tune.get_context().get_trial_id()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run_trial(config, ctx, trial_id, report, d)
    else:
        run_trial(config, ctx, trial_id, report, None)
