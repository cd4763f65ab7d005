"""One Ray Tune experiment of a study (a regime's search, or the confirmation): new or restored."""
from __future__ import annotations

from typing import Any

from study.config import StudyConfig
from trainables.storage import Storage


# Each trial keeps its last two checkpoints: Tune deletes the older one as soon as a new one is
# registered, before its next experiment snapshot is written, so with one kept a driver killed in
# between leaves a snapshot naming a checkpoint that is gone, and the trial cannot be resumed
# ("Could not recover from checkpoint as it does not exist on storage anymore"; tests/test_resume.py
# met it).  With two, the snapshot's checkpoint is still there.
KEEP_CHECKPOINTS = 2


def experiment_path(cfg: StudyConfig, name: str) -> str:
    return Storage(cfg.shared_root).join("ray", name)


def run_experiment(cfg: StudyConfig, name: str, ctx, callback, concurrency: int,
                   tune_config: dict[str, Any], param_space: dict[str, Any] | None = None,
                   resume: bool = False) -> None:
    """Fit the experiment ``name``; with ``resume``, continue it from its saved state when there is
    one (finished trials stay finished, interrupted ones continue from their last checkpoint)."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from study.callbacks import StopOnDeterministicFailure
    from trainables.trainable import regime_trial

    x = cfg.execution
    trainable = tune.with_resources(tune.with_parameters(regime_trial, ctx=ctx),
                                    {"cpu": x.cpus_per_trial, "gpu": x.gpus_per_trial})
    path = experiment_path(cfg, name)
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space or {},
            # the search limits its trials itself (study.search.StudySearch)
            tune_config=tune.TuneConfig(max_concurrent_trials=None if "search_alg" in tune_config else concurrency,
                                        reuse_actors=True, **tune_config),
            run_config=tune.RunConfig(name=name, storage_path=Storage(cfg.shared_root).join("ray"),
                                      callbacks=[callback, JsonLoggerCallback(), CSVLoggerCallback()],
                                      stop=StopOnDeterministicFailure(callback),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                                      failure_config=tune.FailureConfig(max_failures=x.max_failures),
                                      verbose=0))
    tuner.fit()
