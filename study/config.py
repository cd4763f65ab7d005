"""A study's settings: the pipeline's (``trainables.config``) plus the search, the confirmation and
where it runs, as one frozen ``StudyConfig``.

The fields hold the only defaults; a study kind is a preset, the defaults it changes
(``PRESETS``); ``study.cli`` makes the flags from the fields.  ``study.json`` stores the config
once (``to_dict``) and ``StudyConfig.from_dict`` rebuilds it exactly; the study's hash is that of
the settings that change its results (everything but ``execution`` and the data cache folder).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from search_spaces.lottery import LrSpace
from trainables.config import (DataConfig, ModelConfig, PipelineConfig, PruningConfig, Settings, TrainingConfig,
                               nested, require, setting)
from trainables.regimes import REGIMES, contrasts_for, get_regime

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")


def _regimes() -> tuple[str, ...]:
    return tuple(REGIMES)


def _spendings() -> tuple[str, ...]:
    from analysis.spending import SPENDING
    return tuple(SPENDING)


@dataclass(frozen=True)
class SearchConfig(Settings):
    title: ClassVar[str] = "search"

    num_samples: int = setting(64, "trials per regime")
    regimes: tuple[str, ...] = setting(("winning_ticket", "random_reinit"), "comma-separated regimes",
                                       choices=_regimes)
    lr_min: float = setting(1e-3, "lower end of the log-uniform LR range")
    lr_max: float = setting(1.0, "upper end of the log-uniform LR range")
    fine_tune_lr_min: float = setting(1e-4, "fine_tune's own LR range: lower end")
    fine_tune_lr_max: float = setting(1e-1, "fine_tune's own LR range: upper end")
    lr_grid: int = setting(8, "snap LRs to N points per decade so that trials share pretraining and IMP artifacts; "
                              "0 samples continuously", metavar="N")
    startup_trials: int = setting(10, "random trials before TPE models (per regime)")
    seed: int = setting(0, "seed of theta_0, data order, re-init draws (derived) and the TPE sampler")
    search_seeds: int = setting(1, "seeds each search trial trains its LR on (trained together); its value is "
                                   "their mean validation accuracy")

    SEED_STRIDE: ClassVar[int] = 1_000_000  # search seeds --seed + j * stride: never a confirmation seed

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds of every search trial."""
        return tuple(self.seed + j * self.SEED_STRIDE for j in range(self.search_seeds))

    def check(self) -> None:
        super().check()
        require(self.num_samples >= 1, "num_samples", f"must be a positive integer (got {self.num_samples})")
        require(len(self.regimes) >= 1, "regimes", f"must name at least one regime, from {', '.join(REGIMES)}")
        require(len(set(self.regimes)) == len(self.regimes), "regimes", "must not repeat a regime")
        require(self.lr_grid >= 0, "lr_grid",
                f"must be 0 (continuous) or a positive number of points per decade (got {self.lr_grid})")
        require(self.startup_trials >= 1, "startup_trials", f"must be >= 1 (got {self.startup_trials})")
        require(self.search_seeds >= 1, "search_seeds", f"must be >= 1 (got {self.search_seeds})")
        ranges = [("lr_min", "lr_max", None)] + [(*get_regime(r).lr_range, r) for r in self.regimes
                                                 if get_regime(r).lr_range]
        for lo, hi, regime in ranges:
            a, b = getattr(self, lo), getattr(self, hi)
            require(a > 0, lo, f"must be > 0 (got {a:g})")
            require(b > a, hi, f"must be greater than --{lo.replace('_', '-')} (got {b:g} <= {a:g})")
            try:
                LrSpace(a, b, self.lr_grid).check()
            except ValueError as e:
                require(False, "lr_grid", f"is too coarse{f' for {regime} range' if regime else ''}: {e}")

    def space(self, regime: str) -> LrSpace:
        """The LR range ``regime``'s search covers: its own, or the study's."""
        lo, hi = get_regime(regime).lr_range or ("lr_min", "lr_max")
        return LrSpace(getattr(self, lo), getattr(self, hi), self.lr_grid)


