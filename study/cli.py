"""The command line of a study: flags made from the config's fields, read into a ``StudyConfig``
and checked before anything is written.

Every field of ``study.config.StudyConfig``'s sections is a flag ``--<field-name>`` (a boolean that
defaults to True: ``--no-<field-name>``), with the field's help text and the study kind's default.
A bad value ends the program with one line that names the flag and what it allows, exit status 2,
and no study folder created: the configs check their own fields, then ``study.preflight`` checks
what needs more than the flags (the model against the data set, the resources, the cluster,
tracking server and storage).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from study import preflight
from study.config import ConfirmationConfig, ExecutionConfig, StudyConfig, preset, section_fields
from study.preflight import BadFlag
from trainables.config import ConfigError, choices_of, default_data_dir, flag

DESCRIPTIONS = {
    "lottery": "The lottery study: tune the learning rate separately for each retraining regime (winning ticket, "
               "random re-init, ...) of a magnitude-pruned network, with one Optuna search per regime run as Ray "
               "Tune trials; every trial is logged to MLflow and Parquet.",
    "rethinking": "The rethinking study: prune a trained network (structured: channels removed, or by magnitude), "
                  "then compare fine-tuning its inherited weights with training the pruned network from scratch "
                  "(Scratch-E, Scratch-B), each regime at its own best learning rate, found by its own Optuna "
                  "search run as Ray Tune trials; every trial is logged to MLflow and Parquet.",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line (flag + what is allowed) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str) -> float:
    """A float flag's value: a finite number (float() alone lets inf and nan through)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None


