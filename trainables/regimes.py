"""The retraining regimes and what each carries: one registry entry per regime.

An entry names the function that makes the regime's start point (``trainables.starts``: the initial
weights and mask or the pruned network, from cached artifacts), and what the rest of the platform
needs to know about it: its readable label and colour, what it needs (a magnitude mask, or any pruned
network), the LR range its search covers, whether the sparsity sweep covers it, and the regimes it is
contrasted with.  The option checks, the confirmation's plan, the analysis and the figures read this
registry and keep no lists of their own.  Nothing heavy is imported here (``--help`` lists the
regimes without loading torch); the start functions are resolved when a trial runs.

A new regime is one start function plus one ``register_regime`` call::

    from trainables.regimes import Regime, register_regime
    def my_regime(pipeline, lr, seed, prune_round):  # -> trainables.starts.Start
        ...
    register_regime(Regime("my_regime", my_regime, "my regime", "what it does"))

and ``--plugins my_module`` makes the study (and every trial) import the module that registers it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

NEEDS = ("mask", "pruned")  # a magnitude mask (theta_0 * m and kin), or any pruned network


@dataclass(frozen=True)
class Regime:
    name: str
    start: Callable[..., Any] | str  # (pipeline, lr, seed, prune_round) -> Start, or "module:function"
    label: str  # readable name in the report, the figures and the summary
    description: str  # one line for --help
    needs: str = "pruned"  # "mask": --method magnitude only (it works on IMP's masks)
    lr_range: tuple[str, str] | None = None  # the search settings of its own LR range (default: --lr-min/--lr-max)
    sweep: bool = False  # the confirmation's sparsity sweep runs it at every IMP round's mask
    versus: tuple[str, ...] = ()  # contrasts (this regime's advantage over each of these) where both ran
    reported_versus: tuple[str, ...] = ()  # contrasts the report adds where both ran, never listed as missing
    color: str | None = None  # its colour in the figures (None: the next of a cycle no entry uses)
    rewinds: bool = False  # its IMP rewinds to epoch --rewind-epoch (theta_k), not to theta_0
    # its start points come from the pipeline's pretraining and IMP (``Pipeline.prepare``): a trial
    # of several seeds trains those for all its seeds together first
    prepare: bool = True

    def make_start(self, pipeline, lr: float, seed: int, prune_round: int):
        fn = self.start
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(pipeline, lr, seed, prune_round)


REGIMES: dict[str, Regime] = {}


def register_regime(regime: Regime) -> Regime:
    """Add ``regime`` to the registry (after the built-ins, in the order registered)."""
    if regime.name in REGIMES:
        raise ValueError(f"a regime named {regime.name!r} is registered already")
    if not regime.name.isidentifier():
        raise ValueError(f"a regime's name must be an identifier (got {regime.name!r})")
    if regime.needs not in NEEDS:
        raise ValueError(f"{regime.name}: needs must be one of {', '.join(NEEDS)} (got {regime.needs!r})")
    if not (callable(regime.start) or (isinstance(regime.start, str) and ":" in regime.start)):
        raise ValueError(f"{regime.name}: start must be a function or 'module:function'")
    REGIMES[regime.name] = regime
    return regime


def get_regime(name: str) -> Regime:
    try:
        return REGIMES[name]
    except KeyError:
        raise KeyError(f"unknown regime {name!r}; registered: {', '.join(REGIMES)}") from None


def contrasts_for(regimes: tuple[str, ...] | list[str], reported: bool = False) -> list[tuple[str, str]]:
    """The contrasts (a, b) among ``regimes``: a's test-accuracy advantage over b, in registry order;
    with ``reported``, also the ones the report adds where both ran."""
    have = set(regimes)
    out = []
    for r in REGIMES.values():
        others = r.versus + (r.reported_versus if reported else ())
        out += [(r.name, b) for b in others if r.name in have and b in have]
    return out


def label(regime: str) -> str:
    """The readable name of a regime (its id when it has none)."""
    return REGIMES[regime].label if regime in REGIMES else str(regime)


def sort_regimes(regimes) -> list[str]:
    """Registered regimes in registry order, then the others sorted."""
    order = list(REGIMES)
    regs = list(dict.fromkeys(regimes))
    return sorted(regs, key=lambda r: (order.index(r) if r in order else len(order), str(r)))


_S = "trainables.starts:"
for _r in (
    Regime("winning_ticket", _S + "winning_ticket", "winning ticket",
           "theta_0 * m (lottery ticket rewinding to initialisation)", needs="mask", sweep=True,
           versus=("random_reinit",), color="#1f77b4"),
    Regime("random_reinit", _S + "random_reinit", "random re-init", "fresh seeded draw from the same initialiser * m",
           needs="mask", sweep=True, color="#d62728"),
    Regime("late_rewind", _S + "late_rewind", "late rewind",
           "theta_k * m, IMP rewinding to epoch k (--rewind-epoch)", needs="mask",
           reported_versus=("random_reinit",), color="#2ca02c", rewinds=True),
    Regime("fine_tune", _S + "fine_tune", "fine-tune",
           "theta_E on the pruned network, constant LR for F epochs (--fine-tune-epochs)",
           lr_range=("fine_tune_lr_min", "fine_tune_lr_max"), color="#ff7f0e"),
    Regime("scratch_e", _S + "scratch_e", "Scratch-E", "the pruned network from a fresh init, E epochs",
           versus=("fine_tune",), color="#9467bd"),
    Regime("scratch_b", _S + "scratch_b", "Scratch-B",
           "the pruned network from a fresh init, E * FLOPs(dense)/FLOPs(pruned) epochs (at most --scratch-b-cap * E)",
           versus=("fine_tune",), color="#8c564b"),
    Regime("lr_rewind", _S + "lr_rewind", "LR rewinding",
           "theta_E on the pruned network, the original LR schedule replayed", versus=("fine_tune",), color="#17becf"),
    Regime("random_prune", _S + "random_prune", "random pruning",
           "control: random pruning of theta_0 with the same per-layer survivors, E epochs",
           versus=("scratch_e",), color="#7f7f7f"),
):
    register_regime(_r)
del _r, _S
