"""The Ray Tune function trainable of every study: one trial of one retraining regime.

A trial (``TrialSpec``: regime, LR, seed, phase, IMP round) obtains its start point from its regime
(shared artifacts: theta_0, pretraining, IMP masks or the pruned network), then trains the sparse
network, reporting every epoch with ``ray.tune.report`` and a checkpoint so that an interrupted trial
resumes at its last epoch.  A checkpoint's sha256 is written beside it and checked when it is read: a
damaged one (a changed, truncated or unreadable file, or no digest) is named in one line and the trial
starts from its stored stages instead.  Before its last report the trial writes its ``TrialRecord``
(JSON with its sha256, atomically) that the driver turns into an MLflow run and Parquet rows.
"""
from __future__ import annotations

import importlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from trainables.artifacts import ArtifactStore
from trainables.config import PipelineConfig
from trainables.hashing import sha256
from trainables.pipeline import Pipeline
from trainables.record_store import RecordStore
from trainables.records import Artifacts, DerivedSeeds, Efficiency, RunKey, TrialRecord, TrialSpec
from trainables.regimes import get_regime
from trainables.stacked import StackedTrainer, stacks
from trainables.storage import Storage
from trainables.training import Trainer, TrainState

CHECKPOINT_FILE = "trial.pt"
# beside it, written after it: {"file": "trial.pt", "bytes": <its size>, "sha256": <its digest>}
CHECKPOINT_DIGEST = "trial.pt.sha256.json"
# Every checkpoint costs Ray Tune a forced experiment snapshot on the driver (with num_to_keep set):
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


