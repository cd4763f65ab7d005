"""Starting or joining Ray with light settings."""
from __future__ import annotations

import os

LIGHT_OBJECT_STORE = 200 * 1024 * 1024


def quiet_ray_env() -> None:
    """Environment defaults set before Ray is imported (the user's own values win)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # per-result JSON and CSV loggers are passed explicitly; no TensorBoard event file per result
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a forced experiment snapshot per checkpoint is expected here (num_to_keep=1): no warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables, the study prints its own
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "0")
    # MLflow sets its loggers' level from this when it is imported: no "Creating initial MLflow
    # database tables" / "Updating database tables" lines when a study makes its mlflow.db
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


# Ray's notice that a new local runtime has token authentication on (it stays on: it guards the
# runtime against other users of the machine); the study says nothing about it.
RAY_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_logs() -> None:
    """The study prints its own progress: other libraries' INFO lines are noise there."""
    import logging
    for name in ("optuna", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(RAY_AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
    try:
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


def start_ray(address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> dict[str, float]:
    """Join ``address`` or start a local runtime; return the cluster's resources."""
    quiet_ray_env()
    import logging

    import ray
    quiet_logs()  # after Ray's import, which configures its loggers
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=LIGHT_OBJECT_STORE, log_to_driver=False, logging_level=logging.WARNING)
    return ray.cluster_resources()
