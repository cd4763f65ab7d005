"""The pipeline's settings: data, model, training and pruning, as frozen dataclasses.

Each field is declared once with ``setting(default, help)``: its default, its help text and, where it
needs one, how its flag's text is read.  ``study.cli`` makes the command-line flags from the fields
(``--<field-name>``; a boolean that defaults to True becomes ``--no-<field-name>``), each config's
``check`` refuses a bad value naming the field, and ``study.json`` stores the configs and rebuilds
them exactly (``to_dict`` / ``from_dict``).  Nothing heavy is imported here: ``--help`` must not
load torch.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable

# Names of what the torch-side modules define (trainables.data.DATASETS, trainables.models.MODELS,
# trainables.training's schedules, trainables.pruning's scopes); each of those modules checks at
# import that it defines exactly these, so the flags can list them without importing torch.
DATASET_NAMES = ("mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100")
MODEL_NAMES = ("mlp", "conv1d", "lenet300", "conv2", "conv4", "conv6", "vgg11", "vgg16", "vgg19",
               "resnet20", "resnet56", "resnet110")
SCHEDULES = ("cosine", "step", "constant")
SCOPES = ("global", "layerwise")
PRESET_NAMES = ("vgg16-a", "resnet56-a", "resnet56-b", "resnet110-a", "resnet110-b")
LR_COUPLINGS = ("all", "retrain")


class ConfigError(ValueError):
    """A setting's value is not allowed: ``name`` is the field (the flag is ``--<name>``)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{flag(name)} {message}")
        self.name, self.message = name, message


def flag(name: str) -> str:
    """The command-line flag of the setting ``name`` (a boolean defaulting to True: --no-<name>)."""
    return "--" + name.replace("_", "-")


def setting(default: Any, help: str | Callable[[], str], *, parse: Callable[[str], Any] | None = None,
            metavar: str | None = None, choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None) -> Any:
    """A config field: its one default, its help text (a callable: made when the flags are, from a
    registry), and optionally how its flag's text is read (default: from the field's type) and the
    names it may take (a callable: looked up from a registry when checked)."""
    return field(default=default, metadata={"help": help, "parse": parse, "metavar": metavar, "choices": choices})


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(name, message)


def choices_of(cls: type, name: str) -> tuple[str, ...] | None:
    c = next(f for f in fields(cls) if f.name == name).metadata.get("choices")
    return c() if callable(c) else c


class Settings:
    """Behaviour shared by every config: each checks its own fields, and all nest."""

    title: ClassVar[str] = ""  # the --help group's title

    def check(self) -> None:
        """Refuse a value outside its field's choices; subclasses add their own rules."""
        for f in fields(self):
            allowed = choices_of(type(self), f.name)
            value = getattr(self, f.name)
            if allowed is not None and value is not None:
                values = value if isinstance(value, tuple) else (value,)
                bad = [v for v in values if v not in allowed]
                require(not bad, f.name, f"must be {'from' if isinstance(value, tuple) else 'one of'} "
                                         f"{', '.join(allowed)} (got {', '.join(map(str, bad))})")
            elif isinstance(value, float):
                require(math.isfinite(value), f.name, f"must be a finite number (got {value!r})")

    def updated(self, **values: Any) -> "Settings":
        """A copy with ``values`` set, each by its field name wherever it sits in the nesting."""
        leaves = {f.name for f in fields(self) if not isinstance(getattr(self, f.name), Settings)}
        out = dataclasses.replace(self, **{k: v for k, v in values.items() if k in leaves})
        rest = {k: v for k, v in values.items() if k not in leaves}  # "model" is a section and a leaf in it
        changes = {}
        for f in fields(self):
            sub = getattr(out, f.name)
            if isinstance(sub, Settings):
                names = set(sub.leaf_names())
                mine_here = {k: v for k, v in rest.items() if k in names}
                if mine_here:
                    changes[f.name] = sub.updated(**mine_here)
                rest = {k: v for k, v in rest.items() if k not in names}
        if rest:
            raise TypeError(f"no setting named {', '.join(sorted(rest))}")
        return dataclasses.replace(out, **changes) if changes else out

    def leaf_names(self) -> Iterable[str]:
        for f in fields(self):
            sub = getattr(self, f.name)
            if isinstance(sub, Settings):
                yield from sub.leaf_names()
            else:
                yield f.name

    def value(self, name: str) -> Any:
        """The leaf setting ``name`` wherever it sits in the nesting."""
        for f in fields(self):
            sub = getattr(self, f.name)
            if f.name == name and not isinstance(sub, Settings):
                return sub
            if isinstance(sub, Settings) and name in set(sub.leaf_names()):
                return sub.value(name)
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists."""
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Settings":
        """The config ``to_dict`` gave (lists back to tuples: every sequence in a config is a tuple)."""
        kwargs = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            sub = _nested_type(cls, f.name)
            kwargs[f.name] = sub.from_dict(d[f.name]) if sub is not None else _tuples(d[f.name])
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
        return cls(**kwargs)


def _nested_type(cls: type, name: str) -> type | None:
    default = next(f for f in fields(cls) if f.name == name).default_factory  # type: ignore[misc]
    if default is dataclasses.MISSING:
        return None
    probe = default()
    return type(probe) if isinstance(probe, Settings) else None


def plain(x: Any) -> Any:
    """JSON-ready: tuples become lists, NaN becomes null (a diverged loss)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def nested(cls: type) -> Any:
    return field(default_factory=cls)