def _csv(cast: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(cast(t.strip()) for t in text.split(",") if t.strip())
    return parse


def _reader(f: Field) -> Callable[[str], Any]:
    """How a flag's text becomes the field's value: the field's own reader, else by its type."""
    if f.metadata.get("parse"):
        own = f.metadata["parse"]

        def read(text: str) -> Any:
            try:
                return own(text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return read
    kind = str(f.type).split("|")[0].strip()
    return {"int": _integer, "float": _number, "str": str, "tuple[int, ...]": _csv(_integer),
            "tuple[str, ...]": _csv(str)}[kind]


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_flags(group, part, f: Field) -> None:
    """The flag of field ``f`` of config ``part`` (whose values are the defaults shown)."""
    default = getattr(part, f.name)
    help_text = f.metadata["help"]() if callable(f.metadata["help"]) else f.metadata["help"]
    choices = choices_of(type(part), f.name)
    if choices:
        help_text += f", from: {', '.join(choices)}" if isinstance(default, tuple) else f", one of: {', '.join(choices)}"
    if str(f.type) == "bool":  # the flag turns the field's own default around (a preset may have done so)
        name, action = (f"no_{f.name}", "store_false") if f.default else (f.name, "store_true")
        group.add_argument(flag(name), dest=f.name, action=action, default=argparse.SUPPRESS,
                           help=help_text.replace("%", "%%"))
        return
    if default not in (None, ()) and "default" not in help_text:
        help_text += f" (default: {_shown(default)})"
    group.add_argument(flag(f.name), dest=f.name, type=_reader(f), default=argparse.SUPPRESS,
                       metavar=f.metadata.get("metavar"), help=help_text.replace("%", "%%"))


def build_parser(kind: str = "lottery") -> argparse.ArgumentParser:
    """The study's flags, each given only when typed (``argparse.SUPPRESS``): what was given is known."""
    p = OneLineParser(prog=f"python -m study.{kind}", description=DESCRIPTIONS[kind])
    defaults = preset(kind)
    groups = {}
    for part, f in section_fields(defaults):
        if part.title not in groups:
            groups[part.title] = p.add_argument_group(part.title)
        add_flags(groups[part.title], part, f)
    return p


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules of ``--plugins`` (each may register regimes and pruning methods)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # any failure to import is the same answer for the user
            raise BadFlag("--plugins", f"cannot import {name}: {type(e).__name__}: {e}".splitlines()[0]) from None


def _resolved(cfg: StudyConfig) -> StudyConfig:
    """Paths made absolute (trials run in other folders), the data folder's default filled in."""
    data_dir = str(Path(cfg.data.data_dir or default_data_dir()).expanduser().resolve())
    storage = cfg.execution.storage
    if storage is not None and "://" not in storage:
        storage = str(Path(storage).resolve())
    return cfg.updated(data_dir=data_dir, storage=storage)


def study_config(given: dict[str, Any], kind: str) -> StudyConfig:
    """The study that ``given`` (flag values by field name) asks for, checked; raises BadFlag or
    ConfigError (both one line that names the flag)."""
    import_plugins(given.get("plugins", ()))
    if given.get("resume"):
        return _resumed(given)
    cfg = _resolved(preset(kind).updated(**given))
    cfg.check()
    preflight.check_pipeline(cfg.pipeline)
    if cfg.execution.name is None:
        cfg = cfg.updated(name=f"{kind}-{cfg.study_hash()[:10]}")
    if cfg.study_dir.exists():
        raise BadFlag("--name", f"names an existing study folder ({cfg.study_dir}); choose another --name or "
                                f"--root, or --resume it")
    check_surroundings(cfg)
    preflight.check_data(cfg.data)
    return cfg


def _resumed(given: dict[str, Any]) -> StudyConfig:
    """The interrupted study's own config; only the flags ``--resume`` allows may change it."""
    allowed = {"resume", "root", "name", *ExecutionConfig.RESUMABLE}
    extra = [flag(k) for k in given if k not in allowed]
    if extra:
        raise BadFlag("--resume", f"continues a study with its own settings; only --root, --name, "
                                  f"{', '.join(map(flag, ExecutionConfig.RESUMABLE))} may be given with it "
                                  f"(got {', '.join(extra)})")
    if not given.get("name"):
        raise BadFlag("--resume", "needs --name of the study to continue")
    study_dir = Path(given.get("root", ExecutionConfig().root)).resolve() / given["name"]
    if not (study_dir / "study.json").exists():
        raise BadFlag("--resume", f"needs an existing study folder with study.json; {study_dir} has none "
                                  f"(check --name and --root)")
    cfg = load_study_config(study_dir)
    changes = {k: v for k, v in given.items() if k in ExecutionConfig.RESUMABLE}
    cfg = cfg.updated(root=str(Path(given.get("root", cfg.execution.root))), resume=True, **changes)
    cfg.execution.check()
    import_plugins(cfg.execution.plugins)
    check_surroundings(cfg)
    return cfg


def load_study_config(study_dir: Path) -> StudyConfig:
    """The config a study ran with, from its ``study.json`` (for work on a study already made)."""
    info = json.loads((Path(study_dir) / "study.json").read_text())
    return StudyConfig.from_dict(info["config"])


def check_surroundings(cfg: StudyConfig) -> None:
    """What the study will run on and write to can serve it (see ``study.preflight``)."""
    x = cfg.execution
    if x.address:
        preflight.check_cluster(x.address, x.cpus_per_trial, x.gpus_per_trial)
    else:
        preflight.check_local_resources(x.num_cpus, x.cpus_per_trial, x.gpus_per_trial)
    if x.mlflow_uri:
        preflight.check_tracking_server(x.mlflow_uri)
    if x.storage:
        preflight.check_storage(x.storage)


def parse(argv: Sequence[str] | None = None, kind: str = "lottery") -> StudyConfig:
    """The checked config of ``python -m study.<kind> <argv>``; a bad flag exits with status 2."""
    parser = build_parser(kind)
    given = vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    try:
        return study_config(given, kind)
    except (BadFlag, ConfigError) as e:
        parser.error(str(e))


def confirm_parser() -> argparse.ArgumentParser:
    """``python -m study.confirm``: a finished search's folder, and the confirmation's flags."""
    p = OneLineParser(prog="python -m study.confirm",
                      description="python -m study.confirm <study folder>: the confirmation phase of a finished "
                                  "search (study.lottery runs it at its end unless --no-confirm).")
    p.add_argument("study_dir", help="a study folder made by python -m study.lottery or study.rethinking")
    g = p.add_argument_group(ConfirmationConfig.title)
    defaults = ConfirmationConfig()
    for f in fields(ConfirmationConfig):
        if f.name != "confirm":
            add_flags(g, defaults, f)
    x = ExecutionConfig()
    add_flags(p, x, next(f for f in fields(ExecutionConfig) if f.name == "address"))
    return p