@dataclass(frozen=True)
class ConfirmationConfig(Settings):
    title: ClassVar[str] = "confirmation (fresh seeds at each regime's best search LRs, and at two fixed LRs)"

    confirm: bool = setting(True, "skip the confirmation (run it later with python -m study.confirm <study folder>)")
    confirm_seeds: int = setting(10, "fresh seeds of the confirmation's first look, and of each later one (a "
                                     "comparison not decided yet takes this many more)")
    max_confirm_seeds: int | None = setting(None, "the cap: a comparison still undecided with this many seeds is "
                                                  "reported inconclusive, with what it could detect (default: "
                                                  "4 x --confirm-seeds, four looks; = --confirm-seeds: one look, the "
                                                  "fixed design)")
    alpha_spending: str = setting("pocock", "how the error rate is spent over the looks (Lan-DeMets): pocock (even; "
                                            "a clear effect stops at the first look) or obrien-fleming (little "
                                            "early; the last look close to the fixed design)",
                                  choices=_spendings)
    candidates: int = setting(3, "each regime's best N search LRs, trained on the fresh seeds; the tuned LR is the "
                                 "one of highest mean validation accuracy over them, its test accuracy the verdict's")
    fixed_small_lr: float = setting(0.01, "the paper's contrast: every regime also at this small fixed LR")
    fixed_large_lr: float = setting(0.3, "... and at this large fixed LR")
    equivalence_margin: float = setting(1.0, "equivalence margin of a regime's advantage (e.g. the winning "
                                             "ticket's), in accuracy points")
    sweep: bool = setting(True, "skip the sparsity sweep (the sweep regimes at every IMP round's mask, at the "
                                "tuned LR)")
    fixed: bool = setting(True, "skip the fixed-LR conditions")

    LOOKS: ClassVar[int] = 4  # looks of the default cap

    @property
    def cap(self) -> int:
        """The most fresh seeds a comparison takes."""
        return self.max_confirm_seeds if self.max_confirm_seeds is not None else self.LOOKS * self.confirm_seeds

    def check(self) -> None:
        super().check()
        require(self.confirm_seeds >= 1, "confirm_seeds", f"must be >= 1 (got {self.confirm_seeds})")
        require(self.cap >= self.confirm_seeds, "max_confirm_seeds",
                f"must be >= --confirm-seeds (got {self.cap} < {self.confirm_seeds})")
        require(self.cap <= 1000, "max_confirm_seeds", f"must be <= 1000 (got {self.cap})")
        require(self.candidates >= 1, "candidates", f"must be >= 1 (got {self.candidates})")
        require(self.fixed_small_lr > 0, "fixed_small_lr", f"must be > 0 (got {self.fixed_small_lr:g})")
        require(self.fixed_large_lr > self.fixed_small_lr, "fixed_large_lr",
                f"must be greater than --fixed-small-lr (got {self.fixed_large_lr:g} <= {self.fixed_small_lr:g})")
        require(0 < self.equivalence_margin < 100, "equivalence_margin",
                f"must be in (0, 100) accuracy points (got {self.equivalence_margin:g})")


