"""Command-line options of the lottery study, checked before anything is written.

A bad value ends the program with one line that names the flag and what it allows, exit status 2,
and no study folder created.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from trainables.data import DATASETS
from trainables.models import MODELS
from trainables.pipeline import PipelineConfig
from trainables.pruning import SCOPES

METHODS = ("magnitude", "l1-filter", "slimming")
from trainables.regimes import DEFAULT_REGIMES, REGIMES
from trainables.structured import PRESETS
from trainables.training import SCHEDULES
from search_spaces.lottery import LrSpace
from study import preflight
from study.preflight import BadFlag

PROG = "python -m study.lottery"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line (flag + what is allowed) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (the help text says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _check(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise BadFlag(flag, message)


def _number(text: str) -> float:
    """A float flag's value: a finite number (float() alone lets inf and nan through)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
    return value


def _csv(cast: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        return tuple(cast(t) for t in items)
    return parse


def _layer_ratios(text: str) -> tuple[tuple[str, float], ...]:
    out = []
    for item in _csv(str)(text):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected layer=ratio, got {item!r}")
        out.append((name.strip(), float(value)))
    return tuple(out)


def default_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "prune-platform", "data")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=(
        "The lottery study: tune the learning rate separately for each retraining regime "
        "(winning ticket, random re-init, ...) of a magnitude-pruned network, with one Optuna "
        "search per regime run as Ray Tune trials; every trial is logged to MLflow and Parquet."),
        formatter_class=DefaultsFormatter)
    s = p.add_argument_group("search")
    s.add_argument("--num-samples", type=int, default=64, help="trials per regime")
    s.add_argument("--regimes", type=_csv(str), default=",".join(DEFAULT_REGIMES),
                   help=f"comma-separated regimes, from: {', '.join(REGIMES)}")
    s.add_argument("--lr-min", type=_number, default=1e-3, help="lower end of the log-uniform LR range")
    s.add_argument("--lr-max", type=_number, default=1.0, help="upper end of the log-uniform LR range")
    s.add_argument("--lr-grid", type=int, default=8, metavar="N",
                   help="snap LRs to N points per decade so that trials share pretraining and IMP "
                        "artifacts; 0 samples continuously")
    s.add_argument("--startup-trials", type=int, default=10, help="random trials before TPE models (per regime)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of theta_0, data order, re-init draws (derived) and the TPE sampler")
    c = p.add_argument_group("confirmation (fresh seeds at each regime's best LR, and at two fixed LRs)")
    add_confirm_flags(c)
    c.add_argument("--no-confirm", action="store_true",
                   help="skip the confirmation (run it later with python -m study.confirm <study folder>)")
    d = p.add_argument_group("data and model")
    d.add_argument("--dataset", default="mnist1d", help=f"one of: {', '.join(DATASETS)}")
    d.add_argument("--data-dir", default=None, help="data cache folder (default: $XDG_CACHE_HOME/prune-platform/data, else ~/.cache/prune-platform/data)")
    d.add_argument("--data-seed", type=int, default=42, help="seed of the generated data set")
    d.add_argument("--val-fraction", type=_number, default=0.2, help="share of the training set held out for validation")
    d.add_argument("--train-subset", type=int, default=0, metavar="N",
                   help="train on N examples of the training split only, for quick runs on big data sets (0: all)")
    d.add_argument("--model", default="mlp", help=f"one of: {', '.join(MODELS)}")
    d.add_argument("--widths", type=_csv(int), default=None,
                   help="comma-separated hidden widths (default: mlp 300,100; conv1d channels 32,32,32)")
    t = p.add_argument_group("training (pretraining, IMP rounds and retraining alike)")
    t.add_argument("--epochs", type=int, default=20, help="epochs of every training run")
    t.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    t.add_argument("--momentum", type=_number, default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=_number, default=1e-4, help="SGD weight decay (L2)")
    t.add_argument("--schedule", default="cosine", help=f"LR schedule, one of: {', '.join(SCHEDULES)} "
                   "(step: /10 at 50%% and 75%% of training)")
    t.add_argument("--warmup-epochs", type=int, default=0, help="linear LR warmup epochs")
    t.add_argument("--lr-coupling", default="all",
                   help="all: the trial LR drives pretraining, IMP and retraining (as in the paper); "
                        "retrain: pretraining and IMP use --pretrain-lr")
    t.add_argument("--pretrain-lr", type=_number, default=0.1, help="LR of pretraining and IMP with --lr-coupling retrain")
    r = p.add_argument_group("pruning")
    r.add_argument("--sparsity", type=_number, default=0.8, help="target fraction of prunable weights removed, in (0, 1)")
    r.add_argument("--rounds", type=int, default=5,
                   help="IMP rounds, each removing the same fraction of the surviving weights; 1 = one-shot")
    r.add_argument("--prune-scope", default="global", help=f"one of: {', '.join(SCOPES)}")
    r.add_argument("--prune-layers", type=_csv(str), default=None,
                   help="comma-separated layer names to prune, e.g. net.1,net.3 (default: every Linear/Conv layer)")
    r.add_argument("--rewind-epoch", type=int, default=1, help="k of late_rewind (theta_k)")
    r.add_argument("--method", default="magnitude",
                   help=f"how to prune, one of: {', '.join(METHODS)} (magnitude: weight masks by IMP; "
                        "l1-filter: remove each conv's filters of smallest L1 norm (Li et al.); slimming: "
                        "L1 penalty on BatchNorm scales in pretraining, then remove the channels under one "
                        "global threshold (Liu et al.); structured methods remove channels physically)")
    r.add_argument("--prune-ratio", type=_number, default=0.5,
                   help="structured methods: fraction of each prunable layer's channels removed (slimming: of all channels)")
    r.add_argument("--preset", default=None,
                   help=f"l1-filter: the paper's per-layer ratios instead of --prune-ratio, one of: {', '.join(PRESETS)}")
    r.add_argument("--layer-ratios", type=_layer_ratios, default=None,
                   help="l1-filter: per-layer ratios overriding --prune-ratio, e.g. features.0=0.3,features.2=0.6 "
                        "(a layer at 0 keeps all its channels)")
    r.add_argument("--slimming-penalty", type=_number, default=1e-4, help="slimming: L1 strength on BatchNorm scales")
    r.add_argument("--fine-tune-epochs", type=int, default=None, help="fine_tune's epochs F (default: --epochs)")
    r.add_argument("--fine-tune-lr-min", type=_number, default=1e-4, help="fine_tune's own LR range: lower end")
    r.add_argument("--fine-tune-lr-max", type=_number, default=1e-1, help="fine_tune's own LR range: upper end")
    r.add_argument("--scratch-b-cap", type=_number, default=2.0,
                   help="scratch_b trains E * FLOPs(dense)/FLOPs(pruned) epochs, at most this many times E")
    p.set_defaults(study_kind="lottery")
    x = p.add_argument_group("execution and storage")
    x.add_argument("--root", default="studies", help="folder that holds study folders")
    x.add_argument("--name", default=None, help="study name, the folder under --root (default: lottery-<hash of the settings that change results>)")
    x.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, else a local runtime)")
    x.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray runtime (default: all of this machine's)")
    x.add_argument("--cpus-per-trial", type=_number, default=1.0, help="CPUs a trial reserves (also its torch threads)")
    x.add_argument("--gpus-per-trial", type=_number, default=0.0, help="fractions allowed, e.g. 0.25")
    x.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once per regime (0: as many as the cluster's CPUs and GPUs allow when the "
                        "study starts; on an autoscaling cluster give a number: pending trials make it grow)")
    x.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its checkpoint")
    x.add_argument("--checkpoint-every", type=int, default=5, metavar="N",
                   help="a trial checkpoints every N epochs of its own training, and after any epoch "
                        "ending 30 s or more after its last checkpoint (pretraining and IMP are cached "
                        "artifacts, never repeated)")
    x.add_argument("--storage", default=None,
                   help="where trials share pipeline artifacts, records and Ray Tune state: a folder every "
                        "node sees (NFS) or a URI (s3://bucket/studies, gs://...); the study's files go "
                        "under <storage>/<name>/ (default: the study folder)")
    x.add_argument("--resume", action="store_true",
                   help="continue the interrupted study named by --name (and --root) with its own settings; "
                        "only --address, --num-cpus and --max-concurrent may change")
    x.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: sqlite:///<study folder>/mlflow.db)")
    return p


def add_confirm_flags(g) -> None:
    """Flags shared by ``study.lottery`` and ``study.confirm``."""
    g.add_argument("--confirm-seeds", type=int, default=5, help="fresh seeds per regime and condition")
    g.add_argument("--fixed-small-lr", type=_number, default=0.01,
                   help="the paper's contrast: every regime also at this small fixed LR")
    g.add_argument("--fixed-large-lr", type=_number, default=0.3, help="... and at this large fixed LR")
    g.add_argument("--equivalence-margin", type=_number, default=1.0,
                   help="equivalence margin of a regime's advantage (e.g. the winning ticket's), in accuracy points")
    g.add_argument("--no-sweep", action="store_true",
                   help="skip the sparsity sweep (both regimes at every IMP round's mask, at the tuned LR)")
    g.add_argument("--no-fixed", action="store_true",
                   help="skip the fixed-LR conditions (the default of study.rethinking)")


def check_confirm_flags(a: argparse.Namespace) -> None:
    _check(a.confirm_seeds >= 1, "--confirm-seeds", f"must be >= 1 (got {a.confirm_seeds})")
    _check(a.fixed_small_lr > 0, "--fixed-small-lr", f"must be > 0 (got {a.fixed_small_lr:g})")
    _check(a.fixed_large_lr > a.fixed_small_lr, "--fixed-large-lr",
           f"must be greater than --fixed-small-lr (got {a.fixed_large_lr:g} <= {a.fixed_small_lr:g})")
    _check(0 < a.equivalence_margin < 100, "--equivalence-margin",
           f"must be in (0, 100) accuracy points (got {a.equivalence_margin:g})")


@dataclass(frozen=True)
class StudyOptions:
    args: argparse.Namespace
    pipeline: PipelineConfig
    lr_space: LrSpace
    regimes: tuple[str, ...]
    lr_spaces: dict[str, LrSpace] | None = None  # regimes searched in their own range (fine_tune)

    def space_for(self, regime: str) -> LrSpace:
        return (self.lr_spaces or {}).get(regime, self.lr_space)

    @property
    def contrasts(self) -> list[tuple[str, str]]:
        """The claim's pairs (a, b): regime a's test-accuracy advantage over regime b."""
        return contrasts_for(self.regimes)

    @property
    def study_dir(self) -> Path:
        return Path(self.args.root).resolve() / self.args.name

    @property
    def shared_root(self) -> str:
        """Where trials share artifacts, records and Tune state: <storage>/<name>, or the study folder."""
        storage = getattr(self.args, "storage", None)
        if not storage:
            return str(self.study_dir)
        return f"{storage.rstrip('/')}/{self.args.name}" if "://" in storage else str(Path(storage) / self.args.name)


def validate(args: argparse.Namespace, argv: Sequence[str]) -> StudyOptions:
    a = args
    _check(a.num_samples >= 1, "--num-samples", f"must be a positive integer (got {a.num_samples})")
    _check(len(a.regimes) >= 1 and all(r in REGIMES for r in a.regimes), "--regimes",
           f"must be a comma-separated list from {', '.join(REGIMES)} (got {','.join(a.regimes) or 'nothing'})")
    _check(len(set(a.regimes)) == len(a.regimes), "--regimes", "must not repeat a regime")
    _check(a.lr_min > 0, "--lr-min", f"must be > 0 (got {a.lr_min:g})")
    _check(a.lr_max > a.lr_min, "--lr-max", f"must be greater than --lr-min (got {a.lr_max:g} <= {a.lr_min:g})")
    _check(a.lr_grid >= 0, "--lr-grid", f"must be 0 (continuous) or a positive number of points per decade (got {a.lr_grid})")
    space = LrSpace(a.lr_min, a.lr_max, a.lr_grid)
    try:
        space.check()
    except ValueError as e:
        raise BadFlag("--lr-grid", f"is too coarse: {e}") from None
    if "fine_tune" in a.regimes:
        _check(a.fine_tune_lr_min > 0, "--fine-tune-lr-min", f"must be > 0 (got {a.fine_tune_lr_min:g})")
        _check(a.fine_tune_lr_max > a.fine_tune_lr_min, "--fine-tune-lr-max",
               f"must be greater than --fine-tune-lr-min (got {a.fine_tune_lr_max:g} <= {a.fine_tune_lr_min:g})")
        try:
            LrSpace(a.fine_tune_lr_min, a.fine_tune_lr_max, a.lr_grid).check()
        except ValueError as e:
            raise BadFlag("--lr-grid", f"is too coarse for fine_tune's range: {e}") from None
    _check(a.startup_trials >= 1, "--startup-trials", f"must be >= 1 (got {a.startup_trials})")
    check_confirm_flags(a)
    _check(a.dataset in DATASETS, "--dataset", f"must be one of {', '.join(DATASETS)} (got {a.dataset!r})")
    _check(0 < a.val_fraction < 1, "--val-fraction", f"must be in (0, 1) (got {a.val_fraction:g})")
    _check(a.train_subset >= 0, "--train-subset", f"must be >= 0 (got {a.train_subset})")
    _check(a.model in MODELS, "--model", f"must be one of {', '.join(MODELS)} (got {a.model!r})")
    _check(a.widths is None or (len(a.widths) >= 1 and all(w >= 1 for w in a.widths)), "--widths",
           "must be comma-separated positive integers")
    preflight.check_model_fits_data(a.model, a.widths, a.dataset)
    _check(a.epochs >= 1, "--epochs", f"must be >= 1 (got {a.epochs})")
    _check(a.batch_size >= 1, "--batch-size", f"must be >= 1 (got {a.batch_size})")
    _check(0 <= a.momentum < 1, "--momentum", f"must be in [0, 1) (got {a.momentum:g})")
    _check(a.weight_decay >= 0, "--weight-decay", f"must be >= 0 (got {a.weight_decay:g})")
    _check(a.schedule in SCHEDULES, "--schedule", f"must be one of {', '.join(SCHEDULES)} (got {a.schedule!r})")
    _check(0 <= a.warmup_epochs < a.epochs, "--warmup-epochs", f"must be in [0, --epochs) (got {a.warmup_epochs})")
    _check(a.lr_coupling in ("all", "retrain"), "--lr-coupling", f"must be all or retrain (got {a.lr_coupling!r})")
    _check(a.pretrain_lr > 0, "--pretrain-lr", f"must be > 0 (got {a.pretrain_lr:g})")
    _check(0 < a.sparsity < 1, "--sparsity", f"must be in (0, 1) (got {a.sparsity:g})")
    _check(a.rounds >= 1, "--rounds", f"must be >= 1 (got {a.rounds})")
    _check(a.prune_scope in SCOPES, "--prune-scope", f"must be one of {', '.join(SCOPES)} (got {a.prune_scope!r})")
    _check(0 <= a.rewind_epoch < a.epochs or "late_rewind" not in a.regimes, "--rewind-epoch", f"must be in [0, --epochs) (got {a.rewind_epoch})")
    _check(a.method in METHODS, "--method", f"must be one of {', '.join(METHODS)} (got {a.method!r})")
    structured = a.method != "magnitude"
    _check(not structured or a.rounds == 1, "--rounds", f"must be 1 with a structured --method (got {a.rounds})")
    _check(0 < a.prune_ratio < 1, "--prune-ratio", f"must be in (0, 1) (got {a.prune_ratio:g})")
    _check(a.preset is None or a.preset in PRESETS, "--preset", f"must be one of {', '.join(PRESETS)} (got {a.preset!r})")
    _check(a.preset is None or a.method == "l1-filter", "--preset", f"applies to --method l1-filter only (got {a.method})")
    _check(a.layer_ratios is None or a.method == "l1-filter", "--layer-ratios",
           f"applies to --method l1-filter only (got {a.method})")
    _check(a.layer_ratios is None or a.preset is None, "--layer-ratios", "and --preset exclude each other")
    _check(a.layer_ratios is None or all(0 <= r < 1 for _, r in a.layer_ratios), "--layer-ratios",
           "ratios must be in [0, 1)")
    _check(a.slimming_penalty >= 0, "--slimming-penalty", f"must be >= 0 (got {a.slimming_penalty:g})")
    _check(a.fine_tune_epochs is None or a.fine_tune_epochs >= 1, "--fine-tune-epochs", f"must be >= 1 (got {a.fine_tune_epochs})")
    _check(a.scratch_b_cap >= 1, "--scratch-b-cap", f"must be >= 1 (got {a.scratch_b_cap:g})")
    _check(not {"late_rewind"} & set(a.regimes) or not structured, "--regimes",
           "late_rewind needs --method magnitude (it rewinds IMP itself)")
    _check(not {"winning_ticket", "random_reinit"} & set(a.regimes) or not structured, "--regimes",
           "winning_ticket and random_reinit need --method magnitude (theta_0 * m); for a structured network use scratch_e")
    _check(a.cpus_per_trial > 0, "--cpus-per-trial", f"must be > 0 (got {a.cpus_per_trial:g})")
    _check(a.gpus_per_trial >= 0, "--gpus-per-trial", f"must be >= 0 (got {a.gpus_per_trial:g})")
    _check(a.gpus_per_trial <= 1 or float(a.gpus_per_trial).is_integer(), "--gpus-per-trial",
           f"must be a fraction in [0, 1] or a whole number (got {a.gpus_per_trial:g})")
    _check(a.max_concurrent >= 0, "--max-concurrent", f"must be >= 0 (got {a.max_concurrent})")
    _check(a.max_failures >= 0, "--max-failures", f"must be >= 0 (got {a.max_failures})")
    _check(a.checkpoint_every >= 1, "--checkpoint-every", f"must be >= 1 (got {a.checkpoint_every})")
    _check(a.num_cpus is None or a.num_cpus >= 1, "--num-cpus", f"must be >= 1 (got {a.num_cpus})")
    _check(a.name is None or bool(NAME_RE.match(a.name)), "--name",
           "must be 1-100 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")
    root = Path(a.root)
    _check(not root.exists() or root.is_dir(), "--root", f"must be a folder ({root} is a file)")
    _check(a.mlflow_uri is None or "://" in a.mlflow_uri or a.mlflow_uri.startswith(("http", "databricks")),
           "--mlflow-uri", f"must be a URI such as http://127.0.0.1:5000 or sqlite:////abs/mlflow.db (got {a.mlflow_uri!r})")
    if a.data_dir is None:
        a.data_dir = default_data_dir()
    a.data_dir = str(Path(a.data_dir).expanduser().resolve())
    pipe = PipelineConfig(
        dataset=a.dataset, data_dir=a.data_dir, data_seed=a.data_seed, val_fraction=a.val_fraction,
        train_subset=a.train_subset,
        model=a.model, widths=a.widths, epochs=a.epochs, batch_size=a.batch_size, momentum=a.momentum,
        weight_decay=a.weight_decay, schedule=a.schedule, warmup_epochs=a.warmup_epochs,
        target_sparsity=a.sparsity, rounds=a.rounds, prune_scope=a.prune_scope,
        prune_layers=a.prune_layers, rewind_epoch=a.rewind_epoch, lr_coupling=a.lr_coupling,
        pretrain_lr=a.pretrain_lr, method=a.method, prune_ratio=a.prune_ratio, preset=a.preset,
        slimming_penalty=a.slimming_penalty, fine_tune_epochs=a.fine_tune_epochs, scratch_b_cap=a.scratch_b_cap,
        layer_ratios=a.layer_ratios)
    if a.prune_layers is not None:
        _check_layers(pipe)
    if structured:
        _check_structured(pipe)
    if a.storage is not None:
        if "://" in a.storage:
            scheme = a.storage.split("://", 1)[0]
            _check(scheme in STORAGE_SCHEMES, "--storage",
                   f"must be a folder or a URI with a scheme from {', '.join(STORAGE_SCHEMES)} (got {a.storage!r})")
        else:
            _check(not Path(a.storage).exists() or Path(a.storage).is_dir(), "--storage",
                   f"must be a folder ({a.storage} is a file)")
            a.storage = str(Path(a.storage).resolve())
    opts = StudyOptions(a, pipe, space, tuple(a.regimes), lr_spaces(a))
    if a.name is None:
        a.name = f"{a.study_kind}-{config_hash(opts)[:10]}"
    if a.resume:
        _check((opts.study_dir / "study.json").exists(), "--resume",
               f"needs an existing study folder with study.json; {opts.study_dir} has none (check --name and --root)")
        opts = resumed_options(opts.study_dir, a, argv)
        _check_surroundings(opts.args)
        return opts
    _check(not opts.study_dir.exists(), "--name",
           f"names an existing study folder ({opts.study_dir}); choose another --name or --root, or --resume it")
    _check_surroundings(a)
    _check_data(a)
    return opts


def _check_surroundings(a: argparse.Namespace) -> None:
    """What the study will run on and write to can serve it (see ``study.preflight``)."""
    if a.address:
        preflight.check_cluster(a.address)
    else:
        preflight.check_local_resources(a.num_cpus, a.cpus_per_trial, a.gpus_per_trial)
    if a.mlflow_uri:
        preflight.check_tracking_server(a.mlflow_uri)
    if a.storage:
        preflight.check_storage(a.storage)


def _check_data(a: argparse.Namespace) -> None:
    """The data set is there (generated, found or downloaded) before the study folder is made; the
    loaded splits stay cached for the driver."""
    from trainables.data import DataUnavailable, load_splits
    try:
        load_splits(a.dataset, a.data_dir, a.data_seed, a.val_fraction, a.data_seed)
    except DataUnavailable as e:
        raise BadFlag("--data-dir", f"has no {a.dataset}: {e}") from None


STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")
RESUME_OVERRIDES = ("address", "num_cpus", "max_concurrent")


def resumed_options(study_dir: Path, given: argparse.Namespace, argv: Sequence[str]) -> StudyOptions:
    """The study's own options; the execution flags given on this command line replace theirs."""
    opts = options_from_study(study_dir)
    for key in RESUME_OVERRIDES:
        if f"--{key.replace('_', '-')}" in argv:
            setattr(opts.args, key, getattr(given, key))
    opts.args.resume = True
    opts.args.root = given.root
    return opts


def lr_spaces(a: argparse.Namespace) -> dict[str, LrSpace]:
    """Regimes searched in a range of their own: fine-tuning needs lower LRs than training from scratch."""
    return {"fine_tune": LrSpace(a.fine_tune_lr_min, a.fine_tune_lr_max, a.lr_grid)} if "fine_tune" in a.regimes else {}


def contrasts_for(regimes: Sequence[str]) -> list[tuple[str, str]]:
    """Each study's claim as pairs (a, b) of regimes present: a's advantage over b."""
    pairs = [("winning_ticket", "random_reinit"), ("scratch_e", "fine_tune"), ("scratch_b", "fine_tune"),
             ("lr_rewind", "fine_tune"), ("random_prune", "scratch_e")]
    return [(x, y) for x, y in pairs if x in regimes and y in regimes]


def _check_structured(pipe: PipelineConfig) -> None:
    """A structured method needs layers whose channels it can remove (and slimming BatchNorm)."""
    import torch
    from torch import nn

    from trainables.models import build_model
    from trainables.structured import preset_layer_ratios, prunable_convs
    entry = DATASETS[pipe.dataset]
    model = build_model(pipe.model, entry.input_shape, entry.num_classes, pipe.widths)
    known = prunable_convs(model, torch.zeros(1, *entry.input_shape))  # one trace, with the data's shape
    _check(bool(known), "--method", f"{pipe.method} finds no prunable channels in --model {pipe.model}")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    _check(pipe.method != "slimming" or has_bn, "--method",
           f"slimming needs a model with BatchNorm (vgg*, resnet*), not {pipe.model}")
    if pipe.preset:
        try:
            preset_layer_ratios(pipe.preset, model)
        except ValueError as e:
            raise BadFlag("--preset", str(e)) from None
    if pipe.layer_ratios:
        unknown = [n for n, _ in pipe.layer_ratios if n not in known]
        _check(not unknown, "--layer-ratios",
               f"must name prunable layers of {pipe.model}, from {', '.join(known)} (unknown: {', '.join(unknown)})")


def _check_layers(pipe: PipelineConfig) -> None:
    from trainables.models import build_model, prunable_layers
    entry = DATASETS[pipe.dataset]
    known = prunable_layers(build_model(pipe.model, entry.input_shape, entry.num_classes, pipe.widths))
    unknown = [n for n in pipe.prune_layers or () if n not in known]
    _check(not unknown, "--prune-layers", f"must name layers of the model, from {', '.join(known)} (unknown: {', '.join(unknown)})")


def search_config(opts: StudyOptions) -> dict[str, Any]:
    """Every setting that changes the study's results (not where it runs or is stored)."""
    a = opts.args
    return {"pipeline": {k: v for k, v in opts.pipeline.as_dict().items() if k != "data_dir"},
            "regimes": list(opts.regimes), "num_samples": a.num_samples, "lr_min": a.lr_min,
            "lr_max": a.lr_max, "lr_grid": a.lr_grid, "startup_trials": a.startup_trials, "seed": a.seed,
            "confirm": None if a.no_confirm else {"seeds": a.confirm_seeds, "fixed_small_lr": a.fixed_small_lr,
                                                  "fixed_large_lr": a.fixed_large_lr, "sweep": not a.no_sweep,
                                                  **({"fixed": False} if a.no_fixed else {})},
            **({"study_kind": a.study_kind} if a.study_kind != "lottery" else {}),
            **({"lr_spaces": {r: [s.lr_min, s.lr_max] for r, s in opts.lr_spaces.items()}} if opts.lr_spaces else {})}


def config_hash(opts: StudyOptions) -> str:
    from trainables.artifacts import spec_hash
    return spec_hash(search_config(opts))


def optuna_study_name(study: str, regime: str) -> str:
    """The Optuna study of one regime's search, in the study's optuna.db."""
    return f"{study}.{regime}"


def options_from_study(study_dir: Path) -> StudyOptions:
    """The options a study ran with, from its ``study.json`` (for work on a finished study)."""
    import json
    info = json.loads((study_dir / "study.json").read_text())
    a = argparse.Namespace(**{**vars(build_parser().parse_args([])), **info["args"]})
    for key in ("regimes", "widths", "prune_layers"):
        if getattr(a, key) is not None:
            setattr(a, key, tuple(getattr(a, key)))
    pipe = dict(info["config"]["pipeline"], data_dir=a.data_dir)
    for key in ("widths", "prune_layers"):
        pipe[key] = tuple(pipe[key]) if pipe[key] else None
    for key in ("layer_ratios",):  # pairs, from JSON lists
        if pipe.get(key):
            pipe[key] = tuple((n, float(r)) for n, r in pipe[key])
        if getattr(a, key, None):
            setattr(a, key, tuple((n, float(r)) for n, r in getattr(a, key)))
    return StudyOptions(a, PipelineConfig(**pipe), LrSpace(a.lr_min, a.lr_max, a.lr_grid), tuple(a.regimes), lr_spaces(a))


def parse(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> StudyOptions:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        return validate(args, argv)
    except BadFlag as e:
        parser.error(str(e))