def _device(ctx: TrialContext) -> torch.device:
    return torch.device("cuda" if ctx.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")


class DamagedCheckpoint(RuntimeError):
    """A trial's checkpoint is not what was written (or cannot be shown to be)."""


def write_checkpoint(folder: str | os.PathLike[str], saved: dict[str, Any]) -> None:
    """``saved`` into ``folder``: the tensor file, then its digest (so a digest names a whole file)."""
    buf = io.BytesIO()
    torch.save(saved, buf)
    data = buf.getvalue()
    (Path(folder) / CHECKPOINT_FILE).write_bytes(data)
    (Path(folder) / CHECKPOINT_DIGEST).write_text(
        json.dumps({"file": CHECKPOINT_FILE, "bytes": len(data), "sha256": sha256(data)}))


def read_checkpoint(folder: str | os.PathLike[str], device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint in ``folder``, checked against its digest before it is loaded (``weights_only``);
    raises ``DamagedCheckpoint`` (why, in a few words) when the file is missing, unreadable, has no
    digest, is shorter than written (truncated), does not match its sha256, cannot be loaded or is
    not a trial's checkpoint."""
    folder = Path(folder)
    try:
        data = (folder / CHECKPOINT_FILE).read_bytes()
    except FileNotFoundError as e:
        raise DamagedCheckpoint(f"{CHECKPOINT_FILE} is missing") from e
    except OSError as e:
        raise DamagedCheckpoint(f"{CHECKPOINT_FILE} cannot be read: {e.strerror or type(e).__name__}") from e
    try:
        digest = json.loads((folder / CHECKPOINT_DIGEST).read_text())
        want, size = digest["sha256"], int(digest["bytes"])
    except FileNotFoundError as e:
        raise DamagedCheckpoint("no digest") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpoint(f"its digest cannot be read ({type(e).__name__})") from e
    if len(data) < size:
        raise DamagedCheckpoint(f"truncated: {len(data)} of {size} bytes")
    if len(data) != size or sha256(data) != want:
        raise DamagedCheckpoint("sha256 mismatch")
    try:
        saved = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- whatever the unpickler says, it is not a checkpoint to train from
        raise DamagedCheckpoint(f"cannot be loaded: {type(e).__name__}") from e
    if not isinstance(saved, dict) or not {"state", "history", "record"} <= set(saved):
        raise DamagedCheckpoint("not a trial checkpoint")
    return saved


def _resume_point(checkpoint_dir: str | None, device: torch.device, trial_id: str) -> dict[str, Any] | None:
    """The trial's checkpoint, or None: none given, or a damaged one (named in one line, on stdout:
    the trial's log; the folder is Tune's and is left as it is), so that the trial starts from its
    stored stages and trains again."""
    if checkpoint_dir is None:
        return None
    try:
        return read_checkpoint(checkpoint_dir, device)
    except DamagedCheckpoint as e:
        print(f"checkpoint of trial {trial_id} is damaged ({e}): starting the trial from its stored stages",
              flush=True)
        return None


def _metrics(rec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"epoch": rec["epoch"], "val_acc": rec["val_acc"], "test_acc": rec["test_acc"],
            "train_loss": rec["train_loss"] if math.isfinite(rec["train_loss"]) else float("nan"),
            "lr": rec["lr"], "diverged": rec["diverged"], **extra}


def _mean_metrics(recs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """What Tune sees of a trial of several seeds: the mean over them (its search objective)."""
    ms = [_metrics(r) for r in recs]
    return {"epoch": max(m["epoch"] for m in ms), "lr": ms[0]["lr"], "diverged": all(m["diverged"] for m in ms),
            **{k: sum(m[k] for m in ms) / len(ms) for k in ("val_acc", "test_acc", "train_loss")}, **extra}


def run_trial(config: dict[str, Any], ctx: TrialContext, trial_id: str,
              report=None, checkpoint_dir: str | None = None, scratch: str | None = None) -> list[TrialRecord]:
    """One trial: the regime's start point for each of its seeds, then the sparse networks' training;
    one record per seed (``TrialSpec.record_ids``).

    Each seed's training is itself a cached artifact (``result``, keyed by the regime, LR, seed, IMP
    round and the pipeline's settings): a seed asked for a configuration already trained (a repeated
    search suggestion) is answered from that result without training (``reused_from`` names the
    trial that trained it), and two trials asking for it at once train it once.  Several seeds that
    still need training train together as one stacked network where they share their shapes
    (``trainables.stacked``), else one after another; so do their pretraining and IMP rounds first
    (``Pipeline.prepare``, for regimes whose start points come from them).

    ``report(metrics, checkpoint_dir)`` is called after every epoch (Ray Tune's, when under Tune);
    seeds trained one at a time checkpoint (see ``CHECKPOINT_MAX_GAP_S``), stacked ones do not (they
    train again if the trial is interrupted); a checkpoint is written under ``scratch`` (default: the
    system's temporary folder) before ``report`` takes it.  Returns the records.
    """
    started = time.time()
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    for module in ctx.plugins:
        importlib.import_module(module)
    spec = TrialSpec.from_config(config)
    store = ArtifactStore(ctx.artifact_root)
    pipe = Pipeline(ctx.pipeline, store, _device(ctx))
    regime = get_regime(spec.regime)
    if len(spec.seeds) > 1 and regime.prepare:  # the seeds' pretraining and IMP together, into the store
        pipe.prepare(spec.lr, list(spec.seeds), ctx.pipeline.pruning.rewind_epoch if regime.rewinds else 0)
    settings = ctx.pipeline.flat()
    seeds = [_Seed.begin(ctx.study, rid, one, regime.make_start(pipe, spec.lr, one.seed, one.prune_round), pipe,
                         settings, started)
             for rid, one in zip(spec.record_ids(trial_id), spec.per_seed())]
    _train(ctx, store, pipe, [s for s in seeds if s.start.ready], report, checkpoint_dir, scratch, trial_id)
    finished = time.time()
    records = [s.finish(started, finished) for s in seeds]
    RecordStore(ctx.shared).write_trial(trial_id, records)  # before the last report: then the trial is done
    if report:
        sparsity = sum(r.achieved_sparsity or 0.0 for r in records) / len(records)
        report(_mean_metrics([s.last_epoch() for s in seeds], sparsity=sparsity, done=True), None)  # no checkpoint
    return records


@dataclass
class _Seed:
    """One seed of a trial: what it was asked (``spec``, one seed), its record's id, its start point,
    its training and the ``RunKey`` its result is stored under; once trained, the result (an
    artifact) and the epoch it resumed from, if it did."""

    rid: str
    spec: TrialSpec
    start: Any  # trainables.starts.Start
    train: Any  # trainables.training.TrainSpec
    key: dict[str, Any]
    record: TrialRecord
    result: Any = None
    resumed: int | None = None

    @classmethod
    def begin(cls, study: str, rid: str, spec: TrialSpec, start, pipe: Pipeline, settings: dict[str, Any],
              started: float) -> "_Seed":
        overall, per_layer = start.sparsity
        record = TrialRecord(
            study=study, trial_id=rid, spec=spec, settings=settings, seeds=DerivedSeeds(**start.seeds),
            artifacts=Artifacts(**start.artifacts), efficiency=Efficiency(**start.efficiency),
            stages=tuple(start.stages), achieved_sparsity=overall, layer_sparsity=per_layer,
            diverged_stage=start.diverged_stage, started_at=started)
        return cls(rid, spec, start, replace(pipe.train_spec(spec.lr, spec.seed), **start.train),
                   RunKey.of(spec, settings).as_dict(), record)

    def network(self, pipe: Pipeline):
        model = self.start.model.to(pipe.device) if self.start.model is not None else pipe.new_model()
        if self.start.weights is not None:
            model.load_state_dict(self.start.weights)
        return model

    def last_epoch(self) -> dict[str, Any]:
        return (self.result.meta["history"] if self.result is not None else self.start.stages[-1].history)[-1]

    def finish(self, started: float, finished: float) -> TrialRecord:
        """The seed's record, complete."""
        times = {"wall_seconds": finished - started, "finished_at": finished}
        if self.result is None:  # diverged before the sparse network existed: reported as it is
            last = self.last_epoch()
            return self.record.replace(diverged=True, val_acc=last["val_acc"], test_acc=last["test_acc"],
                                       train_loss=float("nan"), **times)
        history, last = self.result.meta["history"], self.last_epoch()
        return self.record.replace(
            history=tuple(history), train_epochs=self.train.epochs, diverged=last["diverged"],
            diverged_stage="final" if last["diverged"] else None, val_acc=last["val_acc"], test_acc=last["test_acc"],
            train_loss=last["train_loss"], resumed_from_epoch=self.resumed,
            reused_from=self.result.meta["trial_id"] if self.result.meta["trial_id"] != self.rid else None, **times)


def _train(ctx: TrialContext, store: ArtifactStore, pipe: Pipeline, ready: list[_Seed], report,
           checkpoint_dir: str | None, scratch: str | None, trial_id: str = "") -> None:
    """The trainings of the seeds ``ready`` (those with a start point): each seed's ``result``
    artifact found, or trained.  Several seeds train as one stacked network where they can and it
    pays (``trainables.stacked.stacks``; reporting the mean every epoch, no checkpoints), else one
    after another, each checkpointed and stored when done, so an interrupted trial resumes at the
    seed it was training (its checkpoint checked first: a damaged one is not trained from, see
    ``_resume_point``).  Sets each seed's ``result`` (and ``resumed``)."""
    for seed in ready:
        seed.result = store.find("result", seed.key)
    todo = [seed for seed in ready if seed.result is None]
    models = [seed.network(pipe) for seed in todo]
    if stacks(models, [seed.train for seed in todo]):
        trainer = StackedTrainer(models, pipe.splits, [seed.train for seed in todo], [seed.start.masks for seed in todo])
        histories = trainer.run(on_epoch=(lambda recs: report(_mean_metrics(recs, done=False), None)) if report else None)
        for seed, history in zip(todo, histories):
            seed.result = store.get_or_create("result", seed.key, lambda tmp, h=history, rid=seed.rid: {
                "history": h, "trial_id": rid})
        return
    saved = _resume_point(checkpoint_dir, pipe.device, trial_id or ready[0].rid) if todo else None
    for seed, model in zip(todo, models):
        mine = saved if saved is not None and saved.get("record") == seed.rid else None  # the seed it was training
        _train_alone(ctx, store, pipe, seed, model, report, mine, scratch)


def _train_alone(ctx: TrialContext, store: ArtifactStore, pipe: Pipeline, seed: _Seed, model, report,
                 saved: dict[str, Any] | None, scratch: str | None) -> None:
    """One seed's training as a ``result`` artifact, reporting every epoch but the last (the trial's
    final report follows its record), checkpointed (the checkpoint names the seed's record), resumed
    from ``saved`` (its checkpoint) when given; sets the seed's result and the epoch it resumed from."""
    train, rid = seed.train, seed.rid

    def compute(tmp) -> dict[str, Any]:
        trainer = Trainer(model, pipe.splits, train, seed.start.masks)
        history: list[dict[str, Any]] = []
        if saved is not None:  # resume: weights, optimiser, schedule position, history
            trainer.load_state(TrainState(**saved["state"]))
            history = saved["history"]
            seed.resumed = trainer.epoch
        last_checkpoint = time.monotonic()
        while True:  # a checkpoint is never taken at the last epoch, so a resumed trial has epochs left
            rec = trainer.run_epoch()
            history.append(rec)
            if rec["diverged"] or trainer.epoch >= train.epochs:
                return {"history": history, "trial_id": rid}
            due = (trainer.epoch % ctx.checkpoint_every == 0
                   or time.monotonic() - last_checkpoint >= CHECKPOINT_MAX_GAP_S)
            if report and not due:
                report(_metrics(rec, done=False), None)
            elif report:
                last_checkpoint = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="ckpt-", dir=scratch) as ckpt:
                    write_checkpoint(ckpt, {"state": asdict(trainer.state()), "history": history, "record": rid})
                    report(_metrics(rec, done=False), ckpt)
    seed.result = store.get_or_create("result", seed.key, compute)


def regime_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune entry point (wrap with ``tune.with_parameters(regime_trial, ctx=...)``)."""
    from ray import tune

    def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        tune.report(metrics, checkpoint=ckpt)

    checkpoint = tune.get_checkpoint()
    trial_id = tune.get_context().get_trial_id()
    scratch = os.getcwd()  # the trial's own folder in Ray's session: no checkpoint left in /tmp if it is killed
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run_trial(config, ctx, trial_id, report, d, scratch)
    else:
        run_trial(config, ctx, trial_id, report, None, scratch)