# -- readers of flag text (the field's type covers the rest) ------------------------------------

def layer_ratios(text: str) -> tuple[tuple[str, float], ...]:
    """``features.0=0.3,features.2=0.6`` -> ((name, ratio), ...)."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected layer=ratio, got {item!r}")
        out.append((name.strip(), float(value)))
    return tuple(out)


def default_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "prune-platform", "data")


# -- the pipeline's configs -----------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig(Settings):
    title: ClassVar[str] = "data"

    dataset: str = setting("mnist1d", "the data set", choices=DATASET_NAMES)
    data_dir: str | None = setting(None, "data cache folder (default: $XDG_CACHE_HOME/prune-platform/data, "
                                         "else ~/.cache/prune-platform/data)")
    data_seed: int = setting(42, "seed of the generated data set and of the validation split")
    val_fraction: float = setting(0.2, "share of the training set held out for validation")
    train_subset: int = setting(0, "train on N examples of the training split only, for quick runs on big "
                                   "data sets (0: all)", metavar="N")

    def check(self) -> None:
        super().check()
        require(0 < self.val_fraction < 1, "val_fraction", f"must be in (0, 1) (got {self.val_fraction:g})")
        require(self.train_subset >= 0, "train_subset", f"must be >= 0 (got {self.train_subset})")

    def spec(self) -> dict[str, Any]:
        """What determines the data a trial sees (artifact keys)."""
        return {"dataset": self.dataset, "data_seed": self.data_seed, "val_fraction": self.val_fraction,
                **({"train_subset": self.train_subset} if self.train_subset else {})}


@dataclass(frozen=True)
class ModelConfig(Settings):
    title: ClassVar[str] = "model"

    model: str = setting("mlp", "the network", choices=MODEL_NAMES)
    widths: tuple[int, ...] | None = setting(None, "comma-separated hidden widths (default: the model's own, "
                                                   "e.g. mlp 300,100; conv1d channels 32,32,32)")

    def check(self) -> None:
        super().check()
        require(self.widths is None or (len(self.widths) >= 1 and all(w >= 1 for w in self.widths)), "widths",
                "must be comma-separated positive integers")


@dataclass(frozen=True)
class TrainingConfig(Settings):
    title: ClassVar[str] = "training (pretraining, IMP rounds and retraining alike)"

    epochs: int = setting(20, "epochs of every training run")
    batch_size: int = setting(64, "mini-batch size")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "SGD weight decay (L2)")
    schedule: str = setting("cosine", "LR schedule (step: /10 at 50% and 75% of training)", choices=SCHEDULES)
    warmup_epochs: int = setting(0, "linear LR warmup epochs")
    lr_coupling: str = setting("all", "all: the trial LR drives pretraining, IMP and retraining (as in the paper); "
                                      "retrain: pretraining and IMP use --pretrain-lr", choices=LR_COUPLINGS)
    pretrain_lr: float = setting(0.1, "LR of pretraining and IMP with --lr-coupling retrain")

    def check(self) -> None:
        super().check()
        require(self.epochs >= 1, "epochs", f"must be >= 1 (got {self.epochs})")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1) (got {self.momentum:g})")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0 (got {self.weight_decay:g})")
        require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs",
                f"must be in [0, --epochs) (got {self.warmup_epochs})")
        require(self.pretrain_lr > 0, "pretrain_lr", f"must be > 0 (got {self.pretrain_lr:g})")

    def pretrain_lr_for(self, trial_lr: float) -> float:
        return trial_lr if self.lr_coupling == "all" else self.pretrain_lr


def _methods() -> tuple[str, ...]:
    from trainables.methods import selectable
    return selectable()


def _method_help() -> str:
    from trainables.methods import METHODS
    return "how to prune: " + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values() if m.selectable)


@dataclass(frozen=True)
class PruningConfig(Settings):
    title: ClassVar[str] = "pruning"

    sparsity: float = setting(0.8, "target fraction of prunable weights removed, in (0, 1)")
    rounds: int = setting(5, "IMP rounds, each removing the same fraction of the surviving weights; 1 = one-shot")
    prune_scope: str = setting("global", "one threshold over all layers, or each layer its own", choices=SCOPES)
    prune_layers: tuple[str, ...] | None = setting(None, "comma-separated layer names to prune, e.g. net.1,net.3 "
                                                         "(default: every Linear/Conv layer)")
    rewind_epoch: int = setting(1, "k of late_rewind (theta_k)")
    method: str = setting("magnitude", _method_help, choices=_methods)
    prune_ratio: float = setting(0.5, "structured methods: fraction of each prunable layer's channels removed "
                                      "(slimming: of all channels)")
    preset: str | None = setting(None, "l1-filter: the paper's per-layer ratios instead of --prune-ratio",
                                 choices=PRESET_NAMES)
    layer_ratios: tuple[tuple[str, float], ...] | None = setting(
        None, "l1-filter: per-layer ratios overriding --prune-ratio, e.g. features.0=0.3,features.2=0.6 "
              "(a layer at 0 keeps all its channels)", parse=layer_ratios)
    slimming_penalty: float = setting(1e-4, "slimming: L1 strength on BatchNorm scales")
    fine_tune_epochs: int | None = setting(None, "fine_tune's epochs F (default: --epochs)")
    scratch_b_cap: float = setting(2.0, "scratch_b trains E * FLOPs(dense)/FLOPs(pruned) epochs, at most this "
                                        "many times E")

    @property
    def structured(self) -> bool:
        from trainables.methods import get_method
        return get_method(self.method).structured

    def check(self) -> None:
        from trainables.methods import get_method
        super().check()
        require(0 < self.sparsity < 1, "sparsity", f"must be in (0, 1) (got {self.sparsity:g})")
        require(self.rounds >= 1, "rounds", f"must be >= 1 (got {self.rounds})")
        structured = self.structured
        require(not structured or self.rounds == 1, "rounds",
                f"must be 1 with a structured --method (got {self.rounds})")
        require(0 < self.prune_ratio < 1, "prune_ratio", f"must be in (0, 1) (got {self.prune_ratio:g})")
        per_layer = structured and get_method(self.method).allocation == "layer"  # l1-filter, or a plugin's
        require(self.preset is None or per_layer, "preset",
                f"applies to structured methods with per-layer ratios (l1-filter) only (got {self.method})")
        require(self.layer_ratios is None or per_layer, "layer_ratios",
                f"applies to structured methods with per-layer ratios (l1-filter) only (got {self.method})")
        require(self.layer_ratios is None or self.preset is None, "layer_ratios", "and --preset exclude each other")
        require(self.layer_ratios is None or all(0 <= r < 1 for _, r in self.layer_ratios), "layer_ratios",
                "ratios must be in [0, 1)")
        require(self.slimming_penalty >= 0, "slimming_penalty", f"must be >= 0 (got {self.slimming_penalty:g})")
        require(self.fine_tune_epochs is None or self.fine_tune_epochs >= 1, "fine_tune_epochs",
                f"must be >= 1 (got {self.fine_tune_epochs})")
        require(self.scratch_b_cap >= 1, "scratch_b_cap", f"must be >= 1 (got {self.scratch_b_cap:g})")


@dataclass(frozen=True)
class PipelineConfig(Settings):
    """What every trial of a study shares (the per-trial LR and seeds are passed separately)."""

    data: DataConfig = nested(DataConfig)
    model: ModelConfig = nested(ModelConfig)
    training: TrainingConfig = nested(TrainingConfig)
    pruning: PruningConfig = nested(PruningConfig)

    def check(self) -> None:
        for part in (self.data, self.model, self.training, self.pruning):
            part.check()

    def flat(self) -> dict[str, Any]:
        """Every setting by its field name (data_dir left out: where the data is cached changes nothing)."""
        out: dict[str, Any] = {}
        for part in (self.data, self.model, self.training, self.pruning):
            out.update({f.name: getattr(part, f.name) for f in fields(part)})
        out.pop("data_dir")
        return out
