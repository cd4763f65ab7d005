"""The Ray Tune function trainable of the lottery study.

A trial obtains its start point from its regime (shared artifacts: theta_0, pretraining, IMP
masks), then trains the sparse network, reporting every epoch with ``ray.tune.report`` and a
checkpoint so that an interrupted trial resumes at its last epoch.  Before its last report it
writes a trial record (JSON, atomically) that the driver turns into MLflow runs and Parquet rows.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from trainables.artifacts import ArtifactStore
from trainables.pipeline import Pipeline, PipelineConfig
from trainables.regimes import REGIMES
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


def trial_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's settings: a search trial's config itself; a confirmation trial's ``spec`` entry
    (confirmation trials come from ``tune.grid_search`` over a list of such dicts)."""
    return config["spec"] if "spec" in config else config


def _device(ctx: TrialContext) -> torch.device:
    return torch.device("cuda" if ctx.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")


def _write_record(ctx: TrialContext, trial_id: str, record: dict[str, Any]) -> None:
    ctx.shared.write_text(ctx.record_location(trial_id), json.dumps(record, default=float))


def _metrics(rec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"epoch": rec["epoch"], "val_acc": rec["val_acc"], "test_acc": rec["test_acc"],
            "train_loss": rec["train_loss"] if math.isfinite(rec["train_loss"]) else float("nan"),
            "lr": rec["lr"], "diverged": rec["diverged"], **extra}


def run_trial(config: dict[str, Any], ctx: TrialContext, trial_id: str,
              report=None, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """One trial: start point from the regime, then the sparse network's training.

    ``report(metrics, checkpoint_dir)`` is called after every epoch (Ray Tune's, when under Tune).
    Returns the trial record.
    """
    started = time.time()
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    config = trial_spec(config)
    regime = REGIMES[config["regime"]]
    lr, seed = float(config["lr"]), int(config["seed"])
    prune_round = int(config.get("prune_round") or ctx.pipeline.rounds)
    pipe = Pipeline(ctx.pipeline, ArtifactStore(ctx.artifact_root), _device(ctx))
    start = regime.start(pipe, lr, seed, prune_round)
    overall, per_layer = start.sparsity
    record: dict[str, Any] = {
        "study": ctx.study, "trial_id": trial_id, "regime": regime.name, "phase": config.get("phase", "search"),
        "condition": config.get("condition"), "prune_round": prune_round, "lr": lr, "seed": seed, "config": {k: v for k, v in config.items()}, "seeds": start.seeds,
        "artifacts": start.artifacts, "achieved_sparsity": overall, "layer_sparsity": per_layer,
        "pipeline": ctx.pipeline.as_dict(),
        "phases": [asdict(p) for p in start.phases], "history": [], "diverged": False,
        "diverged_phase": start.diverged_phase, "started_at": started,
        "method": ctx.pipeline.method, "efficiency": start.efficiency,
    }
    if not start.ready:  # diverged before the sparse network existed: report it as it is
        last = start.phases[-1].history[-1]
        record.update(diverged=True, val_acc=last["val_acc"], test_acc=last["test_acc"],
                      train_loss=float("nan"), wall_seconds=time.time() - started, finished_at=time.time())
        _write_record(ctx, trial_id, record)
        if report:
            report(_metrics(last, phase_diverged=start.diverged_phase, sparsity=overall, done=True), None)
        return record

    model = start.model.to(pipe.device) if start.model is not None else pipe.new_model()
    if start.weights is not None:
        model.load_state_dict(start.weights)
    spec = replace(ctx.pipeline.train_spec(lr, seed), **start.train)  # the regime's epochs and schedule
    record["train_epochs"] = spec.epochs
    trainer = Trainer(model, pipe.splits, spec, start.masks)
    history: list[dict[str, Any]] = []
    if checkpoint_dir is not None:  # resume: weights, optimiser, schedule position and history
        saved = torch.load(Path(checkpoint_dir) / CHECKPOINT_FILE, map_location=pipe.device, weights_only=True)
        trainer.load_state(TrainState(**saved["state"]))
        history = saved["history"]
        record["resumed_from_epoch"] = trainer.epoch

    total = spec.epochs
    last_checkpoint = time.monotonic()
    done = False
    while not done:  # a checkpoint is never taken at the last epoch, so a resumed trial has epochs left
        rec = trainer.run_epoch()
        history.append(rec)
        done = rec["diverged"] or trainer.epoch >= total
        if done:  # the record goes out before the last report: the trial counts as finished after it
            record.update(history=history, diverged=rec["diverged"],
                          diverged_phase="final" if rec["diverged"] else None, val_acc=rec["val_acc"],
                          test_acc=rec["test_acc"], train_loss=rec["train_loss"],
                          wall_seconds=time.time() - started, finished_at=time.time())
            _write_record(ctx, trial_id, record)
        due = trainer.epoch % ctx.checkpoint_every == 0 or time.monotonic() - last_checkpoint >= CHECKPOINT_MAX_GAP_S
        if report and (done or not due):
            report(_metrics(rec, sparsity=overall, done=done), None)  # a finished trial needs no checkpoint
        elif report:
            last_checkpoint = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
                torch.save({"state": asdict(trainer.state()), "history": history}, Path(tmp) / CHECKPOINT_FILE)
                report(_metrics(rec, sparsity=overall, done=done), tmp)
    return record


def lottery_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune entry point (wrap with ``tune.with_parameters(lottery_trainable, ctx=...)``)."""
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