@dataclass(frozen=True)
class ExecutionConfig(Settings):
    """Where and how the study runs and is stored: never part of its hash."""

    title: ClassVar[str] = "execution and storage"

    root: str = setting("studies", "folder that holds study folders")
    name: str | None = setting(None, "study name, the folder under --root (default: <kind>-<hash of the settings "
                                     "that change results>)")
    address: str | None = setting(None, "Ray cluster to join, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, "
                                        "else a local runtime)")
    num_cpus: int | None = setting(None, "CPUs of the local Ray runtime (default: all of this machine's)")
    cpus_per_trial: float = setting(1.0, "CPUs a trial reserves (also its torch threads)")
    gpus_per_trial: float = setting(0.0, "fractions allowed, e.g. 0.25")
    max_concurrent: int = setting(0, "trials at once, shared by the regimes' searches (0: as many as fit on what the cluster can grow to: "
                                     "its autoscaler's node types up to their max_workers, read on the head, else "
                                     "the nodes up now; the study's first lines say which)")
    max_failures: int = setting(2, "retries of a failed trial from its checkpoint")
    checkpoint_every: int = setting(5, "a trial checkpoints every N epochs of its own training, and after any epoch "
                                       "ending 30 s or more after its last checkpoint (pretraining and IMP are "
                                       "cached artifacts, never repeated)", metavar="N")
    storage: str | None = setting(None, "where trials share pipeline artifacts, records and Ray Tune state: a folder "
                                        "every node sees (NFS) or a URI (s3://bucket/studies, gs://...); the study's "
                                        "files go under <storage>/<name>/ (default: the study folder)")
    resume: bool = setting(False, "continue the interrupted study named by --name (and --root) with its own "
                                  "settings; only --address, --num-cpus and --max-concurrent may change")
    mlflow_uri: str | None = setting(None, "MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: "
                                           "sqlite:///<study folder>/mlflow.db)")
    plugins: tuple[str, ...] = setting((), "comma-separated modules to import first, in the driver and in every "
                                           "trial: each may register regimes and pruning methods")

    # what --resume may change
    RESUMABLE: ClassVar[tuple[str, ...]] = ("address", "num_cpus", "max_concurrent")

    def check(self) -> None:
        super().check()
        require(self.cpus_per_trial > 0, "cpus_per_trial", f"must be > 0 (got {self.cpus_per_trial:g})")
        require(self.gpus_per_trial >= 0, "gpus_per_trial", f"must be >= 0 (got {self.gpus_per_trial:g})")
        require(self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(), "gpus_per_trial",
                f"must be a fraction in [0, 1] or a whole number (got {self.gpus_per_trial:g})")
        require(self.max_concurrent >= 0, "max_concurrent", f"must be >= 0 (got {self.max_concurrent})")
        require(self.max_failures >= 0, "max_failures", f"must be >= 0 (got {self.max_failures})")
        require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1 (got {self.checkpoint_every})")
        require(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", f"must be >= 1 (got {self.num_cpus})")
        require(self.name is None or bool(NAME_RE.match(self.name)), "name",
                "must be 1-100 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")
        root = Path(self.root)
        require(not root.exists() or root.is_dir(), "root", f"must be a folder ({root} is a file)")
        require(self.mlflow_uri is None or "://" in self.mlflow_uri or self.mlflow_uri.startswith(("http", "databricks")),
                "mlflow_uri", f"must be a URI such as http://127.0.0.1:5000 or sqlite:////abs/mlflow.db "
                              f"(got {self.mlflow_uri!r})")
        if self.storage is not None and "://" in self.storage:
            scheme = self.storage.split("://", 1)[0]
            require(scheme in STORAGE_SCHEMES, "storage", f"must be a folder or a URI with a scheme from "
                                                          f"{', '.join(STORAGE_SCHEMES)} (got {self.storage!r})")
        elif self.storage is not None:
            require(not Path(self.storage).exists() or Path(self.storage).is_dir(), "storage",
                    f"must be a folder ({self.storage} is a file)")


@dataclass(frozen=True)
class StudyConfig(Settings):
    kind: str = "lottery"  # which study: the entry point and its preset of defaults (``PRESETS``)
    data: DataConfig = nested(DataConfig)
    model: ModelConfig = nested(ModelConfig)
    training: TrainingConfig = nested(TrainingConfig)
    pruning: PruningConfig = nested(PruningConfig)
    search: SearchConfig = nested(SearchConfig)
    confirmation: ConfirmationConfig = nested(ConfirmationConfig)
    execution: ExecutionConfig = nested(ExecutionConfig)

    SECTIONS: ClassVar[tuple[str, ...]] = ("search", "confirmation", "data", "model", "training", "pruning",
                                           "execution")

    @property
    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(self.data, self.model, self.training, self.pruning)

    @property
    def regimes(self) -> tuple[str, ...]:
        return self.search.regimes

    @property
    def contrasts(self) -> list[tuple[str, str]]:
        """The claim's pairs (a, b): regime a's test-accuracy advantage over regime b."""
        return contrasts_for(self.regimes)

    def check(self) -> None:
        """Every section's own rules, then those that span sections."""
        self.search.check()
        self.confirmation.check()
        self.pipeline.check()
        self.execution.check()
        p = self.pruning
        if any(get_regime(r).rewinds for r in self.regimes):
            require(0 <= p.rewind_epoch < self.training.epochs, "rewind_epoch",
                    f"must be in [0, --epochs) (got {p.rewind_epoch})")
        if p.structured:
            mask_only = [r for r in self.regimes if get_regime(r).needs == "mask"]
            require(not mask_only, "regimes", f"{', '.join(mask_only)} need{'s' if len(mask_only) == 1 else ''} "
                                              f"--method magnitude (they work on IMP's masks, theta_0 * m); "
                                              f"for a structured network use scratch_e")

    @property
    def study_dir(self) -> Path:
        return Path(self.execution.root).resolve() / str(self.execution.name)

    @property
    def shared_root(self) -> str:
        """Where trials share artifacts, records and Tune state: <storage>/<name> (in a URI, the name
        goes into the path, before a query string of the store's options:
        ``s3://bucket/studies?endpoint_override=host:9000&scheme=http``), or the study folder."""
        x = self.execution
        if not x.storage:
            return str(self.study_dir)
        from trainables.storage import Storage
        return Storage(x.storage).join(str(x.name))

    def results_settings(self) -> dict[str, Any]:
        """Every setting that changes the study's results: all but where it runs and is stored."""
        d = self.to_dict()
        del d["execution"]
        del d["data"]["data_dir"]
        return d

    def study_hash(self) -> str:
        from trainables.hashing import spec_hash
        return spec_hash(self.results_settings())


PRESETS: dict[str, dict[str, Any]] = {
    "lottery": {},
    # Liu et al. (ICLR 2019): structured pruning, each regime at its own best LR; pretraining at a fixed
    # LR so that the searched LR is the retraining's own; no fixed-LR conditions, no sparsity sweep
    "rethinking": {
        "regimes": ("fine_tune", "scratch_e", "scratch_b"), "method": "l1-filter", "prune_ratio": 0.5,
        "model": "conv1d", "num_samples": 16, "startup_trials": 8, "rounds": 1, "lr_coupling": "retrain",
        "pretrain_lr": 0.1, "lr_min": 1e-2, "lr_max": 1.0, "fixed": False, "sweep": False,
    },
}


def preset(kind: str) -> StudyConfig:
    """The defaults of study ``kind``: the fields' own, changed by its preset (and $RAY_ADDRESS)."""
    cfg = StudyConfig(kind=kind).updated(**PRESETS[kind])
    if os.environ.get("RAY_ADDRESS"):
        cfg = cfg.updated(address=os.environ["RAY_ADDRESS"])
    return cfg


def optuna_study_name(study: str, regime: str) -> str:
    """The Optuna study of one regime's search, in the study's optuna.db."""
    return f"{study}.{regime}"


def section_fields(cfg: StudyConfig):
    """(section config, field) of every flag, in --help order."""
    for name in StudyConfig.SECTIONS:
        part = getattr(cfg, name)
        for f in fields(part):
            yield part, f
